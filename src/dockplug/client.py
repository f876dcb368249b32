"""A plugin client that talks like dockerd: POST, no Content-Type, Accept v1.2, body + newline.

Used by ``dockplug call``/``ls``, the test fixtures and the conformance harness. The standard
library's ``http.client`` is enough: one persistent HTTP/1.1 connection per client.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dockplug.errors import ConfigError
from dockplug.server import discovery

ACCEPT = "application/vnd.docker.plugins.v1.2+json"


@dataclass
class Reply:
    status: int
    raw: bytes
    headers: dict[str, str]

    @property
    def json(self) -> Any:
        return json.loads(self.raw) if self.raw.strip() else None

    @property
    def error(self) -> str | None:
        """dockerd's reading: non-200 is a failure; so is a non-empty Err (or IPAM Error)."""
        try:
            data = self.json
        except ValueError:
            data = None
        if isinstance(data, dict):
            for key in ("Err", "Error"):
                if data.get(key):
                    return str(data[key])
        if self.status != 200:
            return self.raw.decode("utf-8", "replace") or f"HTTP {self.status}"
        return None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("plugin.moby.localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def resolve(target: str) -> discovery.PluginAddress:
    """A socket path, a URL (unix://, tcp://, http://, https://) or a plugin name."""
    if "://" in target:
        return discovery.PluginAddress(target, target, "argument")
    if "/" in target or target.endswith(".sock"):
        return discovery.PluginAddress(target, f"unix://{target}", "argument")
    return discovery.find(target)


def _tls_context(tls: discovery.TLSOptions | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=tls.ca_file if tls and tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls is None or tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls and tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file or None)
    return ctx


class PluginClient:
    """One keep-alive connection to a plugin; reconnects once if the server closed it."""

    def __init__(self, target: str | discovery.PluginAddress, timeout: float = 60.0) -> None:
        self.address = resolve(target) if isinstance(target, str) else target
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        url = self.address.url
        scheme, _, rest = url.partition("://")
        if scheme == "unix":
            return _UnixConnection(rest, self.timeout)
        host_port = rest.rstrip("/")
        if scheme in ("tcp", "http"):
            return http.client.HTTPConnection(host_port, timeout=self.timeout)
        if scheme == "https":
            return http.client.HTTPSConnection(
                host_port, timeout=self.timeout, context=_tls_context(self.address.tls)
            )
        raise ConfigError(f"{url}: unknown protocol {scheme!r} (use unix, tcp, http or https)")

    def call(self, endpoint: str, body: Any = None, *, raw: bytes | None = None) -> Reply:
        """POST ``/endpoint``. ``body`` is JSON-encoded like Go does (compact, trailing newline);
        ``None`` sends an empty body, as dockerd does for Activate and GetCapabilities."""
        path = endpoint if endpoint.startswith("/") else "/" + endpoint
        if raw is None:
            raw = b"" if body is None else json.dumps(body, separators=(",", ":")).encode() + b"\n"
        headers = {"Accept": ACCEPT, "User-Agent": "Go-http-client/1.1"}
        data = raw
        return self._exchange(lambda c: c.request("POST", path, body=data, headers=headers))

    def send(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout: float | None = None,
    ) -> Reply:
        """One request with exactly these headers in this order, nothing added (not even Host):
        how the harness replays the calls it recorded from dockerd."""

        def write(conn: http.client.HTTPConnection) -> None:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for key, value in headers:
                conn.putheader(key, value)
            conn.endheaders(body)

        return self._exchange(write, timeout)

    def _exchange(
        self, write: Callable[[http.client.HTTPConnection], None], timeout: float | None = None
    ) -> Reply:
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = self._connect()
            if timeout is not None:
                self._conn.timeout = timeout
                if self._conn.sock is not None:
                    self._conn.sock.settimeout(timeout)
            try:
                write(self._conn)
                resp = self._conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return Reply(resp.status, data, {k.lower(): v for k, v in resp.getheaders()})
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a keep-alive connection the plugin closed: Go retries once too
                if attempt:
                    raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> PluginClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@contextlib.contextmanager
def explained(target: str, timeout: float) -> Iterator[None]:
    """Turns a transport failure talking to ``target`` into a one-line ConfigError."""
    try:
        yield
    except ConnectionRefusedError as exc:
        raise ConfigError(f"{target}: nothing listens there (connection refused)") from exc
    except FileNotFoundError as exc:
        raise ConfigError(f"{target}: no such socket") from exc
    except TimeoutError as exc:
        raise ConfigError(f"{target}: no reply within {timeout:g}s") from exc
    except http.client.HTTPException as exc:
        raise ConfigError(f"{target}: did not answer with HTTP ({exc!r})") from exc
