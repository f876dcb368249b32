"""A kept-alive HTTP(S) connection for the HTTP-based sinks (stdlib only).

The timeout bounds each wait for room while a body goes out, not the whole body (Python's
``sendall`` times out the whole call): a batch is megabytes, a backend on a loaded machine may
read it slowly, and journal-remote writes the entries of an upload as they arrive, so an upload
timed out half way and sent again leaves its first half twice.
"""

from __future__ import annotations

import http.client
from typing import Any
from urllib.parse import urlsplit

from dockplug.drivers.log.sinks.base import SinkError


class _Paced:
    """``send`` of bytes in steps, each waiting up to the timeout for room."""

    sock: Any

    def send(self, data: Any) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            super().send(data)  # type: ignore[misc]
            return
        if self.sock is None:
            self.connect()  # type: ignore[attr-defined]
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += self.sock.send(view[done:])


class _HTTP(_Paced, http.client.HTTPConnection):
    pass


class _HTTPS(_Paced, http.client.HTTPSConnection):
    pass


class Poster:
    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"{url}: expected http(s)://HOST:PORT/PATH")
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port
        self.path = parts.path or "/"
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, content_type: str, path: str | None = None) -> tuple[int, bytes]:
        for attempt in range(2):  # a kept-alive connection the server closed: once more, fresh
            if self._conn is None:
                kind: type[http.client.HTTPConnection] = _HTTPS if self.https else _HTTP
                self._conn = kind(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request("POST", path or self.path, body,
                                   {"Content-Type": content_type})  # fmt: skip
                reply = self._conn.getresponse()
                return reply.status, reply.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt or not isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError
                                             | ConnectionResetError):  # fmt: skip
                    raise SinkError(f"{self.host}:{self.port}: {exc}") from exc
        raise SinkError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
