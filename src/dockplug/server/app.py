"""The ASGI application: routes ``POST /Interface.Method`` to driver methods.

Routing is one dictionary lookup on the path; there is no framework in between because on a
unix socket every microsecond of per-request overhead shows in dockerd's latency. Every failure
path ends in a JSON ``{"Err": ...}`` reply; nothing a client sends can take the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dockplug.errors import (
    ConfigError,
    EndpointNotFound,
    InvalidRequest,
    PluginError,
    RequestTooLarge,
)
from dockplug.observe.metrics import CLIENT_GONE, NO_METRICS, Metrics
from dockplug.observe.redaction import redact
from dockplug.protocol.base import (
    Driver,
    Endpoint,
    Lane,
    Protocol,
    WireModel,
    WouldBlock,
    implemented,
    protocols_of,
    running_on_loop,
    runs_inline,
    tries_inline,
)
from dockplug.server.reqlog import RequestLog

CONTENT_TYPE = b"application/vnd.docker.plugins.v1+json"
DEFAULT_BODY_LIMIT = 16 * 1024 * 1024  # authz bodies carry up to 4 MiB of base64'd API payload

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class Route:
    endpoint: Endpoint
    protocol: Protocol
    method: Callable[[Any], Any]
    is_async: bool
    inline: bool
    try_inline: bool
    executor: ThreadPoolExecutor | None


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(body)"


def describe_validation(endpoint: str, exc: ValidationError) -> str:
    """One sentence naming the offending field, e.g. ``missing required field 'Name'``."""
    problems = []
    for err in exc.errors(include_url=False)[:3]:
        field = _field_path(tuple(err.get("loc", ())))
        if err["type"] == "missing":
            problems.append(f"missing required field '{field}'")
        elif err["type"] == "json_invalid":
            problems.append(f"malformed JSON body ({err.get('ctx', {}).get('error', err['msg'])})")
        elif err["type"] in ("model_type", "model_attributes_type", "dict_type") and not err["loc"]:
            problems.append("the body must be a JSON object")
        else:
            problems.append(f"field '{field}': {err['msg']}")
    return f"invalid {endpoint} request: " + "; ".join(problems)


#: dockplug's own endpoint for ``dockplug status``: not a plugin protocol, not in Activate
HEALTH_PATH = "/Dockplug.Health"


class PluginApp:
    """Serves one or more drivers; all the protocols they implement share one socket."""

    def __init__(
        self,
        drivers: Driver | Sequence[Driver],
        log: RequestLog | None = None,
        body_limit: int = DEFAULT_BODY_LIMIT,
        metrics: Metrics = NO_METRICS,
        slow_workers: int = 128,
        fast_workers: int = 32,
    ) -> None:
        self.drivers = [drivers] if isinstance(drivers, Driver) else list(drivers)
        if not self.drivers:
            raise ConfigError("no driver to serve")
        self.log = log or RequestLog()
        self.metrics = metrics
        #: the report ``dockplug status`` asks for on the plugin socket (never announced)
        self.health: Callable[[], dict[str, Any]] | None = None
        self.body_limit = body_limit
        self._ids = itertools.count(1)
        self.fast_pool = ThreadPoolExecutor(fast_workers, thread_name_prefix="dockplug-fast")
        self.slow_pool = ThreadPoolExecutor(slow_workers, thread_name_prefix="dockplug-slow")
        self.routes: dict[str, Route] = {}
        implements: list[str] = []
        for driver in self.drivers:
            for proto in protocols_of(driver):
                if proto.implements in implements:
                    raise ConfigError(f"two drivers implement {proto.implements}")
                implements.append(proto.implements)
                self._add_routes(driver, proto)
        if not implements:
            raise ConfigError("the driver implements no protocol; subclass e.g. VolumeDriver")
        self.implements = [
            p.implements for d in self.drivers for p in protocols_of(d) if p.announce
        ]
        self.activate_body = json.dumps({"Implements": self.implements}).encode()

    def _add_routes(self, driver: Driver, proto: Protocol) -> None:
        missing = []
        for ep in proto.endpoints:
            if not implemented(driver, ep):
                if ep.required:
                    missing.append(ep.method)
                continue
            method = getattr(driver, ep.method)
            inline = runs_inline(method)
            pool = self.slow_pool if ep.lane is Lane.SLOW else self.fast_pool
            self.routes[ep.path] = Route(
                endpoint=ep,
                protocol=proto,
                method=method,
                is_async=inspect.iscoroutinefunction(method),
                inline=inline,
                try_inline=not inline and tries_inline(method),
                executor=None if inline else pool,
            )
        if missing:
            raise ConfigError(
                f"{type(driver).__name__} implements {proto.implements} but lacks "
                f"required method(s): {', '.join(missing)}"
            )

    def _done(
        self,
        rid: int,
        path: str,
        subject: str | None,
        status: int,
        started: float,
        error: str | None = None,
    ) -> None:
        """The one place a finished call is accounted for: its log line and its metrics."""
        seconds = time.perf_counter() - started
        self.log.request(rid, path, subject, status, seconds, error)
        self.metrics.request_done(path, status, seconds)

    def close(self) -> None:
        self.fast_pool.shutdown(wait=False, cancel_futures=True)
        self.slow_pool.shutdown(wait=False, cancel_futures=True)

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        self.metrics.request_started()
        rid = next(self._ids)
        path: str = scope["path"]
        subject: str | None = None
        route = self.routes.get(path)
        proto = route.protocol if route else None
        try:
            body = await self._read_body(receive)
            if body is None:  # client went away
                self.metrics.request_done(path, CLIENT_GONE, time.perf_counter() - started)
                return
            if self.log.debug and body:
                self.log.body(rid, "<", body)
            if scope["method"] != "POST":
                raise InvalidRequest(f"{path}: plugin endpoints take POST, not {scope['method']}")
            if route is None:
                if path == "/Plugin.Activate":
                    await self._reply(send, 200, self.activate_body)
                    self._done(rid, path, None, 200, started)
                    return
                if path == HEALTH_PATH and self.health is not None:
                    await self._reply(send, 200, json.dumps(self.health()).encode())
                    self._done(rid, path, None, 200, started)
                    return
                raise EndpointNotFound(
                    f"{path.lstrip('/') or '/'} is not implemented by this plugin "
                    f"(it implements {', '.join(self.implements)})"
                )
            ep = route.endpoint
            req = self._parse(ep, body)
            subject = ep.subject(req)
            if route.is_async:
                result = await route.method(req)
            elif route.inline:
                result = route.method(req)
            else:
                result = await self._call_sync(route, req)
            if ep.streams:
                await self._stream(send, result)
                self._done(rid, path, subject, 200, started)
                return
            reply = ep.reply(result, req)
            data = reply.wire() if isinstance(reply, WireModel) else json.dumps(reply).encode()
            await self._reply(send, 200, data)
            if self.log.debug:
                self.log.body(rid, ">", data)
            self._done(rid, path, subject, 200, started)
        except PluginError as exc:
            await self._fail(send, rid, path, subject, proto, exc.status, exc.message, started)
        except Exception as exc:  # a driver bug must not take the server down
            text, kind = str(exc), type(exc).__name__
            if isinstance(exc, OSError | ValueError | LookupError):
                message = text or kind
            else:
                message = f"{kind}: {text}" if text else kind
                if self.log.debug:
                    # the traceback repeats the message: a secret in it must not reach the log
                    sys.stderr.write(redact(traceback.format_exc()))
            await self._fail(send, rid, path, subject, proto, 500, message, started)

    async def _call_sync(self, route: Route, req: Any) -> Any:
        if route.try_inline:
            try:
                with running_on_loop():
                    return route.method(req)
            except WouldBlock:
                pass  # nothing was changed: run it again where it may wait
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(route.executor, route.method, req)

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.body_limit:
                    raise RequestTooLarge(f"request body exceeds the {self.body_limit} byte limit")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _parse(self, ep: Endpoint, body: bytes) -> Any:
        model = ep.request
        if model is None:
            return None
        stripped = body.strip()
        try:
            if not stripped or stripped == b"null":
                return model.model_validate({})
            return model.model_validate_json(stripped)
        except ValidationError as exc:
            raise InvalidRequest(describe_validation(ep.path.lstrip("/"), exc)) from None

    async def _reply(self, send: Send, status: int, data: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", CONTENT_TYPE),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def _stream(self, send: Send, result: Any) -> None:
        """Streams a driver's bytes (LogDriver.ReadLogs); HTTP chunked, flushed per piece."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-json-stream")],
            }
        )
        try:
            async for piece in _aiter(result):
                if piece:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
        finally:
            await send({"type": "http.response.body", "body": b""})

    async def _fail(
        self,
        send: Send,
        rid: int,
        path: str,
        subject: str | None,
        proto: Protocol | None,
        status: int,
        message: str,
        started: float,
    ) -> None:
        message = redact(message)
        payload = {"Err": message}
        if proto is not None and proto.error_key != "Err":
            payload[proto.error_key] = message
        # the client may already be gone; then there is nobody to tell
        with contextlib.suppress(Exception):
            await self._reply(send, status, json.dumps(payload).encode())
        self._done(rid, path, subject, status, started, message)


async def _aiter(result: Any) -> AsyncIterator[bytes]:
    if hasattr(result, "__aiter__"):
        async for piece in result:
            yield bytes(piece)
        return
    if isinstance(result, bytes | bytearray):
        yield bytes(result)
        return
    iterator: Iterator[bytes] = iter(result if isinstance(result, Iterable) else ())
    loop = asyncio.get_running_loop()
    sentinel = object()
    while True:
        piece = await loop.run_in_executor(None, next, iterator, sentinel)
        if piece is sentinel:
            return
        yield bytes(piece)
