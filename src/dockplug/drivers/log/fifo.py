"""One reader thread per FIFO: read, split, append; nothing else, so the pipe never fills.

dockerd writes each container's output into a FIFO it holds open ``O_RDWR|O_NONBLOCK``; when
the pipe is full the container's own writes block (plugin-protocol.md §7.2). The reader only
splits records and appends them to the container's segments: decoding, rejoining and sending
happen later, from the files. The pipe is enlarged to 1 MiB (``F_SETPIPE_SZ``) to ride out a
slow disk. At StopLogging dockerd closes its end after our reply; the reader keeps reading to
EOF, so whatever is still in the pipe is kept (stopping at StopLogging loses it).
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

from dockplug.drivers.log.segments import SegmentLog
from dockplug.protocol.log import MAX_FRAME
from dockplug.protocol.logentry import EntryError, LogEntry, decode, encode

F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), not exported by Python 3.11
PIPE_SIZE = 1 << 20
READ_SIZE = 1 << 20
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
    """The FIFO's records (4-byte big-endian size, payload), with resynchronisation.

    After a plugin restart the pipe may begin inside a record whose start the killed process
    had read; then (``resync``) bytes are skipped until a record decodes as an entry, and
    counted in ``skipped``. A size over the limit mid-stream (a stream out of step) does the same.
    """

    def __init__(self, resync: bool = False) -> None:
        self.resync = resync
        self.skipped = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        unpack = _LEN.unpack_from
        while end - pos >= 4:
            (size,) = unpack(buf, pos)
            stop = pos + 4 + size
            if size > MAX_FRAME:
                self.resync = True
            elif stop > end:
                break
            if self.resync:
                if size <= MAX_FRAME and plausible(bytes(buf[pos + 4 : stop])):
                    self.resync = False
                else:
                    pos += 1
                    self.skipped += 1
                    continue
            out.append(bytes(buf[pos + 4 : stop]))
            pos = stop
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


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

    def _store(self, payloads: list[bytes]) -> None:
        if self._dropped_since:
            payloads = [marker(self._dropped_since, self._reason), *payloads]
        try:
            written = self.log.append(payloads)
        except OSError as exc:
            lost = len(payloads) - (1 if self._dropped_since else 0)
            self._dropped_since += lost
            self._reason = exc.strerror or str(exc)
            self._counters(0, 0, lost)
            return
        entries = len(payloads) - (1 if self._dropped_since else 0)
        self._dropped_since = 0
        self._counters(entries, written, 0)

    def _run(self) -> None:
        try:
            while chunk := os.read(self._fd, READ_SIZE):
                if payloads := self._splitter.feed(chunk):
                    self._store(payloads)
                if self._splitter.skipped:
                    print(f"{self.path}: skipped {self._splitter.skipped} bytes to find a "
                          "record boundary", file=sys.stderr)  # fmt: skip
                    self._splitter.skipped = 0
        except Exception as exc:  # never take the plugin down; the entries left are lost
            print(f"{self.path}: reader stopped: {exc!r}", file=sys.stderr)
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            if self._splitter.pending:
                print(f"{self.path}: EOF inside a record ({self._splitter.pending} bytes)",
                      file=sys.stderr)  # fmt: skip
            self._on_eof(self)
