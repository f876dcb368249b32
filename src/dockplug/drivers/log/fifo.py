"""One reader thread per FIFO: read, cut at a record boundary, append; nothing else, so the
pipe never fills.

dockerd writes each container's output into a FIFO it holds open ``O_RDWR|O_NONBLOCK``; when
the pipe is full the container's own writes block (plugin-protocol.md §7.2). dockerd writes
one length-prefixed LogEntry per ``write``; the segments keep the same records with the size
repeated after each (the ``local`` driver's framing), so the reader copies complete records
through without decoding them: decoding, rejoining and sending happen later, from the files.
It reads into one reusable buffer (a fresh 1 MiB ``os.read`` costs ~20 us even for a few
bytes), writes once per read, and after a small read waits a few milliseconds so records
batch up instead of costing a read and a write each. The pipe is enlarged to 1 MiB
(``F_SETPIPE_SZ``) to ride out a slow disk. At StopLogging dockerd closes its end after our
reply; the reader keeps reading to EOF, so whatever is still in the pipe is kept (stopping at
StopLogging loses it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import sys
import threading
import time
from collections.abc import Callable

from dockplug.drivers.log.segments import AppendError, SegmentLog, count_local, frame_local
from dockplug.protocol.log import MAX_FRAME
from dockplug.protocol.logentry import EntryError, LogEntry, decode, encode

F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), not exported by Python 3.11
F_GETPIPE_SZ = 1032
PIPE_SIZE = 1 << 20
READ_SIZE = 1 << 20
#: after a read of less than 1/16 of the pipe, wait this long before the next one: the pipe
#: then holds up to a few ms of output, read and written in one go (a container would need
#: ~200 MB/s to fill a 1 MiB pipe meanwhile; with a smaller pipe there is no wait)
BATCH_PAUSE = 0.005
_LEN = struct.Struct(">I")


def open_fifo(path: str) -> int:
    """Opens dockerd's FIFO for reading (never waits: dockerd holds the other end) and
    enlarges the pipe; raises FileNotFoundError/OSError for StartLogging to report."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    for size in (PIPE_SIZE, 256 << 10):  # above /proc/sys/fs/pipe-max-size only root may
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, size)
            break
        except OSError:
            continue
    os.set_blocking(fd, True)
    return fd


def plausible(payload: bytes) -> bool:
    """Whether PAYLOAD is an entry dockerd's copier wrote (used to find a record boundary)."""
    try:
        entry = decode(payload)
    except EntryError:
        return False
    return entry.source in ("stdout", "stderr") and entry.time_nano > 0


class Splitter:
    """The FIFO's records (4-byte big-endian size, payload) copied into the segments' framing
    (size, payload, size), with resynchronisation.

    After a plugin restart the pipe may begin inside a record whose start the killed process
    had read; then (``resync``) bytes are skipped until a record decodes as an entry, and
    counted in ``skipped``. A size over the limit mid-stream (a stream out of step) does the same.
    """

    def __init__(self, resync: bool = False) -> None:
        self.resync = resync
        self.skipped = 0
        self._left = b""

    def feed(self, data: bytes) -> tuple[bytes, int]:
        """(the records completed by DATA in the segments' framing, how many); the bytes of a
        record not yet complete are kept for the next call."""
        if self._left:
            data = self._left + data
        parts: list[bytes] = []
        count, pos = 0, 0
        while True:
            if self.resync:
                pos = self._find_record(data, pos)
                if self.resync:
                    break
            n, pos, over = _copy_through(data, pos, parts)
            count += n
            if not over:
                break
            self.resync = True  # a size over the limit: the stream is out of step
        self._left = data[pos:]
        return b"".join(parts), count

    def _find_record(self, data: bytes, pos: int) -> int:
        end = len(data)
        while end - pos >= 4:
            (size,) = _LEN.unpack_from(data, pos)
            stop = pos + 4 + size
            if size <= MAX_FRAME:
                if stop > end:
                    break  # wait for the rest before judging it
                if plausible(data[pos + 4 : stop]):
                    self.resync = False
                    break
            pos += 1
            self.skipped += 1
        return pos

    @property
    def pending(self) -> int:
        return len(self._left)


def _copy_through(data: bytes, pos: int, parts: list[bytes]) -> tuple[int, int, bool]:
    """Appends to PARTS each complete record from POS on, its size repeated after it:
    (records, the offset after the last, whether a size over the limit stopped it)."""
    unpack = _LEN.unpack_from
    add = parts.append
    end = len(data)
    start = len(parts)
    over = False
    while end - pos >= 4:
        (size,) = unpack(data, pos)
        stop = pos + 4 + size
        if stop > end:
            over = size > MAX_FRAME
            break
        if size > MAX_FRAME:
            over = True
            break
        add(data[pos:stop])
        add(data[pos : pos + 4])
        pos = stop
    return (len(parts) - start) >> 1, pos, over


def marker(dropped: int, reason: str) -> bytes:
    """The entry written where entries were lost, so ``docker logs`` shows the gap."""
    line = f"[dockplug-logs: {dropped} log entries dropped: {reason}]".encode()
    return encode(LogEntry(source="stderr", time_nano=time.time_ns(), line=line))


class FifoReader:
    """Drains one FIFO into a container's segments on a thread of its own."""

    def __init__(
        self,
        path: str,
        fd: int,
        log: SegmentLog,
        counters: Callable[[int, int, int], None],
        on_eof: Callable[[FifoReader], None],
        resync: bool = False,
    ) -> None:
        self.path = path
        self.log = log
        self.stopping = False  # StopLogging came; we still read to EOF
        self._fd = fd
        self._counters = counters  # (entries, bytes, dropped) added
        self._on_eof = on_eof
        self._splitter = Splitter(resync)
        self._dropped_since = 0
        self._reason = ""
        name = f"fifo-{os.path.basename(path)[:12]}"
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> FifoReader:
        self.thread.start()
        return self

    def _store(self, framed: bytes, count: int) -> None:
        lead = 0
        if self._dropped_since:
            mark = frame_local([marker(self._dropped_since, self._reason)])
            framed, lead = mark + framed, len(mark)
        try:
            self.log.append_framed(framed)
        except AppendError as exc:
            if lead and exc.kept >= lead:
                self._dropped_since = 0  # the marker is on disk
            stored = count_local(framed, lead, exc.kept) if exc.kept > lead else 0
            lost = count - stored
            self._dropped_since += lost
            self._reason = exc.strerror or str(exc)
            self._counters(stored, max(0, exc.kept - lead), lost)
            return
        self._dropped_since = 0
        self._counters(count, len(framed), 0)

    def _run(self) -> None:
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        splitter = self._splitter
        pipe = 0
        try:
            with contextlib.suppress(OSError):
                pipe = fcntl.fcntl(self._fd, F_GETPIPE_SZ)
            small = pipe // 16 if pipe >= PIPE_SIZE // 4 else 0
            while n := os.readv(self._fd, [buf]):
                framed, count = splitter.feed(view[:n].tobytes())
                if count:
                    self._store(framed, count)
                if splitter.skipped:
                    print(f"{self.path}: skipped {splitter.skipped} bytes to find a "
                          "record boundary", file=sys.stderr)  # fmt: skip
                    splitter.skipped = 0
                if n < small and not self.stopping:
                    time.sleep(BATCH_PAUSE)
        except Exception as exc:  # never take the plugin down; the entries left are lost
            print(f"{self.path}: reader stopped: {exc!r}", file=sys.stderr)
        finally:
            view.release()
            with contextlib.suppress(OSError):
                os.close(self._fd)
            if splitter.pending:
                print(f"{self.path}: EOF inside a record ({splitter.pending} bytes)",
                      file=sys.stderr)  # fmt: skip
            self._on_eof(self)
