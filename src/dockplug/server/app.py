"""Dispatch: routes ``POST /Interface.Method`` to driver methods.

Routing is one dictionary lookup on the path; there is no framework in between because on a
unix socket every microsecond of per-request overhead shows in dockerd's latency. Every failure
path ends in a JSON ``{"Err": ...}`` reply; nothing a client sends can take the server down.
:meth:`PluginApp.handle` is what ``server/http.py`` calls; the app is also an ASGI application.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

from dockplug.errors import (
    ConfigError,
    EndpointNotFound,
    InvalidRequest,
    PluginError,
    RequestTooLarge,
)
from dockplug.observe.redaction import redact
from dockplug.protocol.base import (
    Driver,
    Encoded,
    Endpoint,
    Lane,
    Protocol,
    WouldBlock,
    implemented,
    protocols_of,
    running_on_loop,
    runs_inline,
    tries_inline,
)
from dockplug.server.reqlog import RequestLog

if TYPE_CHECKING:
    from pydantic import ValidationError

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
    # the endpoint's request model and reply builder, resolved on the route's first call (a
    # table may name them lazily: pydantic then loads on the first call that needs it)
    resolved: bool = False
    request: Any = None
    reply: Callable[[Any, Any], Any] | None = None

    def resolve(self) -> None:
        self.request = self.endpoint.request
        self.reply = self.endpoint.reply
        self.resolved = True


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
        slow_workers: int = 128,
        fast_workers: int = 32,
    ) -> None:
        self.drivers = [drivers] if isinstance(drivers, Driver) else list(drivers)
        if not self.drivers:
            raise ConfigError("no driver to serve")
        self.log = log or RequestLog()
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
        # The per-request hook (metrics): ``observer(endpoint, status, seconds)`` after each
        # reply, on the event loop. None costs one attribute test; a hook that raises is
        # switched off (and says so in the log) rather than failing the calls it watches.
        self.observer: Callable[[str, int, float], None] | None = None
        #: the report ``dockplug status`` asks for on the plugin socket (never announced)
        self.health: Callable[[], dict[str, Any]] | None = None

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

    def close(self) -> None:
        self.fast_pool.shutdown(wait=False, cancel_futures=True)
        self.slow_pool.shutdown(wait=False, cancel_futures=True)

    # -- dispatch ----------------------------------------------------------------------------

    def in_task(self, path: str) -> bool:
        """Whether PATH's call must run in a task from its start: an ``async def`` driver method
        may use what needs one (``asyncio.timeout``, ``wait_for``, task groups). Everything
        else (sync methods, on the loop or handed to a worker) is run eagerly by the transport,
        from the callback that read the request."""
        route = self.routes.get(path)
        return route is not None and route.is_async

    def error_body(self, proto: Protocol | None, message: str) -> bytes:
        """``{"Err": ...}`` (and the protocol's own error key, e.g. IPAM's ``Error``)."""
        payload = {"Err": message}
        if proto is not None and proto.error_key != "Err":
            payload[proto.error_key] = message
        return json.dumps(payload).encode()

    async def handle(
        self, method: str, path: str, body: bytes, too_large: bool = False
    ) -> tuple[int, bytes] | Stream:
        """Answers one request: ``(status, JSON body)``, or a :class:`Stream`. Never raises.

        Coroutine-shaped so that a driver may await, but the transport runs it eagerly: when
        nothing in it waits (an async or ``nonblocking`` driver method), the reply is written
        from the callback that read the request. After every reply ``observer(endpoint, status,
        seconds)`` is called if set (the metrics hook; it must not raise or block).
        """
        started = perf_counter()
        log = self.log
        rid = next(self._ids)
        route = self.routes.get(path)
        subject: str | None = None
        proto = route.protocol if route is not None else None
        try:
            if too_large:
                raise RequestTooLarge(f"request body exceeds the {self.body_limit} byte limit")
            if log.debug and body:
                log.body(rid, "<", body)
            if method != "POST":
                raise InvalidRequest(f"{path}: plugin endpoints take POST, not {method}")
            if route is None:
                if path == "/Plugin.Activate":
                    return self._done(rid, path, None, 200, self.activate_body, started)
                if path == HEALTH_PATH and self.health is not None:
                    report = json.dumps(self.health()).encode()
                    return self._done(rid, path, None, 200, report, started)
                raise EndpointNotFound(
                    f"{path.lstrip('/') or '/'} is not implemented by this plugin "
                    f"(it implements {', '.join(self.implements)})"
                )
            ep = route.endpoint
            if not route.resolved:
                route.resolve()
            req = self._parse(route, body)
            subject = ep.subject(req)
            if route.is_async:
                result = await route.method(req)
            elif route.inline:
                result = route.method(req)
            else:
                result = await self._call_sync(route, req)
            if ep.streams:
                log.request(rid, path, subject, 200, perf_counter() - started)
                if self.observer is not None:
                    self._observe(path, 200, perf_counter() - started)
                return Stream(_aiter(result))
            if type(result) is Encoded:
                data: bytes = result  # already in wire form (a driver's cached reply)
            else:
                reply = route.reply(result, req)  # type: ignore[misc]
                wire = getattr(reply, "wire", None)  # a WireModel encodes itself
                data = wire() if wire is not None else json.dumps(reply).encode()
            return self._done(rid, path, subject, 200, data, started)
        except PluginError as exc:
            return self._fail(rid, path, subject, proto, exc.status, exc.message, started)
        except Exception as exc:  # a driver bug must not take the server down
            text, kind = str(exc), type(exc).__name__
            if isinstance(exc, OSError | ValueError | LookupError):
                message = text or kind
            else:
                message = f"{kind}: {text}" if text else kind
                if log.debug:
                    # the traceback repeats the message: a secret in it must not reach the log
                    sys.stderr.write(redact(traceback.format_exc()))
            return self._fail(rid, path, subject, proto, 500, message, started)

    def _done(
        self, rid: int, path: str, subject: str | None, status: int, data: bytes, started: float
    ) -> tuple[int, bytes]:
        log = self.log
        if log.debug:
            log.body(rid, ">", data)
        seconds = perf_counter() - started
        log.request(rid, path, subject, status, seconds)
        observer = self.observer
        if observer is not None:
            try:  # inline, not through _observe: this runs after every reply
                observer(path, status, seconds)
            except Exception as exc:
                self._hook_failed(observer, exc)
        return status, data

    def _observe(self, path: str, status: int, seconds: float) -> None:
        observer = self.observer
        if observer is not None:
            try:
                observer(path, status, seconds)
            except Exception as exc:
                self._hook_failed(observer, exc)

    def _hook_failed(self, observer: Callable[[str, int, float], None], exc: Exception) -> None:
        """A broken hook must not turn replies into errors: it is turned off, once, said."""
        self.observer = None
        self.log.event(f"metrics hook {observer!r} failed and is now off: {exc}")

    def _fail(
        self,
        rid: int,
        path: str,
        subject: str | None,
        proto: Protocol | None,
        status: int,
        message: str,
        started: float,
    ) -> tuple[int, bytes]:
        message = redact(message)
        seconds = perf_counter() - started
        self.log.request(rid, path, subject, status, seconds, message)
        if self.observer is not None:
            self._observe(path, status, seconds)
        return status, self.error_body(proto, message)

    async def _call_sync(self, route: Route, req: Any) -> Any:
        if route.try_inline:
            try:
                with running_on_loop():
                    return route.method(req)
            except WouldBlock:
                pass  # nothing was changed: run it again where it may wait
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(route.executor, route.method, req)

    def _parse(self, route: Route, body: bytes) -> Any:
        model = route.request
        if model is None:
            return None
        try:
            if len(body) < 8 and body.strip() in (b"", b"null"):
                return model.model_validate({})
            # the validator itself: model_validate_json adds a Python frame per call
            return model.__pydantic_validator__.validate_json(body)
        except ValueError as exc:  # pydantic's ValidationError is one
            from pydantic import ValidationError  # loaded with the model already

            if not isinstance(exc, ValidationError):
                raise
            path = route.endpoint.path.lstrip("/")
            raise InvalidRequest(describe_validation(path, exc)) from None

    # -- ASGI: the same dispatch under any ASGI server (dockplug serves with server/http.py) --

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        size, too_large = 0, False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.body_limit:
                too_large, chunks = True, []
            elif chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        answer = await self.handle(scope["method"], scope["path"], b"".join(chunks), too_large)
        if isinstance(answer, Stream):
            headers = [(b"content-type", answer.content_type)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            gone = asyncio.ensure_future(_disconnected(receive))
            try:
                while (piece := await answer.next(gone)) is not None:
                    if piece:
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
            finally:
                gone.cancel()
                await answer.aclose()
                with contextlib.suppress(Exception):  # the client may be gone
                    await send({"type": "http.response.body", "body": b""})
            return
        status, data = answer
        headers = [(b"content-type", CONTENT_TYPE), (b"content-length", b"%d" % len(data))]
        with contextlib.suppress(Exception):  # the client may already be gone
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data})


class Stream:
    """A streamed 200 reply (LogDriver.ReadLogs): sent chunked, flushed per piece."""

    __slots__ = ("pieces",)
    content_type = b"application/x-json-stream"

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self.pieces = pieces

    async def next(self, gone: asyncio.Future[Any]) -> bytes | None:
        """The next piece; None at the end or once GONE is done (the client went away).

        A follower may wait for minutes between pieces; when the client goes, its pending
        step is cancelled, so the driver's ``finally`` frees what it holds at once.
        """
        if gone.done():
            return None
        step = asyncio.ensure_future(anext(self.pieces))
        try:
            await asyncio.wait((step, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
        if step.cancelled():
            return None
        try:
            return step.result()
        except StopAsyncIteration:
            return None

    async def aclose(self) -> None:
        closer = getattr(self.pieces, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


async def _disconnected(receive: Receive) -> None:
    """Returns when the ASGI server says the client disconnected (or cannot say any more)."""
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass


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
