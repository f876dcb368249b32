"""The audit log: one JSON line per decision, written by a thread behind a bounded queue so a
slow disk or syslog never delays dockerd's API call (a full queue drops lines and says how
many). Lines carry the modelled request (route, action, normalized attributes), never the raw
URI, query or body: env values, build args and registry credentials stay out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import queue
import threading
from pathlib import Path
from typing import Any

from dockplug.observe import log_event


class AuditLog:
    def __init__(
        self,
        path: Path | None,
        syslog: str | None = None,
        max_bytes: int = 50 * 1024 * 1024,
        backups: int = 5,
        queue_size: int = 10000,
    ) -> None:
        self.path = path
        self._queue: queue.Queue[str | None] = queue.Queue(queue_size)
        self.dropped = 0
        self._handlers: list[logging.Handler] = []
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler: logging.Handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
            self._handlers.append(handler)
        if syslog:
            address: Any = syslog
            if ":" in syslog and not syslog.startswith("/"):
                host, _, port = syslog.rpartition(":")
                address = (host, int(port))
            sh = logging.handlers.SysLogHandler(
                address, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV
            )
            sh.ident = "dockplug-authz: "
            self._handlers.append(sh)
        for h in self._handlers:
            h.setFormatter(logging.Formatter("%(message)s"))
        self._thread = threading.Thread(target=self._run, name="dockplug-audit", daemon=True)
        self._thread.start()

    def record(self, entry: dict[str, Any]) -> None:
        """Queues one decision; never blocks."""
        if not self._handlers:
            return
        try:
            self._queue.put_nowait(json.dumps(entry, separators=(",", ":"), default=str))
        except queue.Full:
            self.dropped += 1

    def _emit(self, line: str) -> None:
        rec = logging.LogRecord("dockplug.audit", logging.INFO, "", 0, line, None, None)
        for h in self._handlers:
            try:
                h.handle(rec)
            except Exception as exc:  # a broken syslog must not stop the file
                log_event(f"audit: {type(h).__name__} failed: {exc}")

    def _run(self) -> None:
        reported = 0
        while True:
            line = self._queue.get()
            if line is None:
                break
            if self.dropped != reported:
                self._emit(json.dumps({"event": "audit-dropped", "lines": self.dropped - reported}))
                reported = self.dropped
            self._emit(line)
            if self._queue.empty():
                for h in self._handlers:
                    with contextlib.suppress(Exception):
                        h.flush()

    def close(self, timeout: float = 5.0) -> None:
        """Writes what is queued, then closes the files."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        for h in self._handlers:
            h.close()
