"""The cluster IPAM's claims, on SQLite and on real etcd 3.4 and 3.5.

Each "host" is an Allocator with its own store client, as each host's plugin has; what one
host claims the others must see. The properties: one shared pool (and one gateway) per subnet
and range, overlapping pools refused with the owner named, distinct default pools, unique
addresses under concurrent requests from every host, releases that free only what the host
holds, and reclaim of gone hosts and unheld addresses only after the grace period.
"""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dockplug.drivers.ipam.allocator import Allocator
from dockplug.drivers.ipam.engine_sync import Held, unheld
from dockplug.drivers.ipam.pools import PROBES, first_free, parse_default_pools, probes
from dockplug.drivers.ipam.reclaim import collect_gone_hosts
from dockplug.drivers.ipam.records import Keys
from dockplug.errors import ConfigError, Conflict, InvalidRequest, NotFound
from dockplug.state.etcd_kv import EtcdKV
from dockplug.state.kv import KVStore
from dockplug.state.sqlite_kv import SqliteKV
from dockplug.testing.etcd import EtcdServer

T = TypeVar("T")
GW = True
DEFAULTS = "base=10.128.0.0/16,size=24 base=fd00:d0c::/48,size=64"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("etcd", id="etcd-3.4", marks=pytest.mark.etcd),
    pytest.param("etcd35", id="etcd-3.5", marks=pytest.mark.etcd),
]


@pytest.fixture(params=BACKENDS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], KVStore]]:
    """A new client of one store (one per host), under a key prefix of this test's own."""
    if request.param == "sqlite":
        yield lambda: SqliteKV(tmp_path / "net.db", durable=False)
    else:
        server: EtcdServer = request.getfixturevalue(request.param)
        yield lambda: EtcdKV(server.endpoint)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


class Hosts:
    """N allocators named h1..hN on N clients of one store."""

    def __init__(self, open_store: Callable[[], KVStore], n: int) -> None:
        keys = Keys(f"/test-{uuid.uuid4().hex[:8]}")
        self.logs: list[str] = []
        self.hosts = [
            Allocator(open_store(), f"h{i + 1}", parse_default_pools(DEFAULTS), keys,
                      self.logs.append)
            for i in range(n)
        ]  # fmt: skip

    def __getitem__(self, i: int) -> Allocator:
        return self.hosts[i]

    async def close(self) -> None:
        for h in self.hosts:
            await h.store.close()


def with_hosts(n: int) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., None]]:
    def decorate(body: Callable[..., Awaitable[None]]) -> Callable[..., None]:
        def test(open_store: Callable[[], KVStore]) -> None:
            async def main() -> None:
                hosts = Hosts(open_store, n)
                try:
                    await body(hosts)
                finally:
                    await hosts.close()

            asyncio.run(main())

        test.__name__ = body.__name__
        test.__doc__ = body.__doc__
        return test

    return decorate


def ip(iface: Any) -> str:
    return str(iface.ip)


@with_hosts(3)
async def test_the_same_pool_on_every_host_is_one_pool_with_one_gateway(h: Hosts) -> None:
    ids = [await h[i].request_pool("LocalDefault", "10.60.0.0/24", "", False, False) for i in
           range(3)]  # fmt: skip
    assert len({pid for pid, _ in ids}) == 1
    gateways = await asyncio.gather(
        *(h[i].request_address(ids[0][0], "", GW, None) for i in range(3))
    )
    assert {str(g) for g in gateways} == {"10.60.0.1/24"}
    # a container never gets the gateway, on any host
    got = [await h[i % 3].request_address(ids[0][0], "", False, None) for i in range(6)]
    assert "10.60.0.1" not in {ip(g) for g in got}
    assert len({ip(g) for g in got}) == 6


@with_hosts(3)
async def test_concurrent_requests_from_three_hosts_never_share_an_address(h: Hosts) -> None:
    pid, _ = await h[0].request_pool("LocalDefault", "10.61.0.0/25", "", False, False)
    for i in (1, 2):
        await h[i].request_pool("LocalDefault", "10.61.0.0/25", "", False, False)
    await h[1].request_address(pid, "", GW, None)

    async def burst(a: Allocator, n: int) -> list[str]:
        return [ip(x) for x in await asyncio.gather(
            *(a.request_address(pid, "", False, None) for _ in range(n)))]  # fmt: skip

    results = await asyncio.gather(*(burst(h[i], 41) for i in range(3)))
    every = [x for r in results for x in r] + await burst(h[0], 2)
    assert len(every) == 125 and len(set(every)) == 125  # 10.61.0.2 .. .126 (the gateway is .1)
    assert "10.61.0.1" not in every
    with pytest.raises(Conflict, match=r"no free address left in pool 10\.61\.0\.0/25"):
        await h[2].request_address(pid, "", False, None)


@with_hosts(2)
async def test_an_overlapping_pool_is_refused_with_its_owner_named(h: Hosts) -> None:
    await h[0].request_pool("LocalDefault", "10.62.0.0/24", "", False, False)
    with pytest.raises(Conflict, match=r"overlaps pool 10.62.0.0/24 .* host h1"):
        await h[1].request_pool("LocalDefault", "10.62.0.0/16", "", False, False)
    with pytest.raises(Conflict, match=r"--ip-range 10.62.0.0/24 by host h1"):
        await h[1].request_pool("LocalDefault", "10.62.0.0/24", "10.62.0.128/25", False, False)
    # another address space is another namespace
    await h[1].request_pool("GlobalDefault", "10.62.0.0/16", "", False, False)


@with_hosts(3)
async def test_default_pools_are_distinct_across_hosts_even_when_asked_at_once(h: Hosts) -> None:
    got = await asyncio.gather(
        *(h[i % 3].request_pool("LocalDefault", "", "", False, False) for i in range(9))
    )
    nets = [net for _, net in got]
    assert len(set(nets)) == 9
    assert all(net.subnet_of(ipaddress.ip_network("10.128.0.0/16")) for net in nets)
    _, v6 = await h[0].request_pool("LocalDefault", "", "", True, False)
    assert str(v6) == "fd00:d0c::/64"


@with_hosts(2)
async def test_a_private_pool_is_refused_to_other_hosts(h: Hosts) -> None:
    pid, _ = await h[0].request_pool("LocalDefault", "10.63.0.0/24", "", False, True)
    with pytest.raises(Conflict, match="private to host h1"):
        await h[1].request_pool("LocalDefault", "10.63.0.0/24", "", False, False)
    with pytest.raises(Conflict, match="private to host h1"):
        await h[1].request_address(pid, "", False, None)


@with_hosts(2)
async def test_a_requested_address_is_honoured_or_refused_naming_its_holder(h: Hosts) -> None:
    pid, _ = await h[0].request_pool("LocalDefault", "10.64.0.0/24", "10.64.0.0/25", False, False)
    await h[1].request_pool("LocalDefault", "10.64.0.0/24", "10.64.0.0/25", False, False)
    gw = await h[0].request_address(pid, "10.64.0.254", GW, None)
    assert str(gw) == "10.64.0.254/24"  # --gateway outside --ip-range
    assert str(await h[1].request_address(pid, "", GW, None)) == "10.64.0.254/24"
    with pytest.raises(Conflict, match=r"already has gateway 10\.64\.0\.254"):
        await h[1].request_address(pid, "10.64.0.1", GW, None)
    aux = await h[0].request_address(pid, "10.64.0.200", False, None)  # --aux-address
    assert str(aux) == "10.64.0.200/24"
    assert ip(await h[1].request_address(pid, "10.64.0.9", False, "02:42:0a:40:00:09")) == (
        "10.64.0.9"
    )
    with pytest.raises(Conflict, match=r"10.64.0.9 is in use \(host h2"):
        await h[0].request_address(pid, "10.64.0.9", False, None)
    with pytest.raises(Conflict, match=r"10\.64\.0\.254 is the gateway"):
        await h[0].request_address(pid, "10.64.0.254", False, None)
    with pytest.raises(InvalidRequest, match="not in pool"):
        await h[0].request_address(pid, "10.65.0.1", False, None)
    with pytest.raises(NotFound, match="no pool"):
        await h[0].request_address("LocalDefault/10.99.0.0/24", "", False, None)


@with_hosts(2)
async def test_release_frees_only_what_this_host_holds(h: Hosts) -> None:
    pid, _ = await h[0].request_pool("LocalDefault", "10.66.0.0/24", "", False, False)
    await h[1].request_pool("LocalDefault", "10.66.0.0/24", "", False, False)
    await h[0].request_address(pid, "", GW, None)
    theirs = ip(await h[1].request_address(pid, "", False, None))
    await h[0].release_address(pid, theirs)  # dockerd of h1 never asked for it: kept
    with pytest.raises(Conflict, match="in use"):
        await h[0].request_address(pid, theirs, False, None)
    await h[1].release_address(pid, theirs)
    assert ip(await h[0].request_address(pid, theirs, False, None)) == theirs
    # the gateway is shared: h1's release keeps it for h2
    await h[0].release_address(pid, "10.66.0.1")
    await h[0].release_pool(pid)
    assert str(await h[1].request_address(pid, "", GW, None)) == "10.66.0.1/24"
    await h[1].release_pool(pid)  # the last holder: pool, gateway and addresses go
    with pytest.raises(NotFound):
        await h[1].request_address(pid, "", False, None)
    entries, _ = await h[0].store.range(h[0].keys.space("LocalDefault"))
    assert [e.key for e in entries if "10.66.0.0" in e.key] == []


@with_hosts(2)
async def test_a_gone_host_is_reclaimed_after_the_grace_period_not_before(h: Hosts) -> None:
    pid, _ = await h[0].request_pool("LocalDefault", "10.67.0.0/24", "", False, False)
    await h[1].request_pool("LocalDefault", "10.67.0.0/24", "", False, False)
    await h[0].request_address(pid, "", GW, None)
    gone = [ip(await h[1].request_address(pid, "", False, None)) for _ in range(3)]
    lease = await h[0].store.grant(30)
    await h[0].store.put(h[0].keys.host("h1"), b"{}", lease)  # h1 is alive, h2 has no heartbeat
    assert await collect_gone_hosts(h[0], grace=60, now=1000.0) == []  # marked only
    assert await collect_gone_hosts(h[0], grace=60, now=1059.0) == []
    dry = await collect_gone_hosts(h[0], grace=60, dry_run=True, now=1061.0)
    assert sorted(s.what for s in dry if s.kind == "address") == sorted(gone)
    assert ip(await h[0].request_address(pid, "", False, None)) not in gone  # still held
    freed = await collect_gone_hosts(h[0], grace=60, now=1061.0)
    assert {s.what for s in freed} == {*gone, "all"}
    assert ip(await h[0].request_address(pid, gone[0], False, None)) == gone[0]


@with_hosts(1)
async def test_addresses_no_container_holds_are_reclaimed_after_the_grace_period(h: Hosts) -> None:
    pid, net = await h[0].request_pool("LocalDefault", "10.68.0.0/24", "", False, False)
    await h[0].request_address(pid, "", GW, None)
    held_ip = ip(await h[0].request_address(pid, "", False, None))
    leaked = ip(await h[0].request_address(pid, "", False, None))  # CreateEndpoint failed
    held = Held(networks={net: 1}, addresses={net: {ipaddress.ip_address(held_ip)}})
    assert await unheld(h[0], held, grace=60) == []  # younger than the grace period
    stale = await unheld(h[0], held, grace=0, dry_run=True)
    assert [s.what for s in stale] == [leaked]
    assert [s.what for s in await unheld(h[0], held, grace=0)] == [leaked]
    assert ip(await h[0].request_address(pid, leaked, False, None)) == leaked
    # an Engine API that shows none of this host's pools frees nothing (wrong --docker-host?)
    assert await unheld(h[0], Held(), grace=0) == []


def test_default_pools_are_checked_with_the_fix_named() -> None:
    with pytest.raises(ConfigError, match="base=CIDR,size=N"):
        parse_default_pools("10.0.0.0/8")
    with pytest.raises(ConfigError, match="size must be from 8"):
        parse_default_pools("base=10.0.0.0/8,size=4")
    with pytest.raises(ConfigError, match="overlaps"):
        parse_default_pools("base=10.0.0.0/8,size=24 base=10.1.0.0/16,size=24")
    pools = parse_default_pools("base=10.0.0.0/8,size=24 base=fd00::/48,size=64")
    assert [str(p) for p in pools] == ["base=10.0.0.0/8,size=24", "base=fd00::/48,size=64"]


@with_hosts(2)
async def test_two_overlapping_pools_asked_at_once_are_never_both_given(h: Hosts) -> None:
    for round_ in range(6):
        wide, narrow = f"10.{90 + round_}.0.0/16", f"10.{90 + round_}.7.0/24"
        results = await asyncio.gather(
            h[0].request_pool("LocalDefault", wide, "", False, False),
            h[1].request_pool("LocalDefault", narrow, "", False, False),
            return_exceptions=True,
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1, results
        assert isinstance(lost[0], Conflict) and "overlaps" in str(lost[0])


@with_hosts(3)
async def test_an_ipv6_pool_is_shared_with_one_gateway_and_unique_addresses(h: Hosts) -> None:
    ids = [await h[i].request_pool("LocalDefault", "fd00:77::/64", "", True, False)
           for i in range(3)]  # fmt: skip
    assert {pid for pid, _ in ids} == {"LocalDefault/fd00:77::/64"}
    pid = ids[0][0]
    gateways = {str(await h[i].request_address(pid, "", GW, None)) for i in range(3)}
    assert gateways == {"fd00:77::1/64"}  # ::0, the subnet-router anycast address, is skipped
    assert str(await h[0].request_address(pid, "", False, None)) == "fd00:77::2/64"
    # three hosts at once, each from its own stripe of the /64: no two share an address
    results = await asyncio.gather(
        *(h[i % 3].request_address(pid, "", False, None) for i in range(45))
    )
    every = [ip(r) for r in results]
    assert len(set(every)) == 45 and "fd00:77::1" not in every
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("fd00:77::/64") for a in every)
    with pytest.raises(InvalidRequest, match=r"Pool 10\.1\.0\.0/24 is IPv4 but dockerd asked"):
        await h[0].request_pool("LocalDefault", "10.1.0.0/24", "", True, False)


@with_hosts(2)
async def test_a_preferred_ipv6_address_is_honoured_refused_and_released(h: Hosts) -> None:
    pid, _ = await h[0].request_pool("LocalDefault", "fd00:78::/64", "", True, False)
    await h[1].request_pool("LocalDefault", "fd00:78::/64", "", True, False)
    assert str(await h[0].request_address(pid, "fd00:78::beef", GW, None)) == "fd00:78::beef/64"
    wanted = "fd00:78::1:2:3:4"
    assert ip(await h[1].request_address(pid, wanted, False, "02:42:00:00:00:09")) == wanted
    with pytest.raises(Conflict, match=r"fd00:78::1:2:3:4 is in use \(host h2"):
        await h[0].request_address(pid, wanted, False, None)
    with pytest.raises(Conflict, match=r"fd00:78::beef is the gateway"):
        await h[0].request_address(pid, "fd00:78::beef", False, None)
    with pytest.raises(InvalidRequest, match="not in pool"):
        await h[0].request_address(pid, "fd00:79::1", False, None)
    await h[0].release_address(pid, wanted)  # not h1's: kept
    with pytest.raises(Conflict, match="in use"):
        await h[0].request_address(pid, wanted, False, None)
    await h[1].release_address(pid, wanted)
    assert ip(await h[0].request_address(pid, wanted, False, None)) == wanted
    # the records are in the store, one key per address, not in a process: a new client
    # (a restarted plugin) sees them
    key = h[0].keys.addr("LocalDefault", ipaddress.ip_network("fd00:78::/64"),
                         ipaddress.ip_address(wanted))  # fmt: skip
    entry = await h[1].store.get(key)
    assert entry is not None and b'"host":"h1"' in entry.value
    for i in (0, 1):
        await h[i].release_pool(pid)
    entries, _ = await h[0].store.range(h[0].keys.space("LocalDefault"))
    assert [e.key for e in entries if "fd00:78" in e.key] == []


@with_hosts(1)
async def test_a_64_is_probed_from_the_cursor_not_walked(h: Hosts) -> None:
    """A /64 with the next PROBES addresses after the cursor taken (by another host, say)
    still gives an address at once: the walk stops after PROBES and random probes follow."""
    pid, net = await h[0].request_pool("LocalDefault", "fd00:7a::/64", "", True, False)
    await h[0].request_address(pid, "", GW, None)
    first = await h[0].request_address(pid, "", False, None)
    assert ip(first) == "fd00:7a::2"
    for n in range(3, 3 + PROBES):
        await h[0].request_address(pid, str(ipaddress.ip_address(int(net.network_address) + n)),
                                   False, None)  # fmt: skip
    h[0]._cursors.clear()  # a restarted plugin: the cursor starts again at the first address
    got = ipaddress.ip_address(ip(await h[0].request_address(pid, "", False, None)))
    assert got in net and int(got) - int(net.network_address) > 2 + PROBES


def test_probes_walk_small_ranges_fully_and_bound_large_ones() -> None:
    small = ipaddress.ip_network("fd00::/120")
    assert sorted(probes(small, small)) == list(range(int(small[1]), int(small[-1]) + 1))
    v4 = ipaddress.ip_network("10.0.0.0/16")
    assert len(list(probes(v4, v4))) == 65534  # a /16 is still walked in full
    big = ipaddress.ip_network("fd00::/64")
    start = int(big[1]) + 5
    got = list(probes(big, big, start))
    assert len(got) == 2 * PROBES and got[:3] == [start, start + 1, start + 2]
    assert all(int(big[1]) <= v <= int(big[-1]) for v in got)
    wrap = list(probes(big, big, int(big[-1])))
    assert wrap[:2] == [int(big[-1]), int(big[1])]  # wraps around past the last address


@with_hosts(1)
async def test_default_ipv6_pools_are_64s_that_skip_pools_in_the_way(h: Hosts) -> None:
    _, a = await h[0].request_pool("LocalDefault", "", "", True, False)
    _, b = await h[0].request_pool("LocalDefault", "", "", True, False)
    assert (str(a), str(b)) == ("fd00:d0c::/64", "fd00:d0c:0:1::/64")
    await h[0].request_pool("LocalDefault", "fd00:d0c:0:100::/56", "", True, False)
    _, c = await h[0].request_pool("LocalDefault", "", "", True, False)
    assert str(c) == "fd00:d0c:0:2::/64"
    _, v4 = await h[0].request_pool("LocalDefault", "", "", False, False)
    assert v4.version == 4  # the families' defaults are apart


def test_first_free_jumps_over_a_wide_pool_instead_of_walking_it() -> None:
    defaults = parse_default_pools("base=fd00::/8,size=64")
    taken = [ipaddress.ip_network("fd00::/16"), ipaddress.ip_network("fd01::/64")]
    assert str(first_free(defaults, True, taken)) == "fd01:0:0:1::/64"  # not 2**48 steps
    with pytest.raises(InvalidRequest, match="no default IPv4 pool"):
        first_free(defaults, False, [])


@with_hosts(2)
async def test_an_ipv6_ip_range_is_walked_in_full_and_runs_out_with_the_fix(h: Hosts) -> None:
    """``--ip-range fd00:7b::100/122`` in a /64: 64 addresses, walked like an IPv4 pool, so the
    last free one is found and a full range says so."""
    pid, _ = await h[0].request_pool("LocalDefault", "fd00:7b::/64", "fd00:7b::100/122", True,
                                     False)  # fmt: skip
    await h[1].request_pool("LocalDefault", "fd00:7b::/64", "fd00:7b::100/122", True, False)
    assert str(await h[0].request_address(pid, "", GW, None)) == "fd00:7b::100/64"
    got = await asyncio.gather(*(h[i % 2].request_address(pid, "", False, None) for i in range(63)))
    addrs = {ipaddress.ip_address(ip(g)) for g in got}
    assert len(addrs) == 63 and addrs <= set(ipaddress.ip_network("fd00:7b::100/122"))
    with pytest.raises(Conflict, match=r"no free address left in pool fd00:7b::/64 \(range"):
        await h[1].request_address(pid, "", False, None)
