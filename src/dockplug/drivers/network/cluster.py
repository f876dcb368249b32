"""Cluster networks in the shared key-value store: specs, VNI claims, VTEPs, endpoint ads, and
the watch that tells this host which FDB and neighbour entries its VXLAN devices need.

Without swarm each host runs its own ``docker network create`` and gets its own network ID
(dockerd's ``global`` data scope needs ``--cluster-store``, gone since 23.0), so hosts meet on a
name. The first host fixes the spec; a later one must match it. VNIs are claimed
create-if-absent, so two names never share one. Each host's VTEP keys sit on one lease of its
own: when a host dies its peers see the keys deleted after the TTL and drop its entries. While
the store is away nothing is removed from the kernel: the view is kept until a new read
replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from dockplug.drivers.network.records import (
    ClusterKeys,
    ClusterSpec,
    EndpointAd,
    Vtep,
    dump,
    load,
)
from dockplug.errors import Conflict
from dockplug.state.kv import (
    Compacted,
    Delete,
    EventKind,
    KVError,
    KVStore,
    LeaseKeeper,
    Put,
    StoreUnavailable,
    absent,
    value_is,
)

VNI_MIN, VNI_MAX = 4096, 2**24 - 1  # below 4096: left to hand-picked VNIs (-o vni=N)
CALL_TIMEOUT = 2.0  # seconds per store call made while dockerd waits


class ClusterUnavailable(StoreUnavailable):
    """A cluster network needs the store now and it is away."""


@dataclass(frozen=True)
class Wanted:
    """What this host's FDB and neighbour tables should hold for one network."""

    fdb: frozenset[tuple[str, str]]  # (MAC, VTEP address)
    neighbours: frozenset[tuple[str, str]]  # (IP, MAC)


class Cluster:
    """This host's part in the cluster networks."""

    def __init__(
        self,
        store: KVStore,
        host: str,
        prefix: str,
        ttl: int,
        on_change: Callable[[set[str]], None],
        log: Callable[[str], None],
    ) -> None:
        self.store = store
        self.host = host
        self.keys = ClusterKeys(prefix)
        self.ttl = ttl
        self.on_change = on_change
        self.log = log
        self.view: dict[str, bytes] = {}
        self.synced = False  # the view came from the store at least once
        self.vteps: dict[str, str] = {}  # network name -> this host's VTEP address
        self.lease: int | None = None
        self._keeper: LeaseKeeper | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lease_ready = asyncio.Event()
        self.watch_error = ""

    def _unavailable(self, what: str, exc: KVError) -> ClusterUnavailable:
        return ClusterUnavailable(
            f"{what}: the cluster store is away ({exc}); containers already running keep "
            "their connectivity, but nothing can join a network that spans hosts until it "
            "is back; fix: bring etcd back or check --etcd"
        )

    # -- specs and VNIs ------------------------------------------------------------------------

    async def join(
        self,
        name: str,
        subnet: str,
        gateway: str | None,
        mtu: int,
        vni: int | None,
        network_id: str,
        subnet6: str | None = None,
        gateway6: str | None = None,
    ) -> ClusterSpec:
        """The cluster spec of NAME: fixed now from these values if this host is the first,
        else checked against them (an error names every difference and the fix). The IPv6
        subnet and gateway are part of it: hosts must agree on both families."""
        try:
            for _ in range(20):
                entry = await self.store.get(self.keys.net(name), timeout=CALL_TIMEOUT)
                if entry is not None:
                    spec = load(ClusterSpec, entry.value)
                    mine = ClusterSpec(
                        name, subnet, gateway, vni if vni is not None else spec.vni, mtu, "", 0,
                        subnet6, gateway6,
                    )  # fmt: skip
                    if diffs := spec.differences(mine):
                        raise Conflict(
                            f"cluster network {name} was created by host {spec.created_by} "
                            f"with another spec: {'; '.join(diffs)}; fix: create it here with "
                            + (f"--subnet {spec.subnet}" if spec.subnet else "--ipv4=false")
                            + (f" --gateway {spec.gateway.split('/')[0]}" if spec.gateway else "")
                            + (f" --ipv6 --subnet {spec.subnet6}" if spec.subnet6 else "")
                            + (f" --gateway {spec.gateway6.split('/')[0]}" if spec.gateway6 else "")
                            + f" -o mtu={spec.mtu} (or another -o dockplug.network name)"
                        )
                    break
                created = await self._create(name, subnet, gateway, mtu, vni, subnet6, gateway6)
                if created is not None:
                    spec = created
                    shown = ", ".join(filter(None, (subnet, subnet6)))
                    self.log(f"cluster network {name}: created (VNI {spec.vni}, {shown})")
                    break
            else:
                raise Conflict(f"cluster network {name}: too many concurrent changes; retry")
            await self.store.put(
                self.keys.member(name, self.host), network_id.encode(), timeout=CALL_TIMEOUT
            )
        except StoreUnavailable as exc:
            raise self._unavailable(f"cluster network {name}", exc) from exc
        return spec

    async def _create(
        self,
        name: str,
        subnet: str,
        gateway: str | None,
        mtu: int,
        vni: int | None,
        subnet6: str | None = None,
        gateway6: str | None = None,
    ) -> ClusterSpec | None:
        """Claims a VNI and the spec in one transaction; None when another host won the race
        for the name (read it again)."""
        candidates = [vni] if vni is not None else self._vni_candidates(name)
        for candidate in candidates:
            spec = ClusterSpec(
                name, subnet, gateway, candidate, mtu, self.host, time.time(), subnet6, gateway6
            )
            result = await self.store.txn(
                [absent(self.keys.net(name)), absent(self.keys.vni(candidate))],
                [
                    Put(self.keys.net(name), dump(spec)),
                    Put(self.keys.vni(candidate), name.encode()),
                ],
                timeout=CALL_TIMEOUT,
            )
            if result.succeeded:
                return spec
            if await self.store.get(self.keys.net(name), timeout=CALL_TIMEOUT) is not None:
                return None
            if vni is not None:
                holder = await self.store.get(self.keys.vni(candidate), timeout=CALL_TIMEOUT)
                who = holder.value.decode() if holder else "?"
                raise Conflict(
                    f"-o vni={vni}: VNI {vni} is taken by cluster network {who}; fix: leave "
                    "-o vni out (one is claimed for you) or pick another"
                )
        raise Conflict(f"cluster network {name}: no free VNI found; remove unused networks")

    @staticmethod
    def _vni_candidates(name: str) -> list[int]:
        """Start where the name hashes to, so hosts racing for different names rarely collide."""
        span = VNI_MAX - VNI_MIN + 1
        start = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % span
        return [VNI_MIN + (start + i) % span for i in range(64)]

    async def leave(self, name: str) -> bool:
        """This host no longer uses NAME; the last host out deletes all of the network's keys.
        True when that happened."""
        await self.drop_vtep(name)
        await self.store.delete(self.keys.member(name, self.host), timeout=CALL_TIMEOUT)
        members, _ = await self.store.range(self.keys.members(name), timeout=CALL_TIMEOUT)
        if members:
            return False
        entry = await self.store.get(self.keys.net(name), timeout=CALL_TIMEOUT)
        ops: list[Put | Delete] = [
            Delete(self.keys.net(name)),
            Delete(self.keys.vteps(name), prefix=True),
            Delete(self.keys.eps(name), prefix=True),
        ]
        if entry is not None:
            spec = load(ClusterSpec, entry.value)
            ops.append(Delete(self.keys.vni(spec.vni)))
        await self.store.txn([], ops, timeout=CALL_TIMEOUT)
        self.log(f"cluster network {name}: last host left, its keys are deleted")
        return True

    # -- VTEPs on this host's lease ------------------------------------------------------------

    async def set_vtep(self, name: str, address: str) -> None:
        self.vteps[name] = address
        if self.lease is not None:
            try:
                await self.store.put(
                    self.keys.vtep(name, self.host),
                    dump(Vtep(self.host, address)),
                    self.lease,
                    timeout=CALL_TIMEOUT,
                )
            except KVError as exc:  # the keeper puts it again with the next lease
                self.log(f"vtep {name}: {exc}")

    async def drop_vtep(self, name: str) -> None:
        self.vteps.pop(name, None)
        await self.store.delete(self.keys.vtep(name, self.host), timeout=CALL_TIMEOUT)

    async def _keep_vteps(self) -> None:
        """One lease for all of this host's VTEP keys, granted again (and the keys put again)
        whenever it is lost: the store was away longer than the TTL, or restarted."""
        pause = 0.2
        while True:
            try:
                self.lease = await self.store.grant(self.ttl)
                for name, address in list(self.vteps.items()):
                    await self.store.put(
                        self.keys.vtep(name, self.host), dump(Vtep(self.host, address)), self.lease
                    )
            except KVError as exc:
                self.lease = None
                self.log(f"vtep lease: {exc}")
                await asyncio.sleep(pause)
                pause = min(pause * 2, max(self.ttl / 3, 1.0))
                continue
            pause = 0.2
            self._keeper = self.store.keep_lease_alive(self.lease, self.ttl)
            await self._keeper.lost.wait()
            self.log(f"vtep lease lost ({self._keeper.error}); putting the VTEPs again")
            await self._keeper.stop()
            self.lease = None

    # -- endpoint ads --------------------------------------------------------------------------

    async def publish(self, name: str, ad: EndpointAd) -> None:
        """Announces a container address; refuses one another host already announced (two
        hosts' IPAMs handed out the same address: use --ipam-driver dockplug-net)."""
        key = self.keys.ep(name, ad.ip)
        try:
            result = await self.store.txn([absent(key)], [Put(key, dump(ad))], timeout=CALL_TIMEOUT)
            if result.succeeded:
                return
            entry = await self.store.get(key, timeout=CALL_TIMEOUT)
        except StoreUnavailable as exc:
            raise self._unavailable(f"cluster network {name}: endpoint {ad.ip}", exc) from exc
        if entry is None:
            return await self.publish(name, ad)
        other = load(EndpointAd, entry.value)
        if other.host == ad.host and other.endpoint_id == ad.endpoint_id:
            return None
        if other.host == ad.host:  # a stale ad of this host (its endpoint is gone): replace it
            await self.store.txn(
                [value_is(key, entry.value)], [Put(key, dump(ad))], timeout=CALL_TIMEOUT
            )
            return None
        raise Conflict(
            f"cluster network {name}: address {ad.ip} is already used by a container on host "
            f"{other.host}; the hosts' IPAMs do not share the pool. fix: create the network "
            "on every host with --ipam-driver dockplug-net"
        )

    async def withdraw(self, name: str, ip: str, endpoint_id: str) -> None:
        """Deletes the ad of IP if it is still this endpoint's."""
        key = self.keys.ep(name, ip)
        entry = await self.store.get(key, timeout=CALL_TIMEOUT)
        if entry is None:
            return
        ad = load(EndpointAd, entry.value)
        if ad.host == self.host and ad.endpoint_id == endpoint_id:
            await self.store.txn([value_is(key, entry.value)], [Delete(key)], timeout=CALL_TIMEOUT)

    async def own_ads(self) -> list[tuple[str, EndpointAd]]:
        """This host's ads, from the view (for the start-up reconcile)."""
        out = []
        for key, value in self.view.items():
            parsed = self.keys.parse(key)
            if parsed and parsed[0] == "eps":
                ad = load(EndpointAd, value)
                if ad.host == self.host:
                    out.append((parsed[1], ad))
        return out

    # -- the view and what it asks of the kernel -----------------------------------------------

    def wanted(self, name: str) -> Wanted | None:
        """The peers' entries for network NAME; None until the view was read once (a plugin
        started while etcd is away must not wipe the entries running containers use)."""
        if not self.synced:
            return None
        vteps: dict[str, str] = {}
        ads: list[EndpointAd] = []
        for key, value in self.view.items():
            parsed = self.keys.parse(key)
            if parsed is None or parsed[1] != name:
                continue
            if parsed[0] == "vteps" and parsed[2] != self.host:
                vteps[parsed[2]] = load(Vtep, value).address
            elif parsed[0] == "eps":
                ads.append(load(EndpointAd, value))
        fdb, neigh = set(), set()
        for ad in ads:
            if ad.host != self.host and ad.host in vteps and ad.mac:
                fdb.add((ad.mac.lower(), vteps[ad.host]))
                neigh.add((ad.ip, ad.mac.lower()))
        return Wanted(frozenset(fdb), frozenset(neigh))

    async def read(self) -> None:
        """One read of the cluster records into the view, no watch: what ``dockplug net status``
        shows from the store itself when no plugin answers."""
        entries, _ = await self.store.range(self.keys.root)
        self.view = {e.key: e.value for e in entries}
        self.synced = True

    def summary(self) -> dict[str, dict[str, object]]:
        """Networks, hosts with their VTEP (alive: on a lease) and endpoints per host."""
        nets: dict[str, dict[str, object]] = {}
        for key, value in sorted(self.view.items()):
            parsed = self.keys.parse(key)
            if parsed is None:
                continue
            kind, name, rest = parsed
            if kind == "vnis":
                continue
            net = nets.setdefault(name, {"spec": None, "hosts": {}, "endpoints": {}})
            hosts: dict[str, dict[str, object]] = net["hosts"]  # type: ignore[assignment]
            if kind == "nets":
                net["spec"] = load(ClusterSpec, value).__dict__
            elif kind == "members":
                hosts.setdefault(rest, {}).update(member=True)
            elif kind == "vteps":
                hosts.setdefault(rest, {}).update(vtep=load(Vtep, value).address, alive=True)
            elif kind == "eps":
                ad = load(EndpointAd, value)
                eps: dict[str, list[str]] = net["endpoints"]  # type: ignore[assignment]
                eps.setdefault(ad.host, []).append(f"{ad.ip} {ad.mac}")
        for net in nets.values():
            for info in net["hosts"].values():  # type: ignore[attr-defined]
                info.setdefault("alive", False)
        return nets

    async def _follow(self) -> None:
        """Keeps the view of ``P/overlay/`` current: one read, then a watch from the revision
        after it; a watch that breaks is resumed from the last revision seen + 1 (etcd does not
        carry a watch over its restart), a compacted one starts over with a full read."""
        pause = 0.2
        revision: int | None = None
        while True:
            try:
                if revision is None:
                    entries, rev = await self.store.range(self.keys.root)
                    new = {e.key: e.value for e in entries}
                    changed = self._names(set(new) ^ set(self.view)) | self._names(
                        {k for k in new if self.view.get(k) != new[k]}
                    )
                    self.view = new
                    first = not self.synced
                    self.synced = True
                    revision = rev + 1
                    self.watch_error = ""
                    self.on_change(self._all_names() if first else changed)
                async with self.store.watch(self.keys.root, revision) as events:
                    pause = 0.2
                    async for event in events:
                        revision = event.revision + 1
                        key = event.entry.key
                        if event.kind is EventKind.PUT:
                            self.view[key] = event.entry.value
                        else:
                            self.view.pop(key, None)
                        self.on_change(self._names({key}))
            except asyncio.CancelledError:
                raise
            except Compacted:
                revision = None
            except Exception as exc:  # the store away: keep the view and the kernel as they are
                self.watch_error = str(exc)
                self.log(f"cluster watch: {exc}; retrying (kernel entries kept)")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                if isinstance(exc, KVError) and not isinstance(exc, StoreUnavailable):
                    revision = None

    def _names(self, keys: set[str]) -> set[str]:
        out = set()
        for key in keys:
            parsed = self.keys.parse(key)
            if parsed:
                out.add(parsed[1])
        return out

    def _all_names(self) -> set[str]:
        return self._names(set(self.view)) | set(self.vteps)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._keep_vteps(), name="dockplug-net-vteps"))
        self._tasks.append(loop.create_task(self._follow(), name="dockplug-net-watch"))

    async def stop(self) -> None:
        """Stops the watch and the lease refresh; the lease runs out by itself after its TTL,
        so a plugin restarted at once is never seen gone by its peers."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._keeper is not None:
            await self._keeper.stop()
