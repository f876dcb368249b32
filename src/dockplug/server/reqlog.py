"""One log line per request, in the plugin's log format (``observe/events.py``).

``time req=ID Endpoint name=X outcome STATUS duration``: enough to follow each dockerd call
without a debugger; ``--debug`` adds request and reply bodies, secrets masked.
"""

from __future__ import annotations

import json
from typing import TextIO

from dockplug.observe.events import LineLog
from dockplug.observe.redaction import redact, redact_body

__all__ = ["RequestLog", "redact"]


def _quote(value: str) -> str:
    if value and value.isprintable() and " " not in value and '"' not in value and "=" not in value:
        return value
    return json.dumps(value)


class RequestLog(LineLog):
    """Writes ``time req=ID Endpoint name=X outcome STATUS duration`` lines (logfmt-like)."""

    def __init__(
        self, stream: TextIO | None = None, debug: bool = False, json_lines: bool = False
    ) -> None:
        super().__init__(stream, json_lines)
        self.debug = debug

    def request(
        self,
        rid: int,
        path: str,
        subject: str | None,
        status: int,
        seconds: float,
        error: str | None = None,
    ) -> None:
        if self.json_lines:
            self._write(_json_request(self._now(), rid, path, subject, status, seconds, error))
            return
        # one f-string: this runs for every call dockerd makes
        name = f" name={_quote(redact(subject))}" if subject else ""
        outcome = "ok" if error is None else f"err={_quote(redact(error))}"
        self._write(
            f"{self._now()} req={rid:x} {path.lstrip('/')}{name} {outcome} {status} "
            f"{seconds * 1000:.2f}ms"
        )

    def body(self, rid: int, direction: str, raw: bytes) -> None:
        """Debug only: the request or reply body, secrets masked."""
        if not self.debug:
            return
        try:
            body = redact_body(json.loads(raw))
        except ValueError:
            body = redact(raw[:512].decode("utf-8", "replace"))
        if self.json_lines:
            line = {"time": self._now(), "req": f"{rid:x}", "dir": direction, "body": body}
            self._write(json.dumps(line, separators=(",", ":")))
            return
        shown = json.dumps(body, separators=(",", ":")) if not isinstance(body, str) else None
        self._write(f"{self._now()} req={rid:x} {direction} {shown or _quote(body)}")


def _json_request(
    now: str,
    rid: int,
    path: str,
    subject: str | None,
    status: int,
    seconds: float,
    error: str | None,
) -> str:
    line: dict[str, object] = {"time": now, "req": f"{rid:x}", "endpoint": path.lstrip("/")}
    if subject:
        line["name"] = redact(subject)
    line["outcome"] = "ok" if error is None else "err"
    if error is not None:
        line["err"] = redact(error)
    line["status"] = status
    line["ms"] = round(seconds * 1000, 2)
    return json.dumps(line)
