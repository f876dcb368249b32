"""A recording proxy between dockerd and a plugin (``dockplug record``).

dockerd dials ``/run/docker/plugins/NAME.sock``; the recorder forwards every request byte for
byte to the real plugin and keeps what went each way: the request line, every header exactly as
sent (order, casing, empty values), the raw bodies, the reply and the timing. That answers "what
does dockerd really send my plugin?", and it is how the harness's replay fixtures were made.

One upstream connection per dockerd connection, so keep-alive and concurrency look to the plugin
as they would without the recorder. A plugin that goes away (restart) closes the dockerd side
too, so dockerd sees a broken connection, as it would talking to the plugin directly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dockplug.server.discovery import PluginAddress

FORMAT = "dockplug-recording/1"
Headers = list[tuple[str, str]]


@dataclass
class _Message:
    start: str
    headers: Headers
    body: bytes
    raw: bytes  # head and body exactly as on the wire

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def closes(self) -> bool:
        return (self.header("connection") or "").lower() == "close"


async def _read_message(
    reader: asyncio.StreamReader, *, reply_to: str | None = None
) -> _Message | None:
    """One HTTP/1.1 message (None on a clean EOF before it starts); bodies by Content-Length,
    chunked, or (replies only) up to EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise
    lines = head[:-4].decode("latin-1").split("\r\n")
    headers: Headers = []
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers.append((key, value.strip(" \t")))
    msg = _Message(lines[0], headers, b"", head)
    status = lines[0].split(" ", 2)[1] if reply_to is not None else ""
    if reply_to == "HEAD" or status in ("204", "304") or status.startswith("1"):
        return msg
    if "chunked" in (msg.header("transfer-encoding") or "").lower():
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            msg.raw += size_line
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    msg.raw += trailer
                msg.raw += b"\r\n"
                break
            chunk = await reader.readexactly(size + 2)
            msg.raw += chunk
            body += chunk[:-2]
        msg.body = bytes(body)
    elif (length := msg.header("content-length")) is not None:
        msg.body = await reader.readexactly(int(length))
        msg.raw += msg.body
    elif reply_to is not None:
        msg.body = await reader.read()
        msg.raw += msg.body
    return msg


def peer_pid(sock: socket.socket | None) -> int | None:
    """The pid of the process at the other end of a unix socket (SO_PEERCRED)."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def _text(data: bytes) -> str:
    """Bytes as a JSON-safe string that turns back into the same bytes (see :func:`raw`)."""
    return data.decode("utf-8", "surrogateescape")


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass
class Recorder:
    """Listens on ``listen`` (a unix socket path) and forwards to ``target``."""

    listen: Path
    target: PluginAddress
    output: Path | None = None
    exchanges: list[dict[str, Any]] = field(default_factory=list)
    step: str = ""  # a label the caller sets (e.g. the docker command running); kept per call
    on_exchange: Callable[[dict[str, Any]], None] | None = None
    # record only connections from these processes (one dockerd among several sharing
    # /run/docker/plugins); the others are still forwarded, just not kept
    pids: set[int] | None = None

    def __post_init__(self) -> None:
        self._seq = itertools.count(1)
        self._conns = itertools.count(1)
        self._t0 = time.monotonic()
        self._started = datetime.now(UTC).isoformat(timespec="seconds")
        #: the engine the calls come from (EngineInfo.to_json()), set before serving
        self.engine: dict[str, str] | None = None
        self._lock = threading.Lock()
        self._server: asyncio.Server | None = None
        self._pids: dict[int, int | None] = {}
        self.ready = threading.Event()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        scheme, _, rest = self.target.url.partition("://")
        if scheme == "unix":
            return await asyncio.open_unix_connection(rest)
        host, _, port = rest.rstrip("/").rpartition(":")
        context: ssl.SSLContext | None = None
        if scheme == "https":
            from dockplug.client import _tls_context

            context = _tls_context(self.target.tls)
        return await asyncio.open_connection(host.strip("[]"), int(port), ssl=context)

    def recording(self) -> dict[str, Any]:
        with self._lock:
            exchanges = list(self.exchanges)
        return {
            "format": FORMAT,
            "recorded": self._started,
            "target": self.target.url,
            "listen": str(self.listen),
            # the dockerd the calls came from (dockplug record asks before serving)
            "engine": self.engine,
            "exchanges": exchanges,
        }

    def save(self, path: Path | None = None) -> None:
        path = path or self.output
        if path is None:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.recording(), indent=1) + "\n")
        os.replace(tmp, path)

    def _record(self, conn: int, started: float, req: _Message, **reply: Any) -> None:
        if not conn:
            return
        method, _, rest = req.start.partition(" ")
        path, _, version = rest.partition(" ")
        entry = {
            "seq": next(self._seq),
            "conn": conn,
            "pid": self._pids.get(conn),
            "step": self.step,
            "t": round(started - self._t0, 4),
            "seconds": round(time.monotonic() - started, 4),
            "method": method,
            "path": path,
            "version": version,
            "headers": [list(h) for h in req.headers],
            "body": _text(req.body),
            **reply,
        }
        with self._lock:
            self.exchanges.append(entry)
        if self.on_exchange is not None:
            self.on_exchange(entry)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pid = peer_pid(writer.get_extra_info("socket"))
        conn = next(self._conns) if self.pids is None or pid in self.pids else 0
        self._pids[conn] = pid
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while (req := await _read_message(reader)) is not None:
                started = time.monotonic()
                if upstream is not None and (upstream[0].at_eof() or upstream[1].is_closing()):
                    upstream[1].close()
                    upstream = None
                try:
                    if upstream is None:
                        upstream = await self._connect()
                    upstream[1].write(req.raw)
                    await upstream[1].drain()
                    reply = await _read_message(upstream[0], reply_to=req.start.split(" ")[0])
                    if reply is None:
                        raise ConnectionError("the plugin closed the connection without a reply")
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    self._record(conn, started, req, error=f"{type(exc).__name__}: {exc}")
                    break  # dockerd sees the connection break, as it would without us
                writer.write(reply.raw)
                await writer.drain()
                _, status, reason = [*reply.start.split(" ", 2), ""][:3]
                self._record(
                    conn,
                    started,
                    req,
                    status=int(status),
                    reason=reason,
                    reply_headers=[list(h) for h in reply.headers],
                    reply_body=_text(reply.body),
                )
                if req.closes or reply.closes:
                    break
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass  # dockerd went away mid-request
        except asyncio.CancelledError:
            pass  # the recorder is stopping; the connection just ends
        finally:
            if upstream is not None:
                upstream[1].close()
            writer.close()
            self.save()

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Serves until ``stop`` is set (or the task is cancelled); removes the socket after."""
        with contextlib.suppress(FileNotFoundError):
            self.listen.unlink()
        self.listen.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.listen))
        self.ready.set()
        try:
            if stop is None:
                await asyncio.Future()
            else:
                await stop.wait()
        finally:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.listen.unlink()
            self.save()


class ThreadedRecorder:
    """A :class:`Recorder` on a background thread: ``with ThreadedRecorder(...) as recorder``."""

    def __init__(
        self,
        listen: Path,
        target: PluginAddress,
        output: Path | None = None,
        pids: set[int] | None = None,
    ) -> None:
        self.recorder = Recorder(listen, target, output, pids=pids)
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="dockplug-recorder", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self.recorder.serve(self._stop)

        asyncio.run(main())  # cancels and awaits the connection handlers still running

    def __enter__(self) -> Recorder:
        self._thread.start()
        if not self.recorder.ready.wait(10):
            raise TimeoutError(f"the recorder did not listen on {self.recorder.listen}")
        return self.recorder

    def __exit__(self, *_: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


# -- fixtures: recordings with the random parts replaced by placeholders ---------------------

_HEX64 = re.compile(r"\b[0-9a-f]{64}\b")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


@dataclass
class Normaliser:
    """Replaces volume names with ``{vol1}``…, 64-hex ids with ``{id1}``… (numbered by first
    appearance), given literals (paths, the plugin name) with their placeholders, and times."""

    names: Iterable[str] = ()
    literals: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = list(self.names)
        self._vols = {n: f"{{vol{i}}}" for i, n in enumerate(self.names, 1)}

    def text(self, text: str) -> str:
        # longest first, so a path containing a name is replaced as a whole
        for literal in sorted({**self.literals, **self._vols}, key=len, reverse=True):
            text = text.replace(literal, {**self.literals, **self._vols}[literal])
        text = _HEX64.sub(lambda m: self.ids.setdefault(m[0], f"{{id{len(self.ids) + 1}}}"), text)
        return _TIME.sub("{time}", text)


def normalise(
    exchanges: Iterable[dict[str, Any]], norm: Normaliser, keep: Iterable[str] = ("seconds",)
) -> list[dict[str, Any]]:
    """Exchanges with placeholders for everything random; t/seq/conn dropped (they vary)."""
    dropped = {"t", "seq", "conn", "pid", "version", "reason"} - set(keep)
    out = []
    for ex in exchanges:
        item: dict[str, Any] = {}
        for key, value in ex.items():
            if key in dropped:
                continue
            if key in ("headers", "reply_headers"):
                value = [[k, norm.text(v)] for k, v in value]
            elif isinstance(value, str):
                value = norm.text(value)
            item[key] = value
        for key in ("body", "reply_body"):
            if key in item:
                item[key] = _decode_inner(item[key], norm)
        out.append(item)
    return out


def _decode_inner(body: str, norm: Normaliser) -> str:
    """Authz bodies carry base64 request/response bodies: normalise inside them too."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict):
        return body
    changed = False
    for key in ("RequestBody", "ResponseBody"):
        value = data.get(key)
        if isinstance(value, str) and value:
            try:
                inner = base64.b64decode(value, validate=True).decode()
            except ValueError:
                continue
            data[key] = base64.b64encode(norm.text(inner).encode()).decode()
            changed = True
    if not changed:
        return body
    text = json.dumps(data, separators=(",", ":"))
    return text + ("\n" if body.endswith("\n") else "")
