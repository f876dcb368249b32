"""This host's kernel side of dockplug-net networks: bridges, veths, VXLAN devices, FDB and
neighbour entries and forward rules, recorded so a restarted plugin adopts them.

One concept over some 500 lines: every change to the kernel and the record of it, and the
reconcile that compares the two after a restart, must stay together to stay consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dockplug.drivers.lifecycle import stop_tasks
from dockplug.drivers.network import firewall, links
from dockplug.drivers.network.cluster import Cluster
from dockplug.drivers.network.options import (
    DEFAULT_MTU,
    INTERNAL,
    NETWORK_OPTIONS,
    PORTMAP,
    RECORDS_FILE,
    _names,
    _random_mac,
    _veths,
)
from dockplug.drivers.network.records import (
    EndpointAd,
    EndpointRecord,
    NetworkRecord,
)
from dockplug.errors import ConfigError, InvalidOption, InvalidRequest, NotFound, PluginError
from dockplug.protocol.network import (
    CreateEndpointRequest,
    CreateNetworkRequest,
    EndpointInterface,
    EndpointRequest,
    ExternalConnectivityRequest,
    InterfaceName,
    IPAMData,
    JoinReply,
    JoinRequest,
    NetworkRequest,
    RouteType,
    StaticRoute,
)
from dockplug.state.durable import fsync_dir
from dockplug.state.kv import KVError, KVStore


class Bridges:
    """Everything the network driver knows and does; kept off the driver class itself so it
    can share a class with the IPAM driver without their attributes meeting."""

    def __init__(
        self,
        state_dir: Path,
        host: str,
        store: KVStore | None,
        prefix: str,
        vtep: str | None,
        toward: str | None,
        ttl: int,
        log: Callable[[str], None],
    ) -> None:
        self.state_dir = state_dir
        self.host = host
        self.store = store
        self.vtep = vtep
        self.toward = toward
        self.log = log
        self.path = state_dir / RECORDS_FILE
        self.nets: dict[str, NetworkRecord] = {}
        self.eps: dict[str, EndpointRecord] = {}
        self.pending: list[dict[str, str]] = []  # cluster withdrawals queued while it was away
        #: networks whose links and rules this plugin may have made: saved before it makes any,
        #: so a restart after kill -9 mid-create can remove the half-made ones, and leaves alone
        #: what another dockplug-net on this host (another state dir) made
        self.made: set[str] = set()
        self._load()
        self.lock = asyncio.Lock()
        self.cluster = (
            Cluster(store, host, prefix, ttl, self._changed, log) if store is not None else None
        )
        self._underlay: links.Underlay | None = None
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.reconciled = asyncio.Event()

    # -- records -------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except ValueError as exc:
            raise ConfigError(
                f"{self.path}: unreadable ({exc}); fix: restore it or remove it"
            ) from None
        self.nets = {k: NetworkRecord(**v) for k, v in data.get("networks", {}).items()}
        self.eps = {k: EndpointRecord(**v) for k, v in data.get("endpoints", {}).items()}
        self.pending = list(data.get("pending", []))
        self.made = set(data.get("made", self.nets))  # a file from before the journal: its nets

    def _save(self) -> None:
        """Written before dockerd hears back, so a crash right after still knows the link."""
        data = {
            "networks": {k: asdict(v) for k, v in self.nets.items()},
            "endpoints": {k: asdict(v) for k, v in self.eps.items()},
            "pending": self.pending,
            "made": sorted(self.made),
        }
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.state_dir)

    def network(self, network_id: str) -> NetworkRecord:
        net = self.nets.get(network_id)
        if net is None:
            raise NotFound(f"dockplug-net has no network {network_id[:12]}")
        return net

    def endpoint(self, network_id: str, endpoint_id: str) -> EndpointRecord:
        self.network(network_id)
        ep = self.eps.get(endpoint_id)
        if ep is None or ep.network_id != network_id:
            raise NotFound(f"dockplug-net has no endpoint {endpoint_id[:12]}")
        return ep

    async def underlay(self) -> links.Underlay:
        if self._underlay is None:
            self._underlay = await asyncio.to_thread(links.underlay, self.vtep, self.toward)
        return self._underlay

    # -- networks ------------------------------------------------------------------------------

    async def create_network(self, req: CreateNetworkRequest) -> None:
        raw = req.driver_options
        if NETWORK_OPTIONS.wants_help(raw):
            raise InvalidOption(NETWORK_OPTIONS.help_table())
        opts = NETWORK_OPTIONS.parse(raw)
        data, data6 = _pool(req.ipv4_data, 4), _pool(req.ipv6_data, 6)
        if data is None and data6 is None:
            raise InvalidRequest(
                "dockplug-net needs a pool: IPv4Data and IPv6Data are both empty (was the "
                "network created with --ipv4=false and without --ipv6?)"
            )
        internal = bool(req.option(INTERNAL, False))
        name = opts.get("dockplug.network")
        mtu = opts.get("mtu") or opts.get("com.docker.network.driver.mtu")
        bridge, vxlan = _names(req.network_id)
        async with self.lock:
            if req.network_id in self.nets:
                return  # dockerd retrying after a timeout: the network is there
            record = NetworkRecord(
                network_id=req.network_id,
                bridge=bridge,
                subnet=data.pool if data else None,
                gateway=data.gateway if data else None,
                mtu=mtu or DEFAULT_MTU,
                internal=internal,
                masquerade=bool(opts["masquerade"]),
                options=raw,
                subnet6=data6.pool if data6 else None,
                gateway6=data6.gateway if data6 else None,
            )
            joined = False
            try:
                if name is not None:
                    if self.cluster is None:
                        raise InvalidOption(
                            f"-o dockplug.network={name} needs the cluster store: serve with "
                            "--etcd http(s)://HOST:PORT on every host"
                        )
                    under = await self.underlay()
                    record.mtu = mtu or under.mtu - links.VXLAN_OVERHEAD
                    if record.mtu > under.mtu - links.VXLAN_OVERHEAD:
                        raise InvalidOption(
                            f"-o mtu={record.mtu}: a VXLAN network over {under.name} (MTU "
                            f"{under.mtu}) carries at most {under.mtu - links.VXLAN_OVERHEAD}"
                        )
                    spec = await self.cluster.join(
                        name, record.subnet or "", record.gateway, record.mtu, opts.get("vni"),
                        req.network_id, record.subnet6, record.gateway6,
                    )  # fmt: skip
                    joined = True
                    record.cluster, record.vni, record.vxlan = name, spec.vni, vxlan
                self.made.add(req.network_id)
                self._save()
                await asyncio.to_thread(self._build_network, record)
                self.nets[req.network_id] = record
                self._save()
            except BaseException:
                await asyncio.to_thread(self._teardown_network, record)
                self.made.discard(req.network_id)
                self._save()
                if joined and self.cluster is not None and name is not None:
                    with contextlib.suppress(KVError):
                        await self.cluster.leave(name)
                raise
            if self.cluster is not None and record.cluster and record.vxlan:
                await self.cluster.set_vtep(record.cluster, (await self.underlay()).address)
                self._changed({record.cluster})
        self.log(
            f"network {req.network_id[:12]}: bridge {bridge} "
            + " ".join(filter(None, (record.subnet, record.subnet6)))
            + (f", cluster {name} VNI {record.vni}" if name else "")
            + (", internal" if internal else "")
        )

    def _build_network(self, record: NetworkRecord) -> None:
        links.ensure_bridge(
            record.bridge, record.network_id, (record.gateway, record.gateway6), record.mtu
        )
        if record.vxlan and record.vni is not None:
            under = self._underlay
            if under is None:
                raise PluginError(f"{record.vxlan}: no VTEP address (see --vtep)")
            links.ensure_vxlan(
                record.vxlan, record.network_id, record.vni, under.address, under.index,
                record.mtu, record.bridge,
            )  # fmt: skip
        firewall.install(
            record.network_id, record.bridge, record.subnet, record.internal, record.masquerade,
            record.subnet6,
        )  # fmt: skip

    def _teardown_network(self, record: NetworkRecord) -> None:
        if record.vxlan:
            links.delete(record.vxlan)
        links.delete(record.bridge)
        firewall.remove(record.network_id)

    async def delete_network(self, req: NetworkRequest) -> None:
        async with self.lock:
            record = self.network(req.network_id)
            for ep in [e for e in self.eps.values() if e.network_id == req.network_id]:
                await asyncio.to_thread(links.delete, ep.veth)
                await self._withdraw(record, ep)
                del self.eps[ep.endpoint_id]
            await asyncio.to_thread(self._teardown_network, record)
            del self.nets[req.network_id]
            self.made.discard(req.network_id)
            if record.cluster and self.cluster is not None:
                try:
                    await self.cluster.leave(record.cluster)
                except KVError as exc:
                    self.pending.append({"op": "leave", "network": record.cluster})
                    self.log(f"cluster network {record.cluster}: leave queued ({exc})")
            self._save()
        self.log(f"network {req.network_id[:12]}: removed")

    # -- endpoints -----------------------------------------------------------------------------

    async def create_endpoint(self, req: CreateEndpointRequest) -> EndpointInterface | None:
        iface = req.interface or EndpointInterface()
        async with self.lock:
            record = self.network(req.network_id)
            if req.endpoint_id in self.eps:
                return None
            if iface.address_ipv6 and not record.subnet6:
                raise InvalidRequest(
                    f"dockplug-net: network {req.network_id[:12]} has no IPv6 subnet, but "
                    f"dockerd sent the IPv6 address {iface.address_ipv6}; fix: create the "
                    "network with --ipv6 --subnet PREFIX"
                )
            mac = iface.mac_address or _random_mac()
            veth, peer = _veths(req.endpoint_id)
            ep = EndpointRecord(
                req.network_id, req.endpoint_id, veth, peer, iface.address, mac.lower(),
                address6=iface.address_ipv6,
            )  # fmt: skip
            if record.cluster and self.cluster is not None:
                for ip in ep.ips():
                    try:
                        await self.cluster.publish(
                            record.cluster, EndpointAd(self.host, req.endpoint_id, ip, ep.mac)
                        )
                    except BaseException:
                        await self._withdraw(record, ep)  # the address published before
                        raise
            try:
                await asyncio.to_thread(
                    links.add_veth, veth, peer, record.network_id, record.bridge, record.mtu, mac
                )
                self.eps[req.endpoint_id] = ep
                self._save()
            except BaseException:
                self.eps.pop(req.endpoint_id, None)
                await self._withdraw(record, ep)
                raise
        if iface.mac_address:
            return None
        return EndpointInterface(mac_address=mac)

    async def _withdraw(self, record: NetworkRecord, ep: EndpointRecord) -> None:
        if not (record.cluster and self.cluster is not None):
            return
        for ip in ep.ips():
            try:
                await self.cluster.withdraw(record.cluster, ip, ep.endpoint_id)
            except KVError as exc:
                item = {
                    "op": "withdraw",
                    "network": record.cluster,
                    "ip": ip,
                    "endpoint": ep.endpoint_id,
                }
                self.pending.append(item)
                self.log(f"cluster network {record.cluster}: withdrawal of {ip} queued ({exc})")

    async def join(self, req: JoinRequest) -> JoinReply:
        record = self.network(req.network_id)
        ep = self.endpoint(req.network_id, req.endpoint_id)
        if await asyncio.to_thread(links.get, ep.peer) is None:
            raise PluginError(
                f"{ep.peer} is gone (moved into a sandbox and not back); recreate the endpoint"
            )
        routes = [
            StaticRoute(
                destination=dest,
                route_type=RouteType.NEXT_HOP if hop else RouteType.CONNECTED,
                next_hop=hop,
            )
            for dest, hop in NETWORK_OPTIONS.parse(record.options).get("routes") or []
        ]
        gateway = gateway6 = None
        if not record.internal:  # an internal network gets no default route, in either family
            if record.gateway:
                gateway = str(ipaddress.ip_interface(record.gateway).ip)
            if record.gateway6:
                gateway6 = str(ipaddress.ip_interface(record.gateway6).ip)
        async with self.lock:
            ep.joined = True
            self._save()
        return JoinReply(
            interface_name=InterfaceName(src_name=ep.peer, dst_prefix="eth"),
            gateway=gateway,
            gateway_ipv6=gateway6,
            static_routes=routes or None,
            disable_gateway_service=record.internal,
        )

    async def leave(self, req: EndpointRequest) -> None:
        ep = self.endpoint(req.network_id, req.endpoint_id)
        async with self.lock:
            ep.joined = False
            self._save()

    async def delete_endpoint(self, req: EndpointRequest) -> None:
        async with self.lock:
            record = self.network(req.network_id)
            ep = self.eps.get(req.endpoint_id)
            if ep is None:
                return  # a rollback of a CreateEndpoint that never got here
            await asyncio.to_thread(links.delete, ep.veth)  # takes the peer with it
            await self._withdraw(record, ep)
            del self.eps[req.endpoint_id]
            self._save()

    def oper_info(self, req: EndpointRequest) -> dict[str, Any]:
        record = self.network(req.network_id)
        ep = self.endpoint(req.network_id, req.endpoint_id)
        info: dict[str, Any] = {"bridge": record.bridge, "host_interface": ep.veth}
        if record.cluster:
            info.update(cluster=record.cluster, vni=record.vni, vxlan=record.vxlan)
        return info

    def program(self, req: ExternalConnectivityRequest) -> None:
        """dockerd sends the container's port bindings here (``docker run -p``). This driver
        does not publish ports: refused with the reason rather than silently unpublished."""
        self.endpoint(req.network_id, req.endpoint_id)
        if req.option(PORTMAP):
            raise PluginError(
                "dockplug-net does not publish ports (docker run -p): reach the container at "
                "its address on the network, or connect it to a bridge network for -p as well"
            )

    # -- the kernel's FDB and neighbour entries -------------------------------------------------

    def _changed(self, names: set[str]) -> None:
        """The cluster view changed for NAMES: reprogram those of our networks (batched)."""
        mine = {n.cluster for n in self.nets.values() if n.cluster}
        if names & mine:
            self._dirty |= names & mine
            self._wake.set()

    async def _program_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for name in dirty:
                try:
                    await self.program_peers(name)
                except Exception as exc:
                    self.log(f"cluster network {name}: programming peers failed: {exc}")

    async def program_peers(self, name: str) -> tuple[int, int]:
        """Makes the VXLAN device's FDB and neighbour tables what the cluster view says:
        adds what is missing, removes what is no longer there. Returns (added, removed)."""
        if self.cluster is None:
            return 0, 0
        wanted = self.cluster.wanted(name)
        records = [n for n in self.nets.values() if n.cluster == name and n.vxlan]
        if wanted is None or not records:
            return 0, 0
        vxlan = records[0].vxlan
        assert vxlan is not None
        return await asyncio.to_thread(_program, vxlan, wanted.fdb, wanted.neighbours)

    # -- start-up, background, shutdown --------------------------------------------------------

    async def startup(self) -> None:
        """Adopts the kernel state of the records (a restart after kill -9 or an upgrade) and
        removes links and rules of ours that no record explains; then follows the cluster."""
        if self.cluster is not None and any(n.cluster for n in self.nets.values()):
            with contextlib.suppress(Exception):
                await self.underlay()
        # under the lock: dockerd may create a network the moment the socket answers, and a
        # sweep that listed links before that network's record was saved would remove them
        async with self.lock:
            await asyncio.to_thread(self._reconcile_kernel)
        if self.cluster is not None:
            for record in self.nets.values():
                if record.cluster and record.vxlan:
                    await self.cluster.set_vtep(record.cluster, (await self.underlay()).address)
            self.cluster.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._program_loop(), name="dockplug-net-fdb"))
        self._tasks.append(loop.create_task(self._maintain(), name="dockplug-net-maintain"))
        self.reconciled.set()

    def _reconcile_kernel(self) -> None:
        wanted_links: set[str] = set()
        for record in self.nets.values():
            wanted_links.add(record.bridge)
            if record.vxlan:
                wanted_links.add(record.vxlan)
            try:
                self._build_network(record)
            except PluginError as exc:
                self.log(f"reconcile: network {record.network_id[:12]}: {exc}")
        for ep in self.eps.values():
            wanted_links |= {ep.veth, ep.peer}
            if links.get(ep.veth) is None:
                self.log(f"reconcile: endpoint {ep.endpoint_id[:12]}: {ep.veth} is gone")
        removed, others = [], 0
        for link in links.owned():
            if link.name in wanted_links:
                continue
            if link.network_id not in self.made:
                others += 1  # another dockplug-net's (its own state dir), or made by hand
                continue
            if link.role == "bridge" and any(not p.ours for p in links.ports(link.name)):
                self.log(f"reconcile: {link.name} is not ours to remove (foreign ports)")
                continue
            if links.delete(link.name):
                removed.append(link.name)
        known = {nid[:12] for nid in self.nets}
        began = {nid[:12] for nid in self.made}
        for short in (firewall.networks() - known) & began:
            firewall.remove(short)
            removed.append(f"rules of {short}")
        if self.made != set(self.nets):
            self.made = set(self.nets)
            self._save()
        self.log(
            f"reconcile: {len(self.nets)} networks, {len(self.eps)} endpoints adopted"
            + (f"; removed {', '.join(removed)}" if removed else "")
            + (f"; left {others} links of networks it never made" if others else "")
        )

    async def _maintain(self) -> None:
        """Sends queued withdrawals and leaves; re-publishes this host's endpoints the store
        lost and withdraws ads of endpoints this host no longer has."""
        while True:
            await asyncio.sleep(1.0)
            if self.cluster is None or not self.cluster.synced:
                continue
            try:
                await self._flush_pending()
                await self._repair_ads()
            except KVError as exc:
                self.log(f"cluster upkeep: {exc}")
            except Exception as exc:
                self.log(f"cluster upkeep: {type(exc).__name__}: {exc}")

    async def _flush_pending(self) -> None:
        assert self.cluster is not None
        while self.pending:
            item = self.pending[0]
            if item["op"] == "withdraw":
                await self.cluster.withdraw(item["network"], item["ip"], item["endpoint"])
            elif item["op"] == "leave" and not any(
                n.cluster == item["network"] for n in self.nets.values()
            ):
                await self.cluster.leave(item["network"])
            self.pending.pop(0)
            async with self.lock:
                self._save()

    async def _repair_ads(self) -> None:
        assert self.cluster is not None
        async with self.lock:
            mine = {
                (rec.cluster, ip): ep
                for ep in self.eps.values()
                if (rec := self.nets.get(ep.network_id)) and rec.cluster
                for ip in ep.ips()
            }
            queued = {(p["network"], p.get("ip")) for p in self.pending}
            for name, ad in await self.cluster.own_ads():
                ep = mine.get((name, ad.ip))
                if (ep is None or ep.endpoint_id != ad.endpoint_id) and (name, ad.ip) not in queued:
                    await self.cluster.withdraw(name, ad.ip, ad.endpoint_id)
                    self.log(f"cluster network {name}: stale ad of {ad.ip} withdrawn")
            have = {(name, ad.ip) for name, ad in await self.cluster.own_ads()}
            for (name, ip), ep in mine.items():
                if (name, ip) not in have and name is not None:
                    await self.cluster.publish(
                        name, EndpointAd(self.host, ep.endpoint_id, ip, ep.mac)
                    )
                    self.log(f"cluster network {name}: ad of {ip} published again")

    async def shutdown(self) -> None:
        await stop_tasks(self._tasks)
        if self.cluster is not None:
            await self.cluster.stop()

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "host": self.host,
            "networks": [
                {
                    "network_id": n.network_id[:12],
                    "bridge": n.bridge,
                    "subnet": n.subnet,
                    "subnet6": n.subnet6,
                    "cluster": n.cluster,
                    "vni": n.vni,
                    "mtu": n.mtu,
                    "internal": n.internal,
                    "masquerade": n.masquerade,
                    "endpoints": sum(1 for e in self.eps.values() if e.network_id == n.network_id),
                }
                for n in self.nets.values()
            ],
            "queued": len(self.pending),
        }
        if self.cluster is not None:
            report["cluster"] = self.cluster.summary()
            report["cluster_synced"] = self.cluster.synced
            report["cluster_watch_error"] = self.cluster.watch_error
        return report


def _pool(data: list[IPAMData] | None, version: int) -> IPAMData | None:
    """The one pool of a family dockerd sent (``[]``/null: none); several are refused, since
    one bridge carries one gateway per family."""
    pools = [d for d in data or [] if d.pool]
    if not pools:
        return None
    if len(pools) > 1:
        raise InvalidRequest(
            f"dockplug-net takes one IPv{version} subnet per network, got "
            f"{', '.join(str(d.pool) for d in pools)}; fix: give one --subnet per family"
        )
    net = ipaddress.ip_network(str(pools[0].pool), strict=False)
    if net.version != version:
        raise InvalidRequest(f"IPv{version}Data holds {net}, an IPv{net.version} pool")
    return pools[0].model_copy(update={"pool": str(net)})


def _program(
    vxlan: str, fdb: frozenset[tuple[str, str]], neigh: frozenset[tuple[str, str]]
) -> tuple[int, int]:
    have_fdb, have_neigh = links.fdb(vxlan), links.neighbours(vxlan)
    added = removed = 0
    for mac, dst in fdb - have_fdb:
        links.fdb_add(vxlan, mac, dst)
        added += 1
    for ip, mac in neigh - have_neigh:
        links.neigh_add(vxlan, ip, mac)
        added += 1
    for mac, dst in have_fdb - fdb:
        links.fdb_del(vxlan, mac, dst)
        removed += 1
    for ip, mac in have_neigh - neigh:
        links.neigh_del(vxlan, ip, mac)
        removed += 1
    return added, removed
