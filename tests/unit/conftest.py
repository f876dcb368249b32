"""Helpers shared by the server tests: a raw HTTP/1.1 connection that writes requests byte for
byte as Go's net/http client does, and a throwaway certificate authority made with ``openssl``."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

GO_ACCEPT = "application/vnd.docker.plugins.v1.2+json"


def go_request(
    path: str,
    body: bytes = b"",
    host: str = "",
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A request exactly as dockerd writes it: POST, no Content-Type, Accept v1.2, a
    Content-Length even for an empty body, and (engines before 24.0.5) an empty ``Host:``."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "User-Agent: Go-http-client/1.1",
        f"Accept: {GO_ACCEPT}",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in extra_headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class RawConnection:
    """One persistent connection on which requests are written as raw bytes."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        scheme, _, rest = url.partition("://")
        if scheme == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(rest)
        else:
            host, _, port = rest.rpartition(":")
            self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self._buffer += chunk

    def read_reply(self) -> RawReply:
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])  # every reply must carry one
        while len(self._buffer) < length:
            self._fill()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return RawReply(int(status_line.split()[1]), headers, body)

    def send_request(self, path: str, body: bytes = b"", host: str = "", **kw: Any) -> None:
        self.send(go_request(path, body, host, **kw))

    def post(self, path: str, body: bytes = b"", host: str = "", **kw: Any) -> RawReply:
        self.send_request(path, body, host, **kw)
        return self.read_reply()

    def pipeline(self, *requests: tuple[str, bytes]) -> list[RawReply]:
        """Writes every request at once, before reading any reply (HTTP/1.1 pipelining)."""
        self.send(b"".join(go_request(path, body) for path, body in requests))
        return [self.read_reply() for _ in requests]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_connection() -> Iterator[Callable[..., RawConnection]]:
    """``raw_connection(plugin.url)`` -> a RawConnection, closed after the test."""
    opened: list[RawConnection] = []

    def connect(url: str, timeout: float = 10.0) -> RawConnection:
        conn = RawConnection(url, timeout)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()
