"""The records of the cluster IPAM and where they live in the key-value store.

Key layout (``P`` is ``/dockplug/net/v1``; ``S`` is ``P/spaces/<address space>``; a pool's CIDR
is written ``10.1.0.0_24`` because ``/`` separates keys)::

    S/pools/<cidr>            PoolRecord: one per pool in the cluster (claimed create-if-absent)
    S/index                   bumped by every new pool: the guard that two different but
                              overlapping pools are never claimed at once (overlap is a property
                              of two keys, which no single create-if-absent can check)
    S/users/<cidr>/<host>     UserRecord: how many times this host's dockerd holds the pool
    S/addrs/<cidr>/<ip>       Allocation: one per address (claimed create-if-absent)
    S/gateways/<cidr>         the pool's gateway, one for every host sharing the pool
    P/hosts/<host>            heartbeat, the only key on a lease (its expiry says "host gone")
    P/gone/<host>             when the collector first saw that host's heartbeat missing
    P/collector               the elected collector (on its heartbeat's lease)

No address is ever on a lease: an etcd blip longer than a TTL must not free the addresses of
running containers. Values are compact JSON.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from dockplug.drivers.ipam.defaults import PREFIX as PREFIX
from dockplug.drivers.ipam.pools import Address, Network, key_network, network_key


@dataclass(frozen=True)
class Keys:
    """Every key the IPAM uses, from one prefix (tests give each run its own)."""

    prefix: str = PREFIX

    def space(self, space: str) -> str:
        return f"{self.prefix}/spaces/{space}/"

    @property
    def spaces(self) -> str:
        return f"{self.prefix}/spaces/"

    def index(self, space: str) -> str:
        return f"{self.space(space)}index"

    def pools(self, space: str) -> str:
        return f"{self.space(space)}pools/"

    def pool(self, space: str, net: Network) -> str:
        return self.pools(space) + network_key(net)

    def users(self, space: str, net: Network | None = None) -> str:
        base = f"{self.space(space)}users/"
        return base if net is None else f"{base}{network_key(net)}/"

    def user(self, space: str, net: Network, host: str) -> str:
        return self.users(space, net) + host

    def addrs(self, space: str, net: Network) -> str:
        return f"{self.space(space)}addrs/{network_key(net)}/"

    def addr(self, space: str, net: Network, ip: Address) -> str:
        return self.addrs(space, net) + str(ip)

    def gateway(self, space: str, net: Network) -> str:
        return f"{self.space(space)}gateways/{network_key(net)}"

    @property
    def hosts(self) -> str:
        return f"{self.prefix}/hosts/"

    def host(self, host: str) -> str:
        return self.hosts + host

    @property
    def gones(self) -> str:
        return f"{self.prefix}/gone/"

    def gone(self, host: str) -> str:
        return self.gones + host

    @property
    def collector(self) -> str:
        return f"{self.prefix}/collector"

    def parse(self, key: str) -> tuple[str, str, Network, str] | None:
        """(space, kind, pool, rest) of a key under ``spaces/``; None for other keys."""
        if not key.startswith(self.spaces):
            return None
        parts = key[len(self.spaces) :].split("/")
        if len(parts) < 3:
            return None
        space, kind, cidr, *rest = parts
        try:
            net = key_network(cidr)
        except ValueError:
            return None
        return space, kind, net, "/".join(rest)


def dump(record: Any) -> bytes:
    return json.dumps(asdict(record), separators=(",", ":"), sort_keys=True).encode()


def _load(cls: type[Any], raw: bytes) -> Any:
    data = json.loads(raw)
    names = cls.__dataclass_fields__
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class PoolRecord:
    """A pool: its range (``--ip-range``, the whole pool without one), the host it is private
    to (``--ipam-opt private=true``; None: shared by every host asking for the same pool)."""

    pool: str
    range: str
    v6: bool
    created_by: str
    private: str | None = None
    created: float = field(default_factory=time.time)

    @classmethod
    def load(cls, raw: bytes) -> PoolRecord:
        record: PoolRecord = _load(cls, raw)
        return record


@dataclass(frozen=True)
class UserRecord:
    """One host's hold on a pool: dockerd's RequestPool count there, and since when."""

    count: int
    since: float = field(default_factory=time.time)

    @classmethod
    def load(cls, raw: bytes) -> UserRecord:
        record: UserRecord = _load(cls, raw)
        return record


@dataclass(frozen=True)
class Allocation:
    """One address: who asked (HOST), what for (``address``: a container's or an
    ``--aux-address``, which dockerd asks for alike; ``gateway``: the pool's shared gateway),
    when (wall clock, for the grace period), and the endpoint's MAC when dockerd sent one."""

    host: str
    kind: str = "address"
    at: float = field(default_factory=time.time)
    mac: str | None = None

    @classmethod
    def load(cls, raw: bytes) -> Allocation:
        record: Allocation = _load(cls, raw)
        return record


@dataclass(frozen=True)
class Heartbeat:
    host: str
    pid: int
    started: float
    store: str

    @classmethod
    def load(cls, raw: bytes) -> Heartbeat:
        record: Heartbeat = _load(cls, raw)
        return record
