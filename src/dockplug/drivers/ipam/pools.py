"""Subnet arithmetic for the cluster IPAM: parsing what dockerd sends, default pools, overlap.

dockerd sends ``Pool`` and ``SubPool`` as CIDR strings (``""`` when the driver may choose) and
addresses as plain IPs; it wants replies in CIDR (plugin-protocol.md §5). A pool's usable
addresses are those of its range (``--ip-range``, the SubPool; the whole pool without one),
minus the network and broadcast addresses of an IPv4 pool and the subnet-router anycast address
(the first) of an IPv6 one, as Docker's own allocator leaves them out.

An IPv6 pool is usually a /64: 2**64 addresses, which no allocator can walk. Ranges up to
:data:`SCAN_LIMIT` addresses are walked in full (so the last free address of a /16 is found);
larger ones get :func:`probes`: a bounded next-fit walk from the cursor, then random probes, each
claimed create-if-absent like any other candidate.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dockplug.drivers.ipam.defaults import DEFAULT_POOLS as DEFAULT_POOLS
from dockplug.errors import ConfigError, InvalidRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOCAL_SPACE = "LocalDefault"
GLOBAL_SPACE = "GlobalDefault"
SPACES = (LOCAL_SPACE, GLOBAL_SPACE)


def parse_network(text: str, field: str) -> Network:
    """A CIDR prefix from dockerd; host bits set (10.0.0.1/24) are refused, as dockerd does."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise InvalidRequest(
            f"{field} {text!r} is not a CIDR prefix ({exc}); e.g. 10.1.0.0/24"
        ) from None


def parse_address(text: str, field: str = "Address") -> Address:
    """A plain IP as dockerd sends it (a CIDR suffix is tolerated and dropped)."""
    try:
        return ipaddress.ip_address(text.strip().split("/")[0])
    except ValueError:
        raise InvalidRequest(f"{field} {text!r} is not an IP address") from None


def network_key(network: Network) -> str:
    """The store key of a pool: its CIDR with the '/' (a key separator) as '_'."""
    return f"{network.network_address}_{network.prefixlen}"


def key_network(key: str) -> Network:
    address, _, length = key.rpartition("_")
    return ipaddress.ip_network(f"{address}/{length}")


def usable(pool: Network, range_: Network) -> tuple[int, int]:
    """The first and last usable address of RANGE inside POOL, as integers."""
    first, last = int(range_.network_address), int(range_.broadcast_address)
    if pool.version == 4 and pool.prefixlen < 31:
        first = max(first, int(pool.network_address) + 1)
        last = min(last, int(pool.broadcast_address) - 1)
    elif pool.version == 6 and pool.prefixlen < 127:
        first = max(first, int(pool.network_address) + 1)
    return first, last


def size(pool: Network, range_: Network) -> int:
    first, last = usable(pool, range_)
    return max(last - first + 1, 0)


def candidates(pool: Network, range_: Network, start: int | None = None) -> Iterator[Address]:
    """Usable addresses of RANGE, from START (an integer inside it; wrapping around) on."""
    first, last = usable(pool, range_)
    if first > last:
        return
    begin = start if start is not None and first <= start <= last else first
    factory = ipaddress.IPv4Address if pool.version == 4 else ipaddress.IPv6Address
    for value in itertools.chain(range(begin, last + 1), range(first, begin)):
        yield factory(value)


SCAN_LIMIT = 1 << 16  # ranges of at most this many addresses are walked in full
PROBES = 256  # in a larger range: candidates walked from the cursor, then as many random ones


def probes(pool: Network, range_: Network, start: int | None = None) -> Iterator[int]:
    """The candidates to try, as integers: every usable address of a range of at most
    SCAN_LIMIT (from START, wrapping around); in a larger one (an IPv6 /64) PROBES from START
    on and PROBES picked at random, so a claim never walks more than 2 * PROBES keys. The
    chance that all of them are taken is nil until such a range is nearly full."""
    first, last = usable(pool, range_)
    if first > last:
        return
    if last - first + 1 <= SCAN_LIMIT:
        yield from (int(ip) for ip in candidates(pool, range_, start))
        return
    begin = start if start is not None and first <= start <= last else first
    for i in range(PROBES):
        yield first + (begin - first + i) % (last - first + 1)
    rng = random.SystemRandom()
    for _ in range(PROBES):
        yield rng.randint(first, last)


def address_of(pool: Network, value: int) -> Address:
    return ipaddress.IPv4Address(value) if pool.version == 4 else ipaddress.IPv6Address(value)


@dataclass(frozen=True)
class DefaultPool:
    """Where pools without ``--subnet`` come from: consecutive /SIZE prefixes of BASE (as
    dockerd's ``--default-address-pool base=...,size=...``)."""

    base: Network
    size: int

    def __str__(self) -> str:
        return f"base={self.base},size={self.size}"

    def subnets(self) -> Iterator[Network]:
        return self.base.subnets(new_prefix=self.size)


def parse_default_pools(text: str) -> list[DefaultPool]:
    """``base=10.128.0.0/9,size=24 base=fd00:d0c::/48,size=64``: entries separated by spaces,
    each dockerd's ``--default-address-pool`` syntax."""
    pools: list[DefaultPool] = []
    for entry in text.split():
        fields: dict[str, str] = {}
        for part in entry.split(","):
            key, sep, value = part.partition("=")
            if not sep or key not in ("base", "size"):
                raise ConfigError(
                    f"--default-pools {entry!r}: expected base=CIDR,size=N "
                    "(e.g. base=10.128.0.0/9,size=24)"
                )
            fields[key] = value
        if set(fields) != {"base", "size"}:
            raise ConfigError(f"--default-pools {entry!r}: give both base=CIDR and size=N")
        try:
            base = ipaddress.ip_network(fields["base"], strict=True)
        except ValueError as exc:
            raise ConfigError(
                f"--default-pools {entry!r}: base is not a CIDR prefix ({exc})"
            ) from None
        try:
            prefix = int(fields["size"])
        except ValueError:
            raise ConfigError(f"--default-pools {entry!r}: size must be a prefix length") from None
        if not base.prefixlen <= prefix <= base.max_prefixlen - 2:
            raise ConfigError(
                f"--default-pools {entry!r}: size must be from {base.prefixlen} (the base's "
                f"length) to {base.max_prefixlen - 2}"
            )
        pools.append(DefaultPool(base, prefix))
    for a, b in itertools.combinations(pools, 2):
        if a.base.version == b.base.version and a.base.overlaps(b.base):
            raise ConfigError(f"--default-pools: {a.base} overlaps {b.base}")
    return pools


def overlaps(a: Network, b: Network) -> bool:
    return a.version == b.version and a.overlaps(b)


def first_free(defaults: Iterable[DefaultPool], v6: bool, taken: Iterable[Network]) -> Network:
    """The first default subnet of the right family that overlaps none of TAKEN."""
    version = 6 if v6 else 4
    used = sorted((n for n in taken if n.version == version), key=lambda n: n.network_address)
    bases = [d for d in defaults if d.base.version == version]
    if not bases:
        raise InvalidRequest(
            f"no default IPv{version} pool is configured: give --subnet, or start the plugin "
            f"with --default-pools base=CIDR,size=N"
        )
    for default in bases:
        # jump past each pool in the way instead of stepping over it one /SIZE at a time:
        # a user's fd00::/16 inside a base of fd00::/8 would be 2**48 steps of /64
        step = 1 << (default.base.max_prefixlen - default.size)
        pos, end = int(default.base.network_address), int(default.base.broadcast_address)
        factory = type(default.base)
        while pos <= end:
            candidate = factory((pos, default.size))
            blocker = next((u for u in used if candidate.overlaps(u)), None)
            if blocker is None:
                return candidate
            after = int(blocker.broadcast_address) + 1
            pos = max(pos + step, -(-after // step) * step)
    raise InvalidRequest(
        "every default pool is in use ("
        + ", ".join(str(d) for d in bases)
        + "): remove unused networks, or add a base to --default-pools"
    )
