"""What this host's dockerd really holds, from its Engine API, and the leaks that follow.

With Docker's built-in network drivers (bridge, macvlan, ipvlan) an IPAM plugin never sees
CreateEndpoint, so it cannot tell an address a container holds from one dockerd asked for just
before CreateEndpoint failed (contiv#1133, calicoctl#492: those leak forever). The Engine API
can: ``GET /networks/{id}`` lists each container's address, the gateway and aux addresses. It
is asked in the background, in a worker thread with a timeout, never while answering dockerd
(dockerd may be waiting on that very call, and a plugin calling back into it deadlocks,
docker-net-dhcp#23). An address of this host is stale when it is older than the grace period
and no network of this dockerd holds it; nothing is freed when the Engine API cannot be read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any

from dockplug.drivers.ipam.allocator import Allocator
from dockplug.drivers.ipam.pools import Address, Network
from dockplug.drivers.ipam.reclaim import Stale
from dockplug.drivers.ipam.records import Allocation, UserRecord
from dockplug.errors import PluginError
from dockplug.state.kv import Delete, mod_revision_is

ENGINE_TIMEOUT = 10.0  # seconds for the whole Engine API read


@dataclass
class Held:
    """The subnets of this dockerd's networks whose IPAM is not Docker's own, and every
    address they hold (containers, gateways, aux addresses)."""

    networks: dict[Network, int] = field(default_factory=dict)  # subnet -> how many networks
    addresses: dict[Network, set[Address]] = field(default_factory=dict)


def _subnet(text: str) -> Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _ip(text: str) -> Address | None:
    try:
        return ipaddress.ip_interface(text).ip if text else None
    except ValueError:
        return None


def read_engine(docker_host: str | None, timeout: float = ENGINE_TIMEOUT) -> Held:
    """Blocking: the networks of the dockerd at DOCKER_HOST (default: DOCKER_HOST, the local
    socket). Raises PluginError when it cannot be read."""
    import docker

    from dockplug.engine_api import EngineError, docker_client

    try:
        api = docker_client(docker_host, timeout).api
    except EngineError as exc:
        raise PluginError(f"cannot reach the Docker Engine API: {exc}") from exc
    held = Held()
    try:
        for summary in api.networks():
            ipam = summary.get("IPAM") or {}
            if ipam.get("Driver") in ("default", "null", "", None):
                continue
            detail: dict[str, Any] = api.inspect_network(summary["Id"])
            subnets = []
            for config in (detail.get("IPAM") or {}).get("Config") or []:
                subnet = _subnet(config.get("Subnet", ""))
                if subnet is None:
                    continue
                subnets.append(subnet)
                held.networks[subnet] = held.networks.get(subnet, 0) + 1
                got = held.addresses.setdefault(subnet, set())
                extra = [config.get("Gateway", "")]
                extra += list((config.get("AuxiliaryAddresses") or {}).values())
                got.update(ip for ip in map(_ip, extra) if ip is not None)
            for container in (detail.get("Containers") or {}).values():
                for key in ("IPv4Address", "IPv6Address"):
                    ip = _ip(container.get(key, ""))
                    for subnet in subnets:
                        if ip is not None and ip in subnet:
                            held.addresses[subnet].add(ip)
    except (docker.errors.DockerException, OSError) as exc:
        raise PluginError(f"Engine API: reading networks failed: {exc}") from exc
    finally:
        api.close()
    return held


async def engine_held(docker_host: str | None, timeout: float = ENGINE_TIMEOUT) -> Held:
    """:func:`read_engine` in a worker thread, bounded by TIMEOUT."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(read_engine, docker_host), timeout)
    except TimeoutError:
        raise PluginError(f"Engine API did not answer within {timeout:g} s") from None


async def unheld(
    allocator: Allocator, held: Held, grace: float, dry_run: bool = False
) -> list[Stale]:
    """Free (or with DRY_RUN list) this host's addresses and pool holds that no network of its
    dockerd holds and that are older than GRACE seconds."""
    store, keys, me = allocator.store, allocator.keys, allocator.host
    entries, _ = await store.range(keys.spaces)
    now = time.time()
    mine_pools = set()
    stale: list[Stale] = []
    holds = []
    doomed = []
    for e in entries:
        parsed = keys.parse(e.key)
        if parsed is None:
            continue
        space, kind, net, rest = parsed
        if kind == "users" and rest == me:
            mine_pools.add(net)
            if net not in held.networks and now - UserRecord.load(e.value).since >= grace:
                holds.append((space, net))
        elif kind == "addrs":
            alloc = Allocation.load(e.value)
            if alloc.host != me or alloc.kind == "gateway" or now - alloc.at < grace:
                continue
            ip = ipaddress.ip_address(rest)
            if ip in held.addresses.get(net, set()):
                continue
            why = (
                "no container of this host holds it"
                if net in held.networks
                else ("no network of this host uses the pool")
            )
            stale.append(Stale("address", space, str(net), me, rest, why))
            doomed.append(e)
    owned: set[tuple[str, str]] = set()
    known: set[Network] = set()
    for e in entries:
        parsed = keys.parse(e.key)
        if parsed is not None and parsed[1] == "addrs":
            owned.add((str(parsed[2]), parsed[3]))
        elif parsed is not None and parsed[1] == "pools":
            known.add(parsed[2])
    foreign = [
        f"{ip} in {net}"
        for net, ips in held.addresses.items()
        if net in known
        for ip in ips
        if (str(net), str(ip)) not in owned
    ]
    if foreign:
        # e.g. reclaimed while this host was away longer than --reclaim-after: the address
        # may be another container's by now; the store is not changed behind the cluster
        allocator.log(
            f"engine sync: {len(foreign)} address(es) used here are not allocated to this host "
            f"in the store, e.g. {foreign[0]}: restart those containers to get addresses again"
        )
    if mine_pools and not (mine_pools & set(held.networks)):
        # this dockerd shows none of our pools: more likely the wrong --docker-host than a
        # host whose every network was deleted with its ReleasePools lost; free nothing
        allocator.log(
            f"engine sync: the Engine API shows none of this host's {len(mine_pools)} pool(s); "
            "is --docker-host this host's dockerd? nothing reclaimed"
        )
        return []
    if not dry_run:
        for e in doomed:  # one txn each: an address re-claimed since the read is kept
            await store.txn([mod_revision_is(e.key, e.mod_revision)], [Delete(e.key)])
    for space, net in holds:
        stale.append(
            Stale("pool hold", space, str(net), me, "all", "no network of this host uses it")
        )
        if not dry_run:
            await allocator.drop_user(space, net, me, all_of_it=True)
    for s in stale:
        if not dry_run:
            allocator.log(f"reclaimed {s.kind} {s.what} in {s.pool}: {s.reason}")
    return stale
