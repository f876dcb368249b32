"""What the network driver remembers, and where.

dockerd never resends a network's configuration (no CreateNetwork replay for remote drivers
after a restart), so every network and endpoint is recorded on this host, in a SQLite store of
its own under ``--state-dir`` (``links.db``): single-host networks never need etcd. A cluster
network also has records in the cluster store (``P`` is the IPAM's key prefix)::

    P/overlay/nets/<name>              ClusterSpec: fixed by the first host (subnet, gateway,
                                       VNI, MTU); every later host must match it
    P/overlay/vnis/<vni>               the network NAME holding that VNI (claimed create-if-absent)
    P/overlay/members/<name>/<host>    this host's dockerd network ID: who still uses the network
                                       (the last host to remove it deletes its keys)
    P/overlay/vteps/<name>/<host>      this host's VTEP address, on the host's lease: a host that
                                       dies drops out of every peer's FDB when the lease expires
    P/overlay/eps/<name>/<ip>          EndpointAd: one per container address (host, MAC),
                                       claimed create-if-absent, so two hosts never announce one
                                       address

Endpoint ads are not on a lease, like the IPAM's addresses: an etcd blip longer than a TTL must
not cut running containers off. Peers program only ads whose host has a live VTEP key.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

R = TypeVar("R")

NET_KEY = "/net/"
EP_KEY = "/ep/"


def dump(record: Any) -> bytes:
    return json.dumps(asdict(record), separators=(",", ":"), sort_keys=True).encode()


def load(cls: type[R], data: bytes) -> R:
    raw = json.loads(data)
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass
class NetworkRecord:
    """One dockerd network on this host."""

    network_id: str
    bridge: str
    subnet: str | None  # CIDR of the IPv4 pool
    gateway: str | None  # CIDR on the bridge (None: dockerd gave none)
    mtu: int
    internal: bool = False
    masquerade: bool = False
    cluster: str | None = None  # cluster network name; None: this host only
    vni: int | None = None
    vxlan: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    subnet6: str | None = None  # CIDR of the IPv6 pool (None: no --ipv6)
    gateway6: str | None = None  # CIDR on the bridge


@dataclass
class EndpointRecord:
    network_id: str
    endpoint_id: str
    veth: str  # host side, on the bridge
    peer: str  # container side (dockerd moves it into the sandbox)
    address: str  # CIDR, "" when none
    mac: str
    joined: bool = False
    address6: str = ""  # IPv6 CIDR, "" when none

    def ips(self) -> list[str]:
        """The endpoint's plain IPs (IPv4 first): one cluster ad and neighbour entry each."""
        return [str(ipaddress.ip_interface(a).ip) for a in (self.address, self.address6) if a]


@dataclass(frozen=True)
class ClusterSpec:
    """What every host of a cluster network must agree on."""

    name: str
    subnet: str
    gateway: str | None
    vni: int
    mtu: int
    created_by: str
    created_at: float
    subnet6: str | None = None  # a spec written before IPv6 reads as IPv4 only
    gateway6: str | None = None

    def differences(self, other: ClusterSpec) -> list[str]:
        out = []
        for key in ("subnet", "gateway", "subnet6", "gateway6", "vni", "mtu"):
            mine, theirs = getattr(other, key), getattr(self, key)
            if mine != theirs:
                out.append(f"{key} {mine} here, {theirs} in the cluster")
        return out


@dataclass(frozen=True)
class EndpointAd:
    """A container address of a cluster network, as peers program it."""

    host: str
    endpoint_id: str
    ip: str
    mac: str


@dataclass(frozen=True)
class Vtep:
    host: str
    address: str


@dataclass(frozen=True)
class ClusterKeys:
    prefix: str

    @property
    def root(self) -> str:
        return f"{self.prefix}/overlay/"

    def net(self, name: str) -> str:
        return f"{self.root}nets/{name}"

    def vni(self, vni: int) -> str:
        return f"{self.root}vnis/{vni}"

    def members(self, name: str) -> str:
        return f"{self.root}members/{name}/"

    def member(self, name: str, host: str) -> str:
        return self.members(name) + host

    def vteps(self, name: str) -> str:
        return f"{self.root}vteps/{name}/"

    def vtep(self, name: str, host: str) -> str:
        return self.vteps(name) + host

    def eps(self, name: str) -> str:
        return f"{self.root}eps/{name}/"

    def ep(self, name: str, ip: str) -> str:
        return self.eps(name) + ip

    def parse(self, key: str) -> tuple[str, str, str] | None:
        """``(kind, network name, rest)`` of a key under :attr:`root`."""
        if not key.startswith(self.root):
            return None
        parts = key[len(self.root) :].split("/", 2)
        if len(parts) < 2:
            return None
        return parts[0], parts[1], parts[2] if len(parts) > 2 else ""
