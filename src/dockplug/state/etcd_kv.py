"""The cluster key-value store on etcd v3 (gRPC, asyncio).

It speaks etcd's v3 API through the protocol stubs that ``aetcd`` ships (``aetcd.rpc``) on a
``grpc.aio`` channel of its own: aetcd's ``Client`` has one endpoint, no TLS and one timeout for
every call, and the interface needs endpoint lists, client certificates and a deadline per call.
The v2 API that libnetwork's ``--cluster-store`` used is gone in etcd 3.5; v3 is in 3.4 and 3.5.

Failures, as measured on 3.4 and 3.5: a stopped (SIGSTOP) etcd keeps its sockets open and never
answers, so every call carries a gRPC deadline and turns DEADLINE_EXCEEDED into
:class:`StoreUnavailable`; a dead one refuses connections, which fails a call at once; after a
restart the same channel reconnects (reconnect back-off capped at 1 s instead of gRPC's 120 s).
A watch does not survive a restart: this one opens a new stream from the last revision it
delivered + 1, and raises :class:`Compacted` when etcd no longer has that revision. A lease is
refreshed by one ``LeaseKeepAlive`` exchange per :meth:`keep_alive`, each on the channel of the
moment, so :class:`~dockplug.state.kv.LeaseKeeper` rides out a restart shorter than the TTL.

Several endpoints (``http://a:2379,http://b:2379``): each has its own channel; a call goes to the
first one that is connected, starting from the last that worked. A write is never re-sent after
it may have reached etcd: its outcome is unknown and the caller re-reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from aetcd import rpc

from dockplug.errors import ConfigError
from dockplug.state.kv import (
    DEFAULT_TIMEOUT,
    Compacted,
    Compare,
    Delete,
    Entry,
    Event,
    EventKind,
    Health,
    KVError,
    KVStore,
    LeaseNotFound,
    Op,
    OpResult,
    Put,
    StoreUnavailable,
    TxnResult,
    check_key,
    check_ops,
    prefix_end,
)

DEFAULT_PORT = 2379
CONNECT_WAIT = 1.0  # seconds one of several endpoints may take to connect before the next
WATCH_RETRY = 60.0  # seconds a broken watch keeps reconnecting before it gives up
WATCH_BACKOFF = (0.1, 1.0)  # first and longest pause between reconnects of a watch

CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # pings find a stream to a stopped etcd dead; etcd refuses pings more often than every 5 s
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", -1),
)

_OPS = {"==": 0, ">": 1, "<": 2, "!=": 3}  # etcdserverpb.Compare.CompareResult
_TARGETS = {"version": 0, "create_revision": 1, "mod_revision": 2, "value": 3}
_READY = grpc.ChannelConnectivity.READY
_FAILED = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for ``https://`` endpoints: the CA that signed etcd's certificate (None: the
    system's), and a client certificate and key for etcd's ``--client-cert-auth``."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("etcd TLS: give the client certificate and its key together")

        def read(path: Path | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(f"etcd TLS {what} {path}: {exc.strerror}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca, "CA file"),
            private_key=read(self.key, "key file"),
            certificate_chain=read(self.cert, "certificate file"),
        )


def parse_endpoints(endpoints: str | Sequence[str]) -> list[tuple[str, str]]:
    """(URL, gRPC target) of each endpoint in ``http(s)://HOST:PORT[,...]``; one scheme for all."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed: list[tuple[str, str]] = []
    schemes: set[str] = set()
    for item in (i.strip() for i in items):
        url = urlsplit(item)
        try:
            port = url.port or DEFAULT_PORT
        except ValueError:
            port = -1
        if url.scheme not in ("http", "https") or not url.hostname or port < 0 or url.path:
            raise ConfigError(
                f"etcd endpoint {item!r}: write http://HOST:PORT or https://HOST:PORT "
                "(several separated by commas)"
            )
        schemes.add(url.scheme)
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        parsed.append((f"{url.scheme}://{host}:{port}", f"{host}:{port}"))
    if not parsed:
        raise ConfigError("etcd endpoints: none given; write http://HOST:PORT[,...]")
    if len(schemes) > 1:
        raise ConfigError(f"etcd endpoints {endpoints!r}: use https:// for all of them or none")
    return parsed


class _Endpoint:
    """One endpoint's channel and stubs, made on first use: a grpc.aio channel belongs to the
    event loop it was made in, and a store may be built before the loop runs."""

    def __init__(self, url: str, target: str, credentials: grpc.ChannelCredentials | None):
        self.url = url
        self._target = target
        self._credentials = credentials
        self._channel: Any = None
        self.kv: Any = None
        self.lease: Any = None
        self.watch: Any = None

    @property
    def channel(self) -> Any:
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self._target, options=CHANNEL_OPTIONS)
            else:
                self._channel = grpc.aio.secure_channel(
                    self._target, self._credentials, options=CHANNEL_OPTIONS
                )
            self.kv = rpc.KVStub(self._channel)
            self.lease = rpc.LeaseStub(self._channel)
            self.watch = rpc.WatchStub(self._channel)
        return self._channel

    def stubs(self) -> _Endpoint:
        """This endpoint, with its channel open."""
        _ = self.channel
        return self

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _entry(kv: Any) -> Entry:
    return Entry(
        kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease or None
    )


def _event(ev: Any) -> Event:
    revision: int = ev.kv.mod_revision
    if ev.type == 0:  # mvccpb.Event.PUT
        return Event(EventKind.PUT, _entry(ev.kv), revision)
    return Event(EventKind.DELETE, Entry(ev.kv.key.decode(), b"", 0, revision, 0), revision)


def _range_of(prefix: str) -> tuple[bytes, bytes]:
    """etcd's [key, range_end) for every key starting with PREFIX (b"\\0" twice: every key)."""
    raw = prefix.encode()
    return (raw or b"\0"), (prefix_end(raw) or b"\0")


def _compare(c: Compare) -> Any:
    message = rpc.Compare(key=check_key(c.key), result=_OPS[c.op], target=_TARGETS[c.target])
    if (c.target == "value") != isinstance(c.operand, bytes):
        raise TypeError(f"compare of {c.target} needs {'bytes' if c.target == 'value' else 'int'}")
    setattr(message, c.target, c.operand)
    return message


def _request_op(op: Op) -> Any:
    if isinstance(op, Put):
        put = rpc.PutRequest(key=check_key(op.key), value=bytes(op.value), lease=op.lease or 0)
        return rpc.RequestOp(request_put=put)
    if op.prefix:
        key, end = _range_of(op.key)
    else:
        key, end = check_key(op.key), b""
    if isinstance(op, Delete):
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=end))
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key, range_end=end))


def _op_result(response: Any) -> OpResult:
    kind = response.WhichOneof("response")
    if kind == "response_range":
        return OpResult(entries=tuple(_entry(kv) for kv in response.response_range.kvs))
    if kind == "response_delete_range":
        return OpResult(deleted=response.response_delete_range.deleted)
    return OpResult()


class EtcdKV(KVStore):
    """The key-value store on the etcd cluster at ENDPOINTS (``http(s)://HOST:PORT[,...]``).

    ``tls`` (or ``ca``/``cert``/``key``) is needed for ``https://`` endpoints that check client
    certificates. Opening does not connect: the first call does, within its deadline; from then
    on the store belongs to that call's event loop (gRPC's channels do).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        ca: Path | str | None = None,
        cert: Path | str | None = None,
        key: Path | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        watch_retry: float = WATCH_RETRY,
    ) -> None:
        parsed = parse_endpoints(endpoints)
        self.endpoints = [url for url, _ in parsed]
        self.name = f"etcd at {','.join(self.endpoints)}"
        self.timeout = timeout
        self.watch_retry = watch_retry
        secure = self.endpoints[0].startswith("https://")
        if not secure and (ca or cert or key):
            raise ConfigError(f"{self.name}: TLS files need https:// endpoints")
        tls = TLSFiles(*(Path(p) if p else None for p in (ca, cert, key)))
        credentials = tls.credentials() if secure else None
        self._endpoints = [_Endpoint(url, target, credentials) for url, target in parsed]
        self._current = 0
        self._closed = False
        self._calls: set[Any] = set()  # open streams, cancelled by close()

    # --- calls with deadlines ------------------------------------------------------------------

    async def _endpoint(self, deadline: float) -> _Endpoint:
        """The first connected endpoint from the current one; with one endpoint, that one
        (its call then fails or waits within its own deadline)."""
        if self._closed:
            raise StoreUnavailable(f"{self.name}: the store is closed")
        count = len(self._endpoints)
        if count == 1:
            return self._endpoints[0].stubs()
        for step in range(count):
            index = (self._current + step) % count
            channel = self._endpoints[index].channel
            state = channel.get_state(try_to_connect=True)
            wait_until = min(deadline, time.monotonic() + CONNECT_WAIT)
            while state != _READY and state not in _FAILED:
                left = wait_until - time.monotonic()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(channel.wait_for_state_change(state), left)
                state = channel.get_state()
            if state == _READY:
                self._current = index
                return self._endpoints[index].stubs()
        return self._endpoints[self._current].stubs()

    def _where(self, endpoint: _Endpoint) -> str:
        """The store, and which of its endpoints when it has several."""
        return self.name if len(self._endpoints) == 1 else f"{self.name}: {endpoint.url}"

    def _error(self, exc: grpc.aio.AioRpcError, endpoint: _Endpoint, seconds: float) -> Exception:
        code, details = exc.code(), exc.details() or ""
        where = self._where(endpoint)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return StoreUnavailable(
                f"{where} did not answer within {seconds:g} s (etcd stopped, "
                "overloaded or without quorum): check the etcd members, or list more endpoints"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            if len(self._endpoints) > 1 and self._endpoints[self._current] is endpoint:
                self._current = (self._current + 1) % len(self._endpoints)
            hint = "start etcd there or correct the endpoint list"
            if "ssl" in details.lower() or "handshake" in details.lower() or "tls" in details:
                hint = "check the CA, the client certificate and its key"
            return StoreUnavailable(f"{where} is unreachable ({details}): {hint}")
        if code == grpc.StatusCode.UNAUTHENTICATED or code == grpc.StatusCode.PERMISSION_DENIED:
            return StoreUnavailable(
                f"{where} refused us ({details}): check the client "
                "certificate and etcd's users and roles"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return StoreUnavailable(
                f"{self.name}: {details}: compact and defragment etcd, or raise its quota"
            )
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return ValueError(f"{self.name}: {details}")
        if code == grpc.StatusCode.CANCELLED and self._closed:
            return StoreUnavailable(f"{self.name}: the store is closed")
        return KVError(f"{where}: {code.name}: {details}")

    async def _unary(self, stub: str, method: str, request: Any, timeout: float | None) -> Any:
        seconds = self._deadline(timeout)
        deadline = time.monotonic() + seconds
        endpoint = await self._endpoint(deadline)
        call = getattr(getattr(endpoint, stub), method)
        try:
            return await call(request, timeout=max(deadline - time.monotonic(), 0.001))
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, endpoint, seconds) from exc

    # --- the interface -------------------------------------------------------------------------

    async def get(self, key: str, *, timeout: float | None = None) -> Entry | None:
        request = rpc.RangeRequest(key=check_key(key))
        response = await self._unary("kv", "Range", request, timeout)
        return _entry(response.kvs[0]) if response.kvs else None

    async def range(self, prefix: str, *, timeout: float | None = None) -> tuple[list[Entry], int]:
        key, end = _range_of(prefix)
        request = rpc.RangeRequest(key=key, range_end=end)
        response = await self._unary("kv", "Range", request, timeout)
        return [_entry(kv) for kv in response.kvs], response.header.revision

    async def put(
        self, key: str, value: bytes, lease: int | None = None, *, timeout: float | None = None
    ) -> int:
        request = rpc.PutRequest(key=check_key(key), value=bytes(value), lease=lease or 0)
        try:
            response = await self._unary("kv", "Put", request, timeout)
        except KVError as exc:
            raise self._lease_error(exc, lease) from exc
        revision: int = response.header.revision
        return revision

    def _lease_error(self, exc: KVError, lease: int | None) -> KVError:
        if lease is not None and "lease not found" in str(exc):
            return LeaseNotFound(self.name, lease)
        return exc

    async def delete(self, key: str, *, timeout: float | None = None) -> bool:
        request = rpc.DeleteRangeRequest(key=check_key(key))
        response = await self._unary("kv", "DeleteRange", request, timeout)
        return bool(response.deleted)

    async def delete_prefix(self, prefix: str, *, timeout: float | None = None) -> int:
        key, end = _range_of(prefix)
        request = rpc.DeleteRangeRequest(key=key, range_end=end)
        response = await self._unary("kv", "DeleteRange", request, timeout)
        deleted: int = response.deleted
        return deleted

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        check_ops(success)
        check_ops(failure)
        request = rpc.TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_request_op(op) for op in success],
            failure=[_request_op(op) for op in failure],
        )
        try:
            response = await self._unary("kv", "Txn", request, timeout)
        except KVError as exc:
            leases = [op.lease for op in (*success, *failure) if isinstance(op, Put) and op.lease]
            raise self._lease_error(exc, leases[0] if leases else None) from exc
        return TxnResult(
            response.succeeded,
            response.header.revision,
            tuple(_op_result(r) for r in response.responses),
        )

    async def grant(self, ttl: int, *, timeout: float | None = None) -> int:
        if ttl < 1:
            raise ValueError(f"a lease's ttl is a whole number of seconds >= 1, not {ttl}")
        response = await self._unary("lease", "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl), timeout)
        if response.error:
            raise KVError(f"{self.name}: lease not granted: {response.error}")
        lease: int = response.ID
        return lease

    async def keep_alive(self, lease: int, *, timeout: float | None = None) -> int:
        seconds = self._deadline(timeout)
        deadline = time.monotonic() + seconds
        endpoint = await self._endpoint(deadline)
        call = endpoint.lease.LeaseKeepAlive(
            iter([rpc.LeaseKeepAliveRequest(ID=lease)]),
            timeout=max(deadline - time.monotonic(), 0.001),
        )
        try:
            reply = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, endpoint, seconds) from exc
        finally:
            call.cancel()
        if reply is grpc.aio.EOF:
            raise StoreUnavailable(f"{self._where(endpoint)} ended the lease keep-alive")
        if reply.TTL <= 0:
            raise LeaseNotFound(self.name, lease)
        ttl: int = reply.TTL
        return ttl

    async def revoke(self, lease: int, *, timeout: float | None = None) -> None:
        try:
            await self._unary("lease", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease), timeout)
        except KVError as exc:
            raise self._lease_error(exc, lease) from exc

    async def compact(self, revision: int, *, timeout: float | None = None) -> None:
        request = rpc.CompactionRequest(revision=revision, physical=True)
        try:
            await self._unary("kv", "Compact", request, timeout)
        except KVError as exc:
            if "has been compacted" in str(exc):
                return  # already compacted that far: nothing to do
            if "future revision" in str(exc):
                raise ValueError(f"cannot compact to {revision}: {exc}") from exc
            raise

    async def health(self, *, timeout: float | None = None) -> Health:
        start = time.monotonic()
        try:
            # a linearizable read: answered only by a member that has a quorum
            request = rpc.RangeRequest(key=b"\0dockplug-health", keys_only=True)
            response = await self._unary("kv", "Range", request, timeout)
        except KVError as exc:
            return Health(False, self.name, None, time.monotonic() - start, str(exc))
        return Health(True, self.name, response.header.revision, time.monotonic() - start)

    async def _events(
        self, prefix: str, start_revision: int | None, timeout: float
    ) -> AsyncGenerator[Event | None, None]:
        if start_revision is not None and start_revision < 0:
            raise ValueError(f"start_revision must be >= 0, not {start_revision}")
        key, end = _range_of(prefix)
        next_revision = start_revision or 0  # 0: from now (set once the first stream says when)
        established = False
        broken_since: float | None = None
        pause = WATCH_BACKOFF[0]
        while not self._closed:
            endpoint = await self._endpoint(time.monotonic() + timeout)
            call = endpoint.watch.Watch()
            self._calls.add(call)
            try:
                create = rpc.WatchCreateRequest(
                    key=key, range_end=end, start_revision=next_revision, progress_notify=True
                )
                await asyncio.wait_for(call.write(rpc.WatchRequest(create_request=create)), timeout)
                created = await asyncio.wait_for(call.read(), timeout)
                if created is grpc.aio.EOF:
                    raise StoreUnavailable(f"{self._where(endpoint)} ended the watch stream")
                if created.compact_revision:
                    raise Compacted(self.name, next_revision, created.compact_revision)
                if created.canceled:
                    raise KVError(f"{self.name}: watch refused: {created.cancel_reason}")
                if not next_revision:
                    next_revision = created.header.revision + 1
                elif not established:
                    await self._check_start(call, key, end, next_revision, timeout)
                if not established:
                    established = True
                    yield None
                broken_since, pause = None, WATCH_BACKOFF[0]
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        break
                    if response.compact_revision:
                        raise Compacted(self.name, next_revision, response.compact_revision)
                    if response.canceled:
                        break  # etcd ended this watch (e.g. a new leader): open it again
                    if response.events:
                        for ev in response.events:
                            yield _event(ev)
                        next_revision = response.events[-1].kv.mod_revision + 1
                    elif not response.created:  # a progress report: synced up to its revision
                        next_revision = max(next_revision, response.header.revision + 1)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed and call.cancelled() and task is not None and not task.cancelling():
                    return  # close() cancelled the stream, not someone this task
                raise
            except grpc.aio.AioRpcError as exc:
                if self._closed:
                    return
                error = self._error(exc, endpoint, timeout)
                if not established or not isinstance(error, StoreUnavailable):
                    raise error from exc
            except TimeoutError:
                if not established:
                    raise StoreUnavailable(
                        f"{self._where(endpoint)} did not open a watch within {timeout:g} s: "
                        "check the etcd members, or list more endpoints"
                    ) from None
            except StoreUnavailable:
                if not established:
                    raise
            finally:
                self._calls.discard(call)
                call.cancel()
            # the stream broke after it was established: open it again from next_revision
            now = time.monotonic()
            broken_since = broken_since or now
            if now - broken_since > self.watch_retry:
                raise StoreUnavailable(
                    f"{self.name}: the watch of {prefix!r} could not reconnect for "
                    f"{self.watch_retry:g} s: check the etcd members"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, WATCH_BACKOFF[1])

    async def _check_start(
        self, call: Any, key: bytes, end: bytes, revision: int, timeout: float
    ) -> None:
        """Raises Compacted now if REVISION is gone: etcd creates the watch first and only
        then sends the compaction on the stream, which a caller would see at the first event."""
        probe = rpc.RangeRequest(key=key, range_end=end, revision=revision, limit=1, keys_only=True)
        try:
            await self._unary("kv", "Range", probe, timeout)
        except KVError as exc:
            if "compacted" not in str(exc):
                if "future revision" in str(exc):
                    return  # a watch may wait for a revision to come
                raise
            response = await asyncio.wait_for(call.read(), timeout)
            compacted = 0 if response is grpc.aio.EOF else response.compact_revision
            raise Compacted(self.name, revision, compacted) from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for call in list(self._calls):
            call.cancel()
        for endpoint in self._endpoints:
            await endpoint.close()
