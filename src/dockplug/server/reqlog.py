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

    def __init__(self, stream: TextIO | None = None, debug: bool = False) -> None:
        super().__init__(stream)
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
            shown = json.dumps(redact_body(json.loads(raw)), separators=(",", ":"))
        except ValueError:
            shown = _quote(redact(raw[:512].decode("utf-8", "replace")))
        self._write(f"{self._now()} req={rid:x} {direction} {shown}")
