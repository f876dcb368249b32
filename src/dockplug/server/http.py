"""HTTP/1.1 for dockerd's plugin client: httptools' parser under an asyncio Protocol of our own.

dockerd waits on every plugin call, so a reply is written from the very callback that read the
request whenever the driver answers without waiting (Get, List, Path from memory): no task, no
extra loop turn, no ASGI message dicts. What the wire needs and nothing more: POST with a
Content-Length or a chunked body (Go's client may send either), keep-alive (dockerd keeps its
connections for ever), pipelining (answered in order), 100-continue for curl, 400 on bytes that
are not HTTP, 413 past the body limit with the connection kept usable, and a graceful stop that
finishes the calls in flight and closes idle connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from time import perf_counter
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

import httptools

if TYPE_CHECKING:
    from dockplug.server.app import PluginApp, Stream

REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
           413: b"Payload Too Large", 500: b"Internal Server Error"}  # fmt: skip
CONTENT_TYPE = b"application/vnd.docker.plugins.v1+json"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_QUEUED = 64  # pipelined requests read ahead of the one being answered; then stop reading


def head(status: int, length: int, close: bool = False) -> bytes:
    """Status line and headers of a JSON reply (the only kind dockerd gets, errors included)."""
    reason = REASONS.get(status, b"Error")
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n" % (
        status, reason, CONTENT_TYPE, length, b"connection: close\r\n" if close else b"",
    )  # fmt: skip


class _Resume:
    """Lets a task carry on a coroutine that was started outside any task and then had to wait
    (``coro.send(None)`` yielded a future): the task sees that future, exactly as if it had run
    the coroutine from the start. This is what makes eager dispatch safe for every driver."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        value, coro = self.first, self.coro
        while True:
            try:
                yield value
            except BaseException as exc:  # cancelled (or thrown) while waiting: pass it on
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = coro.send(None)
                except StopIteration as done:
                    return done.value


class _Request:
    __slots__ = ("body", "keep_alive", "method", "path", "too_large")

    def __init__(self, method: str, path: str, body: bytes, keep_alive: bool, too_large: bool):
        self.method = method
        self.path = path
        self.body = body
        self.keep_alive = keep_alive
        self.too_large = too_large


class HttpConnection(asyncio.Protocol):
    """One client connection. Requests are parsed as bytes arrive and answered one at a time,
    in order; a request that waits (a worker thread, an await) continues in a task."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.app = server.app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[_Request] = deque()
        self.busy = False  # a request is being answered
        self.closing = False
        self.paused_reading = False
        self.write_ready: asyncio.Future[None] | None = None  # set while writing is paused
        self.task: asyncio.Task[None] | None = None
        #: done when the client is gone (connection lost, or its EOF while a stream runs)
        self.gone: asyncio.Future[None] | None = None
        self.streaming = False
        self.peer_eof = False
        # the request being parsed
        self._url = b""
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._expect = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.queue.clear()
        if self.write_ready is not None and not self.write_ready.done():
            self.write_ready.set_result(None)
        self._set_gone()
        if not self.busy:
            self.server.idle_changed()

    def pause_writing(self) -> None:
        if self.write_ready is None or self.write_ready.done():
            self.write_ready = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.write_ready is not None and not self.write_ready.done():
            self.write_ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse("protocol upgrades are not served")
            return
        except httptools.HttpParserError as exc:
            self._refuse(f"malformed HTTP request: {exc}")
            return
        if not self.busy and self.queue:
            self._next()
        elif len(self.queue) > MAX_QUEUED and not self.paused_reading and self.transport:
            self.paused_reading = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        """A client that half-closes after its last request still gets the replies, but not
        a stream: dockerd closes a ReadLogs connection when ``docker logs -f`` goes away, and
        a follower would otherwise wait for entries no one reads (the transport then closes)."""
        self.peer_eof = True
        if self.streaming:
            self._set_gone()
            return False
        return bool(self.busy or self.queue)

    def _set_gone(self) -> None:
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._chunks = []
        self._size = 0
        self._too_large = False
        self._expect = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self._expect = True

    def on_headers_complete(self) -> None:
        if self._expect and self.transport is not None and not self.busy and not self.queue:
            self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return  # read and dropped, so the connection stays usable after the 413
        self._size += len(body)
        if self._size > self.app.body_limit:
            self._too_large = True
            self._chunks = []
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        url = self._url
        if b"?" in url or b"%" in url or b"#" in url:
            path = unquote(httptools.parse_url(url).path.decode("latin-1"))
        else:
            path = url.decode("latin-1")
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        method = self.parser.get_method().decode("latin-1")
        keep = self.parser.should_keep_alive()
        self.queue.append(_Request(method, path, body, keep, self._too_large))

    # -- answering ----------------------------------------------------------------------------

    def _refuse(self, message: str) -> None:
        """Bytes that are not HTTP: one 400 and the connection closes (nothing else can be
        framed on it any more)."""
        self.queue.clear()
        self.closing = True
        if self.transport is not None and not self.busy:
            body = self.app.error_body(None, message)
            self.transport.write(head(400, len(body), close=True) + body)
            self.transport.close()

    def _next(self) -> None:
        """Answer queued requests in order; the ones that need not wait are answered here."""
        transport = self.transport
        while self.queue and not self.closing and transport is not None:
            req = self.queue.popleft()
            coro = self.app.handle(req.method, req.path, req.body, req.too_large)
            if self.app.in_task(req.path):
                self.busy = True
                self.task = asyncio.get_running_loop().create_task(self._later(coro, req))
                return
            try:
                waiting = coro.send(None)
            except StopIteration as done:
                self._write(done.value, req.keep_alive)
                if self.busy:  # a stream: it goes on in a task, the next request after it
                    return
                continue
            except BaseException as exc:  # handle() answers every error itself; keep serving
                coro.close()
                self._write_error(exc, req.keep_alive)
                continue
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(
                self._later(_Resume(coro, waiting), req)
            )
            return
        if self.paused_reading and transport is not None and not self.closing:
            self.paused_reading = False
            transport.resume_reading()
        if self.closing and transport is not None and not self.busy:
            transport.close()

    async def _later(self, answer: Awaitable[Any], req: _Request) -> None:
        try:
            reply = await answer
        except BaseException as exc:
            self._write_error(exc, req.keep_alive)
        else:
            if isinstance(reply, tuple):
                self._write(reply, req.keep_alive)
            else:
                await self._stream(reply, req.keep_alive)
        finally:
            self.busy = False
            self.task = None
        self.server.idle_changed()
        self._next()

    def _write(self, reply: Any, keep_alive: bool) -> None:
        if not isinstance(reply, tuple):  # a stream answered without waiting: go on in a task
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(self._stream_then_next(reply))
            return
        status, body = reply
        close = not keep_alive or self.server.stopping
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(head(status, len(body), close) + body)
        if close:
            self.closing = True
            self.queue.clear()
            transport.close()
        else:
            self.server.linger()

    def _write_error(self, exc: BaseException, keep_alive: bool) -> None:
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            self.closing = True
            if self.transport is not None:
                self.transport.close()
            return
        body = self.app.error_body(None, f"{type(exc).__name__}: {exc}")
        self._write((500, body), keep_alive)

    async def _stream_then_next(self, stream: Stream) -> None:
        try:
            await self._stream(stream, True)
        finally:
            self.busy = False
            self.task = None
        self.server.idle_changed()
        self._next()

    async def _stream(self, stream: Stream, keep_alive: bool) -> None:
        """A streamed reply (LogDriver.ReadLogs): chunked, each piece sent as it comes, with
        the writer's flow control honoured so a slow reader never fills our memory. The wait
        for the next piece ends when the client goes away, and the stream is closed then (a
        follower frees its files at once instead of at its next entry, which may never come)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            await stream.aclose()
            return
        self.gone = asyncio.get_running_loop().create_future()
        self.streaming = True
        if self.closing or self.peer_eof:  # gone before its stream began
            self._set_gone()
        transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n"
            % stream.content_type
        )
        try:
            while True:
                piece = await stream.next(self.gone)
                if piece is None or transport.is_closing():
                    break
                if piece:
                    transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    if self.write_ready is not None:
                        await self.write_ready
        finally:
            self.streaming = False
            await stream.aclose()
            if not transport.is_closing():
                transport.write(b"0\r\n\r\n")
                if not keep_alive or self.server.stopping:
                    self.closing = True
                    transport.close()

    def close_if_idle(self) -> None:
        if not self.busy and self.transport is not None:
            self.closing = True
            self.transport.close()


class HttpServer:
    """The listening side: serves ``app`` on already-bound sockets until :meth:`stop`."""

    def __init__(self, app: PluginApp, ssl: Any = None, busy_poll: float = 0.0) -> None:
        self.app = app
        self.ssl = ssl
        self.connections: set[HttpConnection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.stopping = False
        self._idle: asyncio.Event | None = None
        self.busy_poll = busy_poll
        self._poll_until = 0.0
        self._polling = False

    def linger(self) -> None:
        """After a reply: keep the loop polling (a ready callback makes it poll without
        sleeping) for ``busy_poll`` seconds, so the caller's next request, which on a keep-alive
        connection often follows within tens of µs, is read at once instead of after a
        wake-up from idle. Each new reply extends the window; it costs CPU only then."""
        if self.busy_poll:
            self._poll_until = perf_counter() + self.busy_poll
            if not self._polling:
                self._polling = True
                asyncio.get_running_loop().call_soon(self._poll)

    def _poll(self) -> None:
        if perf_counter() < self._poll_until and not self.stopping:
            asyncio.get_running_loop().call_soon(self._poll)
        else:
            self._polling = False

    async def start(self, sockets: list[Any]) -> None:
        import socket as socketlib

        loop = asyncio.get_running_loop()
        factory: Callable[[], HttpConnection] = lambda: HttpConnection(self)  # noqa: E731
        for sock in sockets:
            if sock.family == socketlib.AF_UNIX:
                server = await loop.create_unix_server(factory, sock=sock, ssl=self.ssl)
            else:
                server = await loop.create_server(factory, sock=sock, ssl=self.ssl)
            self.servers.append(server)

    def idle_changed(self) -> None:
        if self._idle is not None and not any(c.busy for c in self.connections):
            self._idle.set()

    async def shutdown(self, timeout: float) -> None:
        """Stop listening at once, close idle connections, let calls in flight finish and send
        their replies (``connection: close``), then close what is left after ``timeout``."""
        self.stopping = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        self._idle = asyncio.Event()
        self.idle_changed()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        for conn in list(self.connections):
            if conn.task is not None:
                conn.task.cancel()
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)  # let the transports run their connection_lost
