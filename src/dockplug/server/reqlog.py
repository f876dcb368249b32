"""One log line per request, and redaction of secrets from everything the plugin prints.

dockerd forwards a managed plugin's stdout into its own log, where many people can read it, so a
password must never reach a line: drivers register secret values with :func:`add_secret` and
option names that hold secrets are masked wherever bodies are shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import threading
import time
from typing import Any, TextIO

SECRET_KEY = re.compile(r"pass(word|phrase)?|secret|token|private|credential|key$|^key", re.I)
MASK = "********"

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def add_secret(value: str) -> None:
    """Never print ``value``: every log line and error reply replaces it with a mask."""
    if value and len(value) >= 3:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    if not _secrets:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_body(value: Any) -> Any:
    """A JSON value with the values of secret-looking keys masked, recursively."""
    if isinstance(value, dict):
        return {
            k: (MASK if isinstance(k, str) and SECRET_KEY.search(k) and v else redact_body(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_body(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "=\n'):
        return value
    return json.dumps(value)


class RequestLog:
    """Writes ``time req=ID Endpoint name=X outcome STATUS duration`` lines (logfmt-like)."""

    def __init__(self, stream: TextIO | None = None, debug: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self._flush_pending = False
        self.debug = debug
        self._second = -1
        self._stamp = ""

    def _now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def request(
        self,
        rid: int,
        path: str,
        subject: str | None,
        status: int,
        seconds: float,
        error: str | None = None,
    ) -> None:
        parts = [self._now(), f"req={rid:x}", path.lstrip("/")]
        if subject:
            parts.append(f"name={_quote(redact(subject))}")
        if error is None:
            parts.append("ok")
        else:
            parts.append(f"err={_quote(redact(error))}")
        parts.append(str(status))
        parts.append(f"{seconds * 1000:.2f}ms")
        self._write(" ".join(parts))

    def body(self, rid: int, direction: str, raw: bytes) -> None:
        """Debug only: the request or reply body, secrets masked."""
        if not self.debug:
            return
        try:
            shown = json.dumps(redact_body(json.loads(raw)), separators=(",", ":"))
        except ValueError:
            shown = _quote(redact(raw[:512].decode("utf-8", "replace")))
        self._write(f"{self._now()} req={rid:x} {direction} {shown}")

    def event(self, message: str) -> None:
        """A non-request line: start-up, reconciliation, shutdown."""
        self._write(f"{self._now()} {redact(message)}")

    def _write(self, line: str) -> None:
        """Write now; flush once per event-loop turn (lines of requests finishing together
        share one write), or at once when called outside the loop (driver threads)."""
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
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


_events: RequestLog | None = None


def log_event(message: str) -> None:
    """A timestamped line on stdout, in the same format as the request lines."""
    global _events
    if _events is None:
        _events = RequestLog()
    _events.event(message)
