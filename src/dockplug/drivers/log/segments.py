"""Each container's entries on disk: numbered segments of length-framed LogEntry records.

The framing is dockerd's own ``local`` driver's (daemon/logger/local): a 4-byte big-endian
size, the protobuf LogEntry as read from the FIFO, and the size again. The trailing size lets
``--tail N`` walk back from the end instead of reading the whole log. The newest segment is
appended to; at ``max-size`` a new one starts, the old one is gzipped in the background and
only ``max-file`` are kept. A position is (segment, offset in its uncompressed bytes): what
ReadLogs followers and each sink remember.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import struct
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dockplug.protocol.log import MAX_FRAME

_LEN = struct.Struct(">I")
OVERHEAD = 8  # bytes of framing around each record on disk
READ_CHUNK = 1 << 20

#: one background thread gzips rotated segments for every container (gzip level 1: the point
#: is to keep up with a busy container, not the last percent)
_compressor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dockplug-logs-gzip")


class SegmentError(ValueError):
    """A segment's bytes are not framed records (a torn write, a damaged file)."""


class AppendError(OSError):
    """Disk trouble while appending; ``kept`` bytes of the batch were stored before it (a
    batch cut by rotation is written in pieces)."""

    def __init__(self, errno: int | None, strerror: str, kept: int) -> None:
        super().__init__(errno, strerror)
        self.kept = kept


@dataclass(frozen=True, order=True)
class Position:
    seq: int
    offset: int


def frame_local(payloads: list[bytes]) -> bytes:
    """Records in the on-disk framing: size, payload, size."""
    pack = _LEN.pack
    parts: list[bytes] = []
    for p in payloads:
        size = pack(len(p))
        parts += (size, p, size)
    return b"".join(parts)


def split_local(data: bytes | bytearray | memoryview, start: int = 0) -> tuple[list[bytes], int]:
    """Complete records of DATA from START on: (payloads, offset after the last one)."""
    view = memoryview(data)
    unpack = _LEN.unpack_from
    end = len(view)
    out: list[bytes] = []
    pos = start
    while end - pos >= 4:
        (size,) = unpack(view, pos)
        if size > MAX_FRAME:
            raise SegmentError(f"record of {size} bytes at offset {pos}")
        stop = pos + 4 + size
        if stop + 4 > end:
            break
        if unpack(view, stop)[0] != size:
            raise SegmentError(f"record at offset {pos}: trailing size differs")
        out.append(bytes(view[pos + 4 : stop]))
        pos = stop + 4
    return out, pos


def count_local(data: bytes | memoryview, start: int, end: int) -> int:
    """How many records of the segments' framing DATA holds between START and END."""
    unpack = _LEN.unpack_from
    count, pos = 0, start
    while end - pos >= OVERHEAD:
        pos += unpack(data, pos)[0] + OVERHEAD
        count += 1
    return count


def _boundary(view: memoryview, pos: int, end: int, room: int) -> int:
    """The end of the first record from POS on that fills ROOM bytes (at least one record)."""
    unpack = _LEN.unpack_from
    start = pos
    while True:
        pos += unpack(view, pos)[0] + OVERHEAD
        if pos - start >= room or pos >= end:
            return min(pos, end)


def _name(seq: int) -> str:
    return f"{seq:012d}.log"


class SegmentLog:
    """One container's segments; appends and rotation under a lock, reads by :class:`Cursor`.

    Readers never read past ``head_size``, the bytes of complete records in the newest
    segment, so they never see half of a write in progress.
    """

    def __init__(self, folder: Path, max_size: int, max_file: int, compress: bool = True) -> None:
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_size = max_size
        self.max_file = max_file
        self.compress = compress
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified after each append
        self.version = 0  # appends so far (in this process): followers compare it
        seqs = set()
        for entry in os.scandir(self.dir):
            if entry.name.endswith(".tmp"):
                os.unlink(entry.path)  # a gzip cut short by a crash; the .log is still there
            elif entry.name.endswith((".log", ".log.gz")):
                seqs.add(int(entry.name.split(".", 1)[0]))
        self.segments = sorted(seqs) or [1]
        self.head_seq = self.segments[-1]
        head = self.dir / _name(self.head_seq)
        self._fd = os.open(head, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.head_size = self._repair(head)

    def _repair(self, head: Path) -> int:
        """The size of the head's complete records; a torn tail (a crash mid-write) is cut."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0
        good = 0
        with open(head, "rb") as f:
            buf = b""
            while chunk := f.read(READ_CHUNK):
                buf += chunk
                try:
                    _, used = split_local(buf)
                except SegmentError:
                    break
                good += used
                buf = buf[used:]
        if good != size:
            os.ftruncate(self._fd, good)
            print(f"{self.dir.name[:12]}: cut a torn tail of {size - good} bytes", file=sys.stderr)
        return good

    # -- writing -----------------------------------------------------------------------

    def append(self, payloads: list[bytes]) -> int:
        """Appends payloads (framed here); see :meth:`append_framed`."""
        return self.append_framed(frame_local(payloads))

    def append_framed(self, data: bytes) -> int:
        """Appends complete records already in the segments' framing, one ``write`` per piece.

        At ``max-size`` the head is cut at the record that reaches it and the rest goes on in
        the next segment, so a segment ends at a record boundary whatever the batch's size.
        On disk trouble raises :class:`AppendError` (``kept``: the bytes of DATA stored before
        it), with nothing half-written kept.
        """
        end = len(data)
        view = memoryview(data)
        pos = 0
        with self.lock:
            try:
                while pos < end:
                    cut = end
                    if self.head_size + end - pos >= self.max_size:
                        cut = _boundary(view, pos, end, self.max_size - self.head_size)
                    done = pos
                    try:
                        while done < cut:
                            done += os.write(self._fd, view[done:cut])
                    except OSError:
                        with contextlib.suppress(OSError):
                            os.ftruncate(self._fd, self.head_size)
                        raise
                    self.head_size += cut - pos
                    pos = cut
                    if self.head_size >= self.max_size:
                        self._rotate()
            except OSError as exc:
                raise AppendError(exc.errno, exc.strerror or str(exc), pos) from exc
            finally:
                if pos:
                    self.version += 1
                    self.changed.notify_all()
        return end

    def _rotate(self) -> None:
        old = self.head_seq
        self.head_seq += 1
        fd = os.open(self.dir / _name(self.head_seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND
                     | os.O_CLOEXEC, 0o600)  # fmt: skip
        os.close(self._fd)
        self._fd, self.head_size = fd, 0
        self.segments.append(self.head_seq)
        while len(self.segments) > self.max_file:
            self._delete(self.segments.pop(0))
        if self.compress:
            _compressor.submit(self._gzip, old)

    def _delete(self, seq: int) -> int:
        freed = 0
        for name in (_name(seq), _name(seq) + ".gz"):
            with contextlib.suppress(FileNotFoundError):
                path = self.dir / name
                freed += path.stat().st_size
                path.unlink()
        return freed

    def _gzip(self, seq: int) -> None:
        src = self.dir / _name(seq)
        tmp = self.dir / (_name(seq) + ".gz.tmp")
        try:
            with open(src, "rb") as f, gzip.open(tmp, "wb", compresslevel=1) as out:
                shutil.copyfileobj(f, out, READ_CHUNK)
            with self.lock:
                if seq not in self.segments:  # deleted meanwhile (max-file, the size cap)
                    tmp.unlink()
                    return
                os.rename(tmp, self.dir / (_name(seq) + ".gz"))
                src.unlink()
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        except OSError as exc:  # no room to compress: the plain segment stays
            print(f"{self.dir.name[:12]}: gzip of segment {seq}: {exc}", file=sys.stderr)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def drop_oldest(self) -> int:
        """Deletes the oldest segment but the head (the global size cap); bytes freed."""
        with self.lock:
            if len(self.segments) < 2:
                return 0
            return self._delete(self.segments.pop(0))

    def disk_usage(self) -> int:
        total = 0
        for entry in os.scandir(self.dir):
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat().st_size
        return total

    def close(self) -> None:
        with self.lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- reading -----------------------------------------------------------------------

    def open_segment(self, seq: int) -> IO[bytes] | None:
        """The segment's uncompressed bytes (plain or gzipped; it may move between the two)."""
        for _ in range(2):
            with contextlib.suppress(FileNotFoundError):
                return open(self.dir / _name(seq), "rb")
            with contextlib.suppress(FileNotFoundError):
                return gzip.open(self.dir / (_name(seq) + ".gz"), "rb")  # type: ignore[return-value]
        return None

    def start(self) -> Position:
        with self.lock:
            return Position(self.segments[0], 0)

    def end(self) -> Position:
        with self.lock:
            return Position(self.head_seq, self.head_size)

    def tail(self, count: int) -> Position:
        """Where the last COUNT records begin (the oldest position if there are fewer)."""
        with self.lock:
            segments = list(self.segments)
            head_seq, head_size = self.head_seq, self.head_size
        left = count
        for seq in reversed(segments):
            if left <= 0:
                break
            size = head_size if seq == head_seq else None
            found = self._tail_of(seq, left, size)
            if found is None:
                continue
            offset, taken = found
            left -= taken
            if left <= 0:
                return Position(seq, offset)
        return Position(segments[0], 0) if left > 0 else Position(head_seq, head_size)

    def _tail_of(self, seq: int, count: int, size: int | None) -> tuple[int, int] | None:
        """(offset of the COUNT-th record from the end, records taken) within one segment."""
        f = self.open_segment(seq)
        if f is None:
            return None
        with f:
            if isinstance(f, gzip.GzipFile):  # no walking back in gzip: read it all
                offsets: list[int] = []
                data = f.read()
                pos = 0
                while len(data) - pos >= 8:
                    offsets.append(pos)
                    pos += 8 + _LEN.unpack_from(data, pos)[0]
                if not offsets:
                    return None
                take = min(count, len(offsets))
                return offsets[-take], take
            end = size if size is not None else os.fstat(f.fileno()).st_size
            return _walk_back(f.fileno(), end, count)


def _walk_back(fd: int, end: int, count: int) -> tuple[int, int] | None:
    """Walks records back from END by their trailing sizes, reading 1 MiB blocks."""
    taken = 0
    pos = end
    block_start, block = end, b""
    while taken < count and pos >= 8:
        if pos - 4 < block_start:  # need the trailing size before pos
            block_start = max(0, pos - READ_CHUNK)
            block = os.pread(fd, pos - block_start, block_start)
        (size,) = _LEN.unpack_from(block, pos - 4 - block_start)
        pos -= size + 8
        if pos < 0:
            raise SegmentError("trailing size points before the segment's start")
        taken += 1
    return (pos, taken) if taken else None


class Cursor:
    """Reads one container's records from a position on, across segments; keeps its file open.

    ``skipped`` counts segments that were deleted (max-file, the size cap, age) before this
    cursor read them.
    """

    def __init__(self, log: SegmentLog, position: Position) -> None:
        self.log = log
        self.seq = position.seq
        self.offset = position.offset
        self.skipped = 0
        self._file: IO[bytes] | None = None
        self._buf = bytearray()

    @property
    def position(self) -> Position:
        return Position(self.seq, self.offset)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._buf.clear()

    def _next_segment(self, segments: list[int]) -> bool:
        later = [s for s in segments if s > self.seq]
        if not later:
            return False
        self.close()
        self.seq, self.offset = later[0], 0
        return True

    def read(self, max_bytes: int = READ_CHUNK) -> list[bytes]:
        """The next records (about MAX_BYTES of them); [] when there is nothing new yet."""
        while True:
            with self.log.lock:
                segments = list(self.log.segments)
                head_seq, head_size = self.log.head_seq, self.log.head_size
            if self.seq < segments[0] or self.seq not in segments:
                self.skipped += 1
                if not self._next_segment(segments):
                    return []
                continue
            if self._file is None:
                self._file = self.log.open_segment(self.seq)
                if self._file is None:  # deleted between the lock and the open
                    continue
                self._file.seek(self.offset)
            limit = head_size if self.seq == head_seq else None
            filepos = self.offset + len(self._buf)
            want = max(max_bytes - len(self._buf), 8)
            if limit is not None:
                want = min(want, limit - filepos)
            data = self._file.read(want) if want > 0 else b""
            self._buf += data
            try:
                payloads, used = split_local(self._buf)
            except SegmentError as exc:
                print(f"{self.log.dir.name[:12]}: segment {self.seq}: {exc}", file=sys.stderr)
                self.skipped += 1
                if not self._next_segment(segments):
                    return []
                continue
            if used:
                del self._buf[:used]
                self.offset += used
                return payloads
            if len(self._buf) >= 4 and data:  # a record longer than asked for: read it whole
                need = _LEN.unpack_from(self._buf, 0)[0] + OVERHEAD
                max_bytes = max(max_bytes, need)
                continue
            if data:
                continue
            if self.seq == head_seq or not self._next_segment(segments):
                return []  # at the head: nothing new yet

    def __iter__(self) -> Iterator[bytes]:
        while batch := self.read():
            yield from batch
