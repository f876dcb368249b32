"""The side listener: ``/metrics`` (Prometheus text) and ``/health`` (JSON), never on the
plugin socket.

dockerd dials the plugin socket and only knows the plugin protocol; a scraper on it would
compete with dockerd's calls and expose a port to whoever may talk to the plugin. So metrics get
their own listener (``--metrics 127.0.0.1:9323`` or ``--metrics unix:/run/dockplug/x.sock``),
served by a stdlib HTTP server in its own thread: a scrape never runs on the event loop that
answers dockerd.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from dockplug.errors import ConfigError
from dockplug.facts import UNIX_PATH_MAX


def parse_address(text: str) -> tuple[str, int] | Path:
    """``HOST:PORT``, ``:PORT`` (127.0.0.1) or ``unix:PATH``; errors name the fix."""
    if text.startswith("unix:"):
        path = Path(text[5:])
        if not path.is_absolute():
            raise ConfigError(f"--metrics {text}: give an absolute path, e.g. unix:/run/x.sock")
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise ConfigError(f"--metrics {text}: the path is over {UNIX_PATH_MAX} bytes")
        return path
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--metrics {text!r}: expected HOST:PORT (e.g. 127.0.0.1:9323) or unix:PATH"
        )
    return (host.strip("[]") or "127.0.0.1", int(port))


class _UnixHTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        path = str(self.server_address)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        socketserver.TCPServer.server_bind(self)
        os.chmod(path, 0o660)
        self.server_name, self.server_port = "localhost", 0


class SideListener:
    """Serves METRICS (bytes, content type) and HEALTH (a JSON-able dict with ``ready``)."""

    def __init__(
        self,
        address: tuple[str, int] | Path,
        metrics: Callable[[], tuple[bytes, str]],
        health: Callable[[], dict[str, Any]],
        plugin_socket: Path | None = None,
    ) -> None:
        if (
            isinstance(address, Path)
            and plugin_socket is not None
            and os.path.realpath(address) == os.path.realpath(plugin_socket)
        ):
            raise ConfigError(
                f"--metrics unix:{address} is the plugin socket: metrics need a listener "
                "of their own (e.g. unix:/run/dockplug/NAME-metrics.sock or 127.0.0.1:9323)"
            )
        self.address = address
        handler = _handler(metrics, health)
        try:
            if isinstance(address, Path):
                self.server: ThreadingHTTPServer = _UnixHTTPServer(str(address), handler)  # type: ignore[arg-type]
            else:
                self.server = ThreadingHTTPServer(address, handler)
        except OSError as exc:
            raise ConfigError(f"--metrics: cannot listen on {self.url}: {exc.strerror}") from exc
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="dockplug-metrics", daemon=True
        )

    @property
    def url(self) -> str:
        if isinstance(self.address, Path):
            return f"unix:{self.address}"
        host, port = self.address
        if hasattr(self, "server"):
            port = int(self.server.server_address[1])
        return f"http://{host}:{port}"

    def start(self) -> SideListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if isinstance(self.address, Path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)


def _handler(
    metrics: Callable[[], tuple[bytes, str]], health: Callable[[], dict[str, Any]]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "dockplug"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, kind = metrics()
                self._send(200, body, kind)
            elif path == "/health":
                report = health()
                status = 200 if report.get("ready") else 503
                self._send(status, json.dumps(report).encode() + b"\n", "application/json")
            else:
                self._send(404, b"only /metrics and /health here\n", "text/plain")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return (
                "unix" if isinstance(self.client_address, str | bytes) else super().address_string()
            )

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes are not plugin events

    return Handler
