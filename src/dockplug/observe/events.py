"""The plugin's own log: timestamped lines on stdout, secrets masked.

Request lines (``server/reqlog.py``) and events from drivers (start-up, reconcile, a remount)
share one format and one writer, so ``journalctl -u docker`` shows a managed plugin's story
in order. Drivers call :func:`log_event`; nothing here knows about the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import TextIO

from dockplug.observe.redaction import redact

FLUSH_DELAY = 0.01  # seconds a request line may wait in the buffer (one write per batch)


class LineLog:
    """Writes timestamped lines. Lines written on the event loop are flushed together within
    ``FLUSH_DELAY`` (at full load hundreds of request lines share one write); event lines and
    lines from other threads are flushed at once. With ``json_lines`` each line is one JSON
    object (``--log-format json``) with the same fields, for log shippers: dockerd prefixes a
    managed plugin's stdout lines and ``journalctl -u docker`` keeps them whole."""

    def __init__(self, stream: TextIO | None = None, json_lines: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.json_lines = json_lines
        self._flush_pending = False
        self._second = -1
        self._stamp = ""

    def _now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def event(self, message: str) -> None:
        """A non-request line: start-up, reconciliation, shutdown (flushed at once)."""
        if self.json_lines:
            self._write(json.dumps({"time": self._now(), "msg": redact(message)}))
        else:
            self._write(f"{self._now()} {redact(message)}")
        self.flush()

    def _write(self, line: str) -> None:
        """Write now into the stream's buffer; flush soon (on the loop) or at once (driver
        threads, no loop)."""
        try:
            self.stream.write(line + "\n")
        except (OSError, ValueError):
            return
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush()
            return
        self._flush_pending = True
        loop.call_later(FLUSH_DELAY, self._flush)

    def flush(self) -> None:
        """Flush now (events, shutdown); a flush already scheduled then finds nothing."""
        self._flush()

    def _flush(self) -> None:
        self._flush_pending = False
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


_events: LineLog | None = None
_json_events = False


def set_event_format(log_format: str) -> None:
    """``text`` or ``json``: the format of :func:`log_event` lines from now on."""
    global _events, _json_events
    if log_format not in ("text", "json"):
        raise ValueError(f"log format {log_format!r}: use text or json")
    _json_events = log_format == "json"
    if _events is not None:
        _events.json_lines = _json_events


def log_event(message: str) -> None:
    """A timestamped line on stdout, in the same format as the request lines."""
    global _events
    if _events is None:
        _events = LineLog(json_lines=_json_events)
    _events.event(message)
