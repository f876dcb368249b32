"""The cluster key-value store: one interface for the state that several hosts share.

The cluster IPAM and the multi-host network drivers keep their records here. dockerd gives a
plugin no cluster store of its own (``--cluster-store`` was deprecated in 20.10 and removed in
23.0), and without swarm each host runs its own ``docker network create``: so the plugins on all
hosts must agree through a store of their own. The vocabulary is etcd v3's (clientv3 and its
``concurrency`` package), because that is what the cluster implementation speaks and because it
has the right primitives for allocators that race each other:

- **revisions**: every change to the store gets the next store-wide revision, so "newer" is a
  number; a transaction's changes share one revision.
- **transactions**: compare, then apply one list of operations or the other, atomically. An
  address is allocated with ``txn([absent(key)], [Put(key, owner)])``: exactly one racer wins,
  with no read-modify-write of a shared bitmap (libnetwork's default IPAM fought over one key
  per subnet, moby#33795 ended in duplicate addresses).
- **leases**: keys that vanish when their owner stops refreshing them; host liveness and
  half-finished allocations that must not leak (contiv#1133, moby#31694).
- **watches**: every change after a revision, in order, so a peer's new VTEP or endpoint is seen
  without polling; a watch that fell too far behind raises :class:`Compacted` and its owner
  reads everything again (``range``) and watches from the revision that read returned.

Two implementations: :mod:`dockplug.state.sqlite_kv` (one host, one file, the embedded default)
and :mod:`dockplug.state.etcd_kv` (a real cluster). Keys are ``str`` (UTF-8, ordered by their
bytes), values ``bytes``. Every call has a deadline (``timeout``, default :data:`DEFAULT_TIMEOUT`)
because a legacy plugin's calls are not bounded by dockerd at all (moby#33994): a store that
hangs must turn into an error message, not into a hung ``docker run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from dockplug.errors import PluginError

DEFAULT_TIMEOUT = 5.0  # seconds: the deadline of every call unless the caller gives one


class KVError(PluginError):
    """A key-value store failure; as a :class:`PluginError` dockerd shows its message."""


class StoreUnavailable(KVError):
    """The store did not answer within the deadline or cannot be reached.

    The message names the store (its endpoints or its file) and what to do. For a write, the
    outcome is unknown: the caller re-reads before it retries.
    """


class Compacted(KVError):
    """The history a watch needs is gone: resync with ``range`` and watch again from there."""

    def __init__(self, store: str, requested: int, compact_revision: int) -> None:
        super().__init__(
            f"{store}: revision {requested} is compacted (history starts at {compact_revision}); "
            "read the keys again with range() and watch from the revision it returns + 1"
        )
        self.requested = requested
        self.compact_revision = compact_revision


class LeaseNotFound(KVError):
    """The lease expired or was revoked: its keys are gone, grant a new one and put them again."""

    def __init__(self, store: str, lease: int) -> None:
        super().__init__(
            f"{store}: lease {lease:x} is not found (it expired or was revoked); "
            "grant a new lease and put its keys again"
        )
        self.lease = lease


@dataclass(frozen=True, slots=True)
class Entry:
    """One key as the store holds it.

    ``create_revision`` is the revision that created the key (it changes only when the key is
    deleted and created again), ``mod_revision`` the revision of its last change, ``version``
    the number of changes since creation (1 after the first put). ``lease`` is the lease the key
    lives on, or None.
    """

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int | None = None


class EventKind(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch. A DELETE's entry has the key, an empty value and version 0
    (``mod_revision`` is the revision of the delete), as etcd reports it."""

    kind: EventKind
    entry: Entry
    revision: int


CompareTarget = Literal["value", "version", "create_revision", "mod_revision"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction, with etcd's rules for a missing key: its version and
    revisions are 0, and any comparison of its *value* fails (even ``!=``)."""

    key: str
    target: CompareTarget
    op: CompareOp
    operand: bytes | int


def absent(key: str) -> Compare:
    """True when KEY does not exist: the create-if-absent guard (exactly one racer wins)."""
    return Compare(key, "create_revision", "==", 0)


def present(key: str) -> Compare:
    """True when KEY exists."""
    return Compare(key, "create_revision", ">", 0)


def value_is(key: str, value: bytes) -> Compare:
    """True when KEY exists and holds VALUE."""
    return Compare(key, "value", "==", value)


def mod_revision_is(key: str, revision: int) -> Compare:
    """True when KEY was last changed at REVISION: compare-and-swap after a read."""
    return Compare(key, "mod_revision", "==", revision)


def version_is(key: str, version: int) -> Compare:
    """True when KEY has changed VERSION times since creation (0: absent)."""
    return Compare(key, "version", "==", version)


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """Deletes KEY, or every key starting with KEY when ``prefix``."""

    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Get:
    """Reads KEY, or every key starting with KEY when ``prefix``."""

    key: str
    prefix: bool = False


Op = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class OpResult:
    """What one operation of a transaction did: the entries a Get found, the number of keys a
    Delete removed (a Put reports neither)."""

    entries: tuple[Entry, ...] = ()
    deleted: int = 0


@dataclass(frozen=True, slots=True)
class TxnResult:
    """``succeeded``: whether every compare held (so the success ops ran); ``revision``: the
    store's revision after the transaction; ``results``: one per operation that ran."""

    succeeded: bool
    revision: int
    results: tuple[OpResult, ...]


@dataclass(frozen=True, slots=True)
class Health:
    """The answer of :meth:`KVStore.health`: never an exception, so a doctor can print it."""

    ok: bool
    store: str
    revision: int | None
    latency: float  # seconds the probe took
    error: str | None = None


def check_key(key: str) -> bytes:
    """The key's bytes; an empty key is refused (etcd has no such key)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"a key must be a non-empty str, not {key!r}")
    return key.encode()


def prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key starting with PREFIX (None: no upper bound), as etcd's
    ``clientv3.GetPrefixRangeEnd`` computes it."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return None


def check_ops(ops: Sequence[Op]) -> None:
    """etcd refuses a transaction that changes one key twice; so does every implementation."""
    changed: set[str] = set()
    for op in ops:
        if not isinstance(op, Put | Delete | Get):
            raise TypeError(f"not a transaction operation: {op!r}")
        if isinstance(op, Put) or not op.prefix:
            check_key(op.key)
        if isinstance(op, Put) or (isinstance(op, Delete) and not op.prefix):
            if op.key in changed:
                raise ValueError(f"key {op.key!r} is changed twice in one transaction")
            changed.add(op.key)


class Watch(AsyncIterator[Event]):
    """The events of one watch: ``async with store.watch(prefix, rev) as events:
    async for event in events: ...``. Closing it (or leaving the ``with``) ends the watch.

    Entering the ``with`` (or ``await watch.start()``) establishes the watch: "from now"
    (``start_revision=None``) then means that moment, and a compacted start revision raises
    :class:`Compacted` there. Iterating without it establishes the watch at the first event.
    """

    def __init__(self, events: AsyncGenerator[Event | None, None]) -> None:
        self._events = events  # yields None once established, then the events
        self._started = False

    async def start(self) -> Watch:
        if not self._started:
            self._started = True
            if await self._events.__anext__() is not None:
                raise RuntimeError("a watch implementation must yield None once established")
        return self

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Event:
        await self.start()
        event = await self._events.__anext__()
        if event is None:
            raise RuntimeError("a watch implementation yielded None twice")
        return event

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> Watch:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class KVStore(ABC):
    """The key-value store interface. Every method takes ``timeout`` (seconds; None: the
    store's default) and raises :class:`StoreUnavailable` when it runs out."""

    #: what messages call this store: its endpoints or its file
    name: str
    #: the default deadline of every call, in seconds
    timeout: float

    def _deadline(self, timeout: float | None) -> float:
        value = self.timeout if timeout is None else timeout
        if value <= 0:
            raise ValueError(f"timeout must be positive, not {value}")
        return value

    @abstractmethod
    async def get(self, key: str, *, timeout: float | None = None) -> Entry | None:
        """The entry of KEY, or None."""

    @abstractmethod
    async def range(self, prefix: str, *, timeout: float | None = None) -> tuple[list[Entry], int]:
        """Every entry whose key starts with PREFIX ("" is every key), ordered by key, and the
        store's revision at that read: watch from that revision + 1 to miss nothing."""

    @abstractmethod
    async def put(
        self, key: str, value: bytes, lease: int | None = None, *, timeout: float | None = None
    ) -> int:
        """Sets KEY (on LEASE, whose expiry deletes it) and returns the revision of the change.
        Raises :class:`LeaseNotFound` when the lease is gone."""

    @abstractmethod
    async def delete(self, key: str, *, timeout: float | None = None) -> bool:
        """Deletes KEY; False when there was no such key (the revision does not move then)."""

    @abstractmethod
    async def delete_prefix(self, prefix: str, *, timeout: float | None = None) -> int:
        """Deletes every key starting with PREFIX, in one revision; returns how many."""

    @abstractmethod
    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """If every compare holds, runs SUCCESS, otherwise FAILURE; atomically, in one revision."""

    @abstractmethod
    async def grant(self, ttl: int, *, timeout: float | None = None) -> int:
        """A new lease of TTL seconds (etcd may round it up to its minimum); returns its id."""

    @abstractmethod
    async def keep_alive(self, lease: int, *, timeout: float | None = None) -> int:
        """Refreshes LEASE once (its TTL starts again); returns the TTL in seconds. Raises
        :class:`LeaseNotFound` when it already expired. See :meth:`keep_lease_alive`."""

    @abstractmethod
    async def revoke(self, lease: int, *, timeout: float | None = None) -> None:
        """Ends LEASE now and deletes its keys. Raises :class:`LeaseNotFound` when it is gone."""

    @abstractmethod
    async def compact(self, revision: int, *, timeout: float | None = None) -> None:
        """Forgets the history before REVISION: a watch from an older revision then raises
        :class:`Compacted`. A revision at or before the current compaction is a no-op."""

    @abstractmethod
    async def health(self, *, timeout: float | None = None) -> Health:
        """A probe that reads the revision; never raises."""

    @abstractmethod
    async def close(self) -> None:
        """Ends open watches and frees connections and threads. The store is unusable after."""

    @abstractmethod
    def _events(
        self, prefix: str, start_revision: int | None, timeout: float
    ) -> AsyncGenerator[Event | None, None]:
        """The implementation of :meth:`watch`: yields None once the watch is established
        (it raises :class:`Compacted` before that if it must), then every event."""

    def watch(
        self, prefix: str, start_revision: int | None = None, *, timeout: float | None = None
    ) -> Watch:
        """Every change to keys starting with PREFIX, from START_REVISION on (inclusive; None:
        only changes after now), in revision order, each exactly once.

        Raises :class:`Compacted` (on the first ``__anext__`` or later, if it falls behind the
        store's history) when the history it needs is gone. TIMEOUT bounds each attempt to
        (re)connect, not the wait for the next event. Ends when the store is closed.
        """
        return Watch(self._events(prefix, start_revision, self._deadline(timeout)))

    def keep_lease_alive(self, lease: int, ttl: int) -> LeaseKeeper:
        """A running :class:`LeaseKeeper` that refreshes LEASE (of TTL seconds) until stopped."""
        return LeaseKeeper(self, lease, ttl).start()

    async def __aenter__(self) -> KVStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class LeaseKeeper:
    """Refreshes a lease every third of its TTL, as etcd's clientv3 ``KeepAlive`` does.

    A refresh that fails because the store is unreachable is retried (twice as often) until
    the lease would have expired; then, or when the store says the lease is gone, ``lost`` is
    set and the keeper stops: the owner must grant a new lease and put its keys again, because
    the peers have seen them deleted. ``async with store.keep_lease_alive(lease, ttl):``.
    """

    def __init__(self, store: KVStore, lease: int, ttl: int) -> None:
        self.store = store
        self.lease = lease
        self.ttl = ttl
        self.lost = asyncio.Event()
        self.error: BaseException | None = None  # why it was lost
        self.refreshes = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> LeaseKeeper:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"dockplug-lease-{self.lease:x}"
        )
        return self

    async def _run(self) -> None:
        interval = max(self.ttl / 3, 0.1)
        expires = time.monotonic() + self.ttl
        while True:
            try:
                # one refresh may take no longer than the time the lease has left
                left = expires - time.monotonic()
                if left <= 0:
                    raise StoreUnavailable(
                        f"{self.store.name}: lease {self.lease:x} could not be refreshed "
                        f"for {self.ttl} s, so the store has expired it"
                    )
                ttl = await self.store.keep_alive(self.lease, timeout=min(left, self.store.timeout))
            except StoreUnavailable as exc:
                if time.monotonic() >= expires:
                    self._lose(exc)
                    return
                await asyncio.sleep(min(interval / 2, max(expires - time.monotonic(), 0)))
                continue
            except KVError as exc:  # LeaseNotFound
                self._lose(exc)
                return
            self.refreshes += 1
            expires = time.monotonic() + ttl
            await asyncio.sleep(interval)

    def _lose(self, exc: BaseException) -> None:
        self.error = exc
        self.lost.set()

    async def stop(self) -> None:
        """Stops refreshing (the lease then expires by itself; revoke it to end it now)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> LeaseKeeper:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
