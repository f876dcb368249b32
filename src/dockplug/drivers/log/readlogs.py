"""ReadLogs from the segments: ``docker logs`` with ``--tail``, ``--since``, ``--until`` and
``--follow`` (plugin-protocol.md §7.1-7.3).

dockerd prints ReadLogs lines as they come and filters ``Since``/``Until`` and the
stdout/stderr choice itself; FIFO lines arrive without their newline, so complete lines get
it back here (as json-file and local store them) and partial pieces are passed on as they are,
metadata included, for dockerd to rejoin. The stream is an async generator: file reads run in
worker threads a batch at a time, and a follower waits on the loop, never in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from dockplug.drivers.log.segments import Cursor, Position, SegmentLog
from dockplug.protocol.log import EMPTY_ENTRY, ReadConfig, frame
from dockplug.protocol.logentry import _LogEntryPb

FOLLOW_POLL = 0.05  # seconds between looks for new entries while following
HEARTBEAT = 1.0  # seconds of no new entries after which a follower sends an empty entry
BATCH = 1 << 20


def _ns(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1_000_000_000)


def _convert(payloads: list[bytes], since: int | None, until: int | None) -> tuple[bytes, bool]:
    """(framed entries for dockerd, whether an entry after UNTIL was reached)."""
    out: list[bytes] = []
    pb = _LogEntryPb()
    for payload in payloads:
        pb.ParseFromString(payload)
        t = pb.time_nano
        if until is not None and t > until:
            return b"".join(out), True
        if since is not None and t < since:
            continue
        if not pb.partial or pb.partial_log_metadata.last:
            pb.line += b"\n"
        out.append(frame(pb.SerializeToString()))
    return b"".join(out), False


def start_position(log: SegmentLog, tail: int) -> Position:
    if tail < 0:
        return log.start()
    if tail == 0:
        return log.end()
    return log.tail(tail)


async def stream(
    log: SegmentLog,
    config: ReadConfig,
    running: Callable[[], bool],
    readers: dict[Cursor, bool] | None = None,
) -> AsyncIterator[bytes]:
    """The entries for one ReadLogs call; with ``follow``, until the container's logger stops
    (no FIFO is being read for it), ``until`` has passed or the client goes away.

    dockerd reads a follower's stream until its next entry and only then looks whether the
    ``docker logs -f`` client is still there (daemon/logger/adapter.go), so an idle follower
    sends an empty entry every ``HEARTBEAT`` seconds: dockerd drops it unshown (it prints only
    stdout and stderr entries) and closes the connection if the client left, and the server
    then closes this stream. READERS (cursor: follow) holds the streams open.
    """
    since, until = _ns(config.since), _ns(config.until)
    cursor = Cursor(log, await asyncio.to_thread(start_position, log, config.tail))
    if readers is not None:
        readers[cursor] = config.follow
    loop = asyncio.get_running_loop()
    step: asyncio.Future[tuple[bytes, int, bool, int]] | None = None

    def batch() -> tuple[bytes, int, bool, int]:
        # the version before the read: an append during or after it is then waited for no
        # longer (read after, it would already count that append, which waits for the next)
        version = log.version
        payloads = cursor.read(BATCH)
        data, past = _convert(payloads, since, until)
        return data, len(payloads), past, version

    try:
        while True:
            step = loop.run_in_executor(None, batch)
            # shielded: a client gone mid-read cancels this wait, not the read, which must end
            # before the cursor is closed
            data, count, past, version = await asyncio.shield(step)
            step = None
            if data:
                yield data
            if past:
                return
            if count:
                continue
            if not config.follow or not running():
                return
            idle = 0.0
            while log.version == version and running():
                await asyncio.sleep(FOLLOW_POLL)
                idle += FOLLOW_POLL
                if idle >= HEARTBEAT:
                    idle = 0.0
                    yield EMPTY_ENTRY
    finally:
        if readers is not None:
            readers.pop(cursor, None)
        if step is not None and not step.done():
            step.add_done_callback(lambda done: _close_after(cursor, done))
        else:
            cursor.close()


def _close_after(cursor: Cursor, read: asyncio.Future[tuple[bytes, int, bool, int]]) -> None:
    if not read.cancelled():
        read.exception()  # retrieved: the reader is gone, no one else will
    cursor.close()
