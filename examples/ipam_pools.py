"""An IPAM driver: pools carved out of a base range, addresses handed out lowest-first.

Run ``sudo python examples/ipam_pools.py [NAME]``, then
``docker network create --ipam-driver NAME --subnet 10.30.0.0/24 mynet`` (or without --subnet to
get the next free /24 of 10.200.0.0/16). State lives in memory: restart the plugin and dockerd's
networks keep addresses this driver no longer knows about.
"""

from __future__ import annotations

import ipaddress
import sys
import threading
from dataclasses import dataclass, field

import dockplug
from dockplug.protocol.ipam import RequestAddressReply

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
SPACES = ("LocalDefault", "GlobalDefault")


def _parse_address(text: str) -> Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise dockplug.InvalidRequest(f"Address {text!r}: {exc}") from exc


@dataclass
class Pool:
    network: Network
    range: Network  # SubPool, or the whole pool
    users: int = 1  # identical RequestPools share the pool (dockerd's own counting)
    taken: set[Address] = field(default_factory=set)
    gateway: Address | None = None


class PoolsDriver(dockplug.IpamDriver):
    def __init__(
        self,
        base4: str = "10.200.0.0/16",
        size4: int = 24,
        base6: str = "fd00:d0c:1::/48",
        size6: int = 64,
    ) -> None:
        self.bases = {
            4: (ipaddress.ip_network(base4), size4),
            6: (ipaddress.ip_network(base6), size6),
        }
        self.pools: dict[str, Pool] = {}
        # RequestAddress runs in worker threads: one lock keeps two containers off one IP
        self.lock = threading.Lock()

    def get_default_address_spaces(self, req):
        return SPACES

    def _overlapping(self, network: Network) -> str | None:
        return next((i for i, p in self.pools.items() if p.network.overlaps(network)), None)

    def request_pool(self, req):
        if req.address_space not in SPACES:
            raise dockplug.InvalidRequest(
                f"unknown AddressSpace {req.address_space!r} (have {', '.join(SPACES)})"
            )
        with self.lock:
            if req.pool:
                network = self._parse(req.pool, "Pool")
                if network.version != (6 if req.v6 else 4):
                    raise dockplug.InvalidRequest(f"Pool {network} does not match V6={req.v6}")
                pool_id = f"{req.address_space}/{network}"
                held = self.pools.get(pool_id)
                if held is not None and str(held.range) == (req.sub_pool or str(network)):
                    held.users += 1
                    return pool_id, str(network)
                if (other := self._overlapping(network)) is not None:
                    raise dockplug.Conflict(f"Pool {network} overlaps {other}, which is in use")
            else:
                network = self._next_free(6 if req.v6 else 4)
                pool_id = f"{req.address_space}/{network}"
            sub = self._parse(req.sub_pool, "SubPool") if req.sub_pool else network
            if not sub.subnet_of(network):  # type: ignore[arg-type]
                raise dockplug.InvalidRequest(f"SubPool {sub} is not inside Pool {network}")
            self.pools[pool_id] = Pool(network, sub)
            return pool_id, str(network)

    def _parse(self, text: str, what: str) -> Network:
        try:
            return ipaddress.ip_network(text)
        except ValueError as exc:
            raise dockplug.InvalidRequest(f"{what} {text!r}: {exc}") from exc

    def _next_free(self, version: int) -> Network:
        base, size = self.bases[version]
        for candidate in base.subnets(new_prefix=size):
            if self._overlapping(candidate) is None:
                return candidate
        raise dockplug.PluginError(f"every /{size} of {base} is in use")

    def _pool(self, pool_id: str) -> Pool:
        pool = self.pools.get(pool_id)
        if pool is None:
            raise dockplug.NotFound(f"no pool {pool_id!r}")
        return pool

    def release_pool(self, req):
        with self.lock:
            pool = self._pool(req.pool_id)
            pool.users -= 1
            if pool.users == 0:
                del self.pools[req.pool_id]

    def request_address(self, req):
        with self.lock:
            pool = self._pool(req.pool_id)
            if req.address:
                ip = _parse_address(req.address)
                if ip not in pool.network:
                    raise dockplug.InvalidRequest(f"{ip} is not in {pool.network}")
                if ip in pool.taken:
                    raise dockplug.Conflict(f"{ip} is already in use")
            else:
                ip = self._first_free(pool)
            pool.taken.add(ip)
            if req.is_gateway:
                pool.gateway = ip
            prefix = pool.network.prefixlen
            return RequestAddressReply(address=f"{ip}/{prefix}")

    def _first_free(self, pool: Pool) -> Address:
        hosts = pool.range.hosts() if pool.range.num_addresses > 2 else iter(pool.range)
        for ip in hosts:
            if ip not in pool.taken and ip != pool.network.network_address:
                return ip
        raise dockplug.PluginError(f"no free address left in {pool.range}")

    def release_address(self, req):
        with self.lock:
            pool = self._pool(req.pool_id)
            ip = _parse_address(req.address)
            if ip not in pool.taken:
                raise dockplug.NotFound(f"{ip} is not allocated in {req.pool_id}")
            pool.taken.discard(ip)
            if pool.gateway == ip:
                pool.gateway = None


if __name__ == "__main__":
    dockplug.run(PoolsDriver(), name=sys.argv[1] if len(sys.argv) > 1 else "pools")
