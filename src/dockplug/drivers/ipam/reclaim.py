"""Getting addresses back from hosts that are gone, without ever freeing a live one.

Each host keeps one key on a lease, its heartbeat (``P/hosts/<host>``); nothing else is on a
lease, because a lease expires during any etcd outage longer than its TTL and a running
container's address must survive that. A host whose heartbeat is missing is marked
(``P/gone/<host>``, with the time it was first seen missing) and only after ``--reclaim-after``
are its addresses and pool holds removed; a heartbeat that comes back clears the mark. One
collector in the cluster does this: the one that holds ``P/collector``, claimed create-if-absent
on its heartbeat's lease, so the role moves when its host goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from dockplug.drivers.ipam.allocator import Allocator
from dockplug.drivers.ipam.pools import Network
from dockplug.drivers.ipam.records import Allocation, Heartbeat, dump
from dockplug.state.kv import (
    Delete,
    Entry,
    KVError,
    KVStore,
    LeaseKeeper,
    Put,
    StoreUnavailable,
    absent,
    mod_revision_is,
    value_is,
)


class HostHeartbeat:
    """This host's heartbeat key on a lease of TTL seconds, put again whenever it was lost
    (the store was away longer than the TTL, or restarted)."""

    def __init__(self, allocator: Allocator, ttl: int, log: Callable[[str], None] = print) -> None:
        self.allocator = allocator
        self.store: KVStore = allocator.store
        self.keys = allocator.keys
        self.host = allocator.host
        self.ttl = ttl
        self.log = log
        self.lease: int | None = None
        self.keeper: LeaseKeeper | None = None
        self.value = dump(Heartbeat(self.host, os.getpid(), time.time(), self.store.name))
        self._task: asyncio.Task[None] | None = None
        self.up = asyncio.Event()

    def start(self) -> HostHeartbeat:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dockplug-net-hb")
        return self

    async def _run(self) -> None:
        pause = 0.2
        while True:
            try:
                self.lease = await self.store.grant(self.ttl)
                await self.store.put(self.keys.host(self.host), self.value, self.lease)
                await self.store.delete(self.keys.gone(self.host))
            except KVError as exc:
                self.up.clear()
                self.log(f"heartbeat: {exc}")
                await asyncio.sleep(pause)
                pause = min(pause * 2, max(self.ttl / 3, 1.0))
                continue
            pause = 0.2
            self.up.set()
            self.keeper = self.store.keep_lease_alive(self.lease, self.ttl)
            await self.keeper.lost.wait()
            self.up.clear()
            self.log(f"heartbeat lost ({self.keeper.error}); putting it again")
            await self.keeper.stop()

    async def stop(self, revoke: bool = False) -> None:
        """Stops refreshing; the lease then runs out by itself after its TTL, so a plugin that
        is restarted at once is never seen gone (REVOKE ends it now)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.keeper is not None:
            await self.keeper.stop()
        if revoke and self.lease is not None:
            with contextlib.suppress(KVError):
                await self.store.revoke(self.lease, timeout=2)


@dataclass
class Stale:
    """One record the collector (or gc) frees or would free: what, whose, why."""

    kind: str  # "address" | "pool hold"
    space: str
    pool: str
    host: str
    what: str  # the address, or the hold's count
    reason: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


async def hosts_alive(store: KVStore, allocator: Allocator) -> set[str]:
    entries, _ = await store.range(allocator.keys.hosts)
    return {e.key[len(allocator.keys.hosts) :] for e in entries}


async def collect_gone_hosts(
    allocator: Allocator, grace: float, dry_run: bool = False, now: float | None = None
) -> list[Stale]:
    """One pass of the collector: mark hosts whose heartbeat is missing, and free the records
    of those marked longer than GRACE seconds ago. Returns what was (or would be) freed."""
    store, keys = allocator.store, allocator.keys
    now = time.time() if now is None else now
    alive = await hosts_alive(store, allocator)
    entries, _ = await store.range(keys.spaces)
    gone_entries, _ = await store.range(keys.gones)
    marks = {e.key[len(keys.gones) :]: e for e in gone_entries}
    addrs: dict[str, list[tuple[str, Network, Entry, str]]] = {}
    holds: dict[str, list[tuple[str, Network]]] = {}
    for e in entries:
        parsed = keys.parse(e.key)
        if parsed is None:
            continue
        space, kind, net, rest = parsed
        if kind == "users":
            holds.setdefault(rest, []).append((space, net))
        elif kind == "addrs":
            alloc = Allocation.load(e.value)
            if alloc.kind != "gateway":
                addrs.setdefault(alloc.host, []).append((space, net, e, rest))
    freed: list[Stale] = []
    for host, old in marks.items():
        if host in alive and not dry_run:
            await store.txn([mod_revision_is(old.key, old.mod_revision)], [Delete(old.key)])
    for host in sorted(set(addrs) | set(holds)):
        if host in alive:
            continue
        found = marks.get(host)
        if found is None:
            if not dry_run:
                mark = json.dumps({"since": now}).encode()
                await store.txn([absent(keys.gone(host))], [Put(keys.gone(host), mark)])
                allocator.log(
                    f"collector: host {host} has no heartbeat; its records go after "
                    f"{grace:g} s unless it comes back"
                )
            continue
        since = float(json.loads(found.value).get("since", now))
        if now - since < grace:
            continue
        reason = f"host {host} without heartbeat for {now - since:.0f} s"
        mine = await _free_host(
            allocator, host, addrs.get(host, []), holds.get(host, []), reason, dry_run
        )
        freed += mine
        if not dry_run:
            await store.txn([value_is(found.key, found.value)], [Delete(found.key)])
            allocator.log(f"collector: reclaimed {len(mine)} record(s) of host {host}")
    return freed


async def _free_host(
    allocator: Allocator,
    host: str,
    addrs: list[tuple[str, Network, Entry, str]],
    holds: list[tuple[str, Network]],
    reason: str,
    dry_run: bool,
) -> list[Stale]:
    freed: list[Stale] = []
    for space, net, entry, ip in addrs:
        freed.append(Stale("address", space, str(net), host, ip, reason))
        if not dry_run:
            # one txn each: a record the host re-made since the read is kept
            await allocator.store.txn(
                [mod_revision_is(entry.key, entry.mod_revision)], [Delete(entry.key)]
            )
    for space, net in holds:
        freed.append(Stale("pool hold", space, str(net), host, "all", reason))
        if not dry_run:
            for _ in range(10):
                if await allocator.drop_user(space, net, host, all_of_it=True) is not None:
                    break
    return freed


class Collector:
    """Every INTERVAL seconds: hold or win the election, and if this host is the collector,
    run one pass. Store errors wait for the next round (the heartbeat reconnects)."""

    def __init__(
        self,
        allocator: Allocator,
        heartbeat: HostHeartbeat,
        grace: float,
        interval: float,
        log: Callable[[str], None] = print,
    ) -> None:
        self.allocator = allocator
        self.heartbeat = heartbeat
        self.grace = grace
        self.interval = interval
        self.log = log
        self.leader = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Collector:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dockplug-net-gc")
        return self

    async def elect(self) -> bool:
        """True if this host is (now) the collector."""
        store, keys = self.allocator.store, self.allocator.keys
        lease = self.heartbeat.lease
        if lease is None or not self.heartbeat.up.is_set():
            self.leader = False
            return False
        me = self.allocator.host.encode()
        result = await store.txn([absent(keys.collector)], [Put(keys.collector, me, lease)])
        if result.succeeded:
            self.log(f"collector: host {self.allocator.host} is the collector")
        else:
            current = await store.get(keys.collector)
            if current is not None and current.value == me and current.lease != lease:
                # ours from a lease we lost: take it over on the current one
                await store.txn(
                    [mod_revision_is(keys.collector, current.mod_revision)],
                    [Put(keys.collector, me, lease)],
                )
            result_ok = current is not None and current.value == me
            self.leader = result_ok
            return result_ok
        self.leader = True
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if await self.elect():
                    await collect_gone_hosts(self.allocator, self.grace)
            except StoreUnavailable as exc:
                self.leader = False
                self.log(f"collector: {exc}")
            except Exception as exc:  # keep collecting: one bad record must not stop it
                self.log(f"collector: {type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.leader:
            store, keys = self.allocator.store, self.allocator.keys
            with contextlib.suppress(KVError):
                await store.txn(
                    [value_is(keys.collector, self.allocator.host.encode())],
                    [Delete(keys.collector)],
                    timeout=2,
                )
