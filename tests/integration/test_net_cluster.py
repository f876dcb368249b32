"""dockplug-net across three Docker hosts on real etcd: the duplicate-address bugs of the field.

Three hosts (network namespaces on one switch, a dockerd and a ``dockplug serve net`` each, see
:mod:`dockplug.testing.hosts`) create the same macvlan network on their uplinks, the classic
case where Docker's own IPAM hands every host the same addresses. The tests run in order on one
cluster: concurrent creates and runs, ``kill -9`` of a plugin mid-burst, etcd stopped, and a
host removed for good (last, since it takes h3 away).
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dockplug.testing.etcd import find_etcd
from dockplug.testing.hosts import Cluster, Host, cluster_or_skip, unavailable_reason
from dockplug.testing.servers import wait_until

pytestmark = [pytest.mark.dockerd, pytest.mark.root, pytest.mark.etcd]

GRACE = 8.0  # --reclaim-after of every host's plugin
TTL = 2  # --heartbeat-ttl
NET = "m77"
SUBNET = "10.77.0.0/24"
GATEWAY = "10.77.0.1"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with cluster_or_skip(3) as c:
        start_plugins(c)
        yield c


def start_plugins(c: Cluster) -> None:
    c.serve_net("--reclaim-after", f"{GRACE:g}s", "--heartbeat-ttl", str(TTL))


def allocated(h: Host, pool: str = SUBNET) -> dict[str, int]:
    for p in h.net_status()["pools"]:
        if p["pool"] == pool:
            return dict(p["allocated"])
    return {}


def run(h: Host, *args: str, check: bool = True) -> Any:
    return h.run(*args, network=NET, check=check)


def addresses(h: Host) -> dict[str, str]:
    return h.addresses(NET)


def every_address(c: Cluster) -> list[str]:
    return [ip for h in c.hosts if h.dockerd is not None for ip in addresses(h).values()]


def no_leak(c: Cluster) -> bool:
    """Allocated in the store == held by running containers, host by host."""
    counts = allocated(c.hosts[0])
    return all(counts.get(h.name, 0) == len(addresses(h)) for h in c.hosts if h.dockerd)


def test_three_hosts_share_one_network_with_unique_addresses_and_one_gateway(
    cluster: Cluster,
) -> None:
    hosts = cluster.hosts
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        list(pool.map(lambda h: h.docker(
            "network", "create", "-d", "macvlan", "-o", f"parent={h.iface}",
            "--subnet", SUBNET, "--ipam-driver", "dockplug-net", NET), hosts))  # fmt: skip
        list(pool.map(lambda i: run(hosts[i % 3]), range(12)))
    got = every_address(cluster)
    assert len(got) == 12 and len(set(got)) == 12, got
    assert GATEWAY not in got
    # one pool, one gateway, for every host
    pool_info = next(p for p in hosts[1].net_status()["pools"] if p["pool"] == SUBNET)
    assert pool_info["gateway"] == GATEWAY and sorted(pool_info["users"]) == ["h1", "h2", "h3"]
    # the shared L2 works: a container on h1 reaches one on h2
    h1_name, _ = next(iter(addresses(hosts[0]).items()))
    h2_ip = next(iter(addresses(hosts[1]).values()))
    hosts[0].docker("exec", h1_name, "ping", "-c", "1", "-W", "3", h2_ip)
    # a different pool that overlaps it is refused, naming the hosts that hold it
    refused = hosts[2].docker("network", "create", "--ipam-driver", "dockplug-net",
                              "--subnet", "10.77.0.0/16", "wide", check=False)  # fmt: skip
    assert refused.returncode != 0
    assert "overlaps pool 10.77.0.0/24" in refused.stderr and "h1, h2, h3" in refused.stderr
    # pools without --subnet are distinct across the cluster
    subnets = []
    for i, h in enumerate(hosts):
        h.docker("network", "create", "--ipam-driver", "dockplug-net", f"auto{i}")
        subnets.append(ipaddress.ip_network(h.docker(
            "network", "inspect", f"auto{i}", "--format", "{{(index .IPAM.Config 0).Subnet}}"
        ).stdout.strip()))  # fmt: skip
    assert len(set(subnets)) == 3
    for i, h in enumerate(hosts):
        h.docker("network", "rm", f"auto{i}")
    # --ip honoured, or refused with the holder named
    taken = next(iter(addresses(hosts[1]).values()))
    clash = run(hosts[0], "--ip", taken, check=False)
    assert clash.returncode != 0 and f"address {taken} is in use (host h2" in clash.stderr
    run(hosts[0], "--ip", "10.77.0.200")
    assert "10.77.0.200" in addresses(hosts[0]).values()


def test_kill_9_of_a_plugin_mid_burst_gives_no_duplicate_and_no_leak(cluster: Cluster) -> None:
    h1 = cluster.hosts[0]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        burst = [pool.submit(run, h1, check=False) for _ in range(8)]
        time.sleep(0.6)
        h1.kill_plugin()
        time.sleep(0.5)
        h1.serve()
        results = [f.result() for f in burst]
    assert any(r.returncode == 0 for r in results), [r.stderr for r in results]
    got = every_address(cluster)
    assert len(got) == len(set(got)), got
    # what dockerd asked for but never got (the plugin died mid-call) is freed after the grace
    assert wait_until(lambda: no_leak(cluster), GRACE * 4, 0.5), (
        allocated(h1),
        {h.name: len(addresses(h)) for h in cluster.hosts},
    )


def test_etcd_stopped_fails_runs_fast_and_clearly_and_nothing_leaks(cluster: Cluster) -> None:
    h1, h2 = cluster.hosts[:2]
    before = addresses(h2)
    victim = next(iter(before))
    cluster.kill_etcd()
    try:
        started = time.monotonic()
        failed = run(h2, check=False)
        took = time.monotonic() - started
        assert failed.returncode != 0 and took < 15, (took, failed.stderr)
        assert "dockplug-net RequestAddress" in failed.stderr and "etcd at" in failed.stderr
        # running containers do not notice
        assert set(addresses(h2)) == set(before)
        some_h1 = next(iter(addresses(h1)))
        h1.docker("exec", some_h1, "ping", "-c", "1", "-W", "3", before[victim])
        # a container removed while etcd is away: its release is queued, not lost
        h2.docker("rm", "-f", victim)
        assert h2.net_status()["this_host"]["queued_releases"] >= 1
    finally:
        cluster.start_etcd()

    def runs() -> bool:
        return run(h2, check=False).returncode == 0

    assert wait_until(runs, 30, 1.0)
    assert wait_until(lambda: no_leak(cluster), GRACE * 4, 0.5), (
        allocated(h1),
        {h.name: len(addresses(h)) for h in cluster.hosts},
    )
    got = every_address(cluster)
    assert len(got) == len(set(got))


def test_a_dockerd_restart_releases_what_dockerd_releases_and_keeps_what_runs(
    cluster: Cluster,
) -> None:
    h2 = cluster.hosts[1]
    assert addresses(h2)
    run(h2, "--restart", "always")
    h2.stop_dockerd()  # stops its containers: dockerd releases their addresses
    h2.start_dockerd()  # and starts the --restart always one again, with a new request
    assert wait_until(lambda: len(addresses(h2)) == 1, 20, 0.2), addresses(h2)
    assert wait_until(lambda: allocated(h2).get("h2", 0) == 1, 10, 0.2), allocated(h2)
    time.sleep(GRACE + 2)  # several Engine API syncs past the grace period: nothing freed
    assert allocated(h2).get("h2") == 1
    run(h2)
    got = every_address(cluster)
    assert len(got) == len(set(got))
    assert no_leak(cluster)


def test_a_host_removed_for_good_gets_its_addresses_back_after_the_grace_not_before(
    cluster: Cluster,
) -> None:
    h1, _, h3 = cluster.hosts
    theirs = sorted(addresses(h3).values())
    assert theirs
    h3.kill_plugin()  # the host vanishes: no release ever reaches the store
    gone_at = time.monotonic()
    time.sleep(max(0.0, GRACE / 2 - (time.monotonic() - gone_at)))
    assert allocated(h1).get("h3") == len(theirs)  # not before the grace period
    clash = run(h1, "--ip", theirs[0], check=False)
    assert clash.returncode != 0 and "in use (host h3" in clash.stderr
    assert wait_until(lambda: "h3" not in allocated(h1), GRACE * 4, 0.5)
    assert time.monotonic() - gone_at >= GRACE
    run(h1, "--ip", theirs[0])
    pool_info = next(p for p in h1.net_status()["pools"] if p["pool"] == SUBNET)
    assert "h3" not in pool_info["users"] and pool_info["gateway"] == GATEWAY
    # h3 comes back: its plugin says which addresses its containers use without holding them
    h3.serve()
    assert wait_until(
        lambda: "not allocated to this host" in h3.log_tail("plugin.log", 200), GRACE, 0.5
    )


@pytest.fixture(scope="module")
def cluster35() -> Iterator[Cluster]:
    """Two hosts on etcd 3.5 (no v2 API at all; trixie's etcd-server, unpacked)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    etcd, why = find_etcd("3.5")
    if etcd is None:
        pytest.skip(why)
    with Cluster(2, etcd_binary=etcd) as c:
        start_plugins(c)
        yield c


def test_on_etcd_35_hosts_share_a_pool_and_ride_out_an_etcd_restart(cluster35: Cluster) -> None:
    hosts = cluster35.hosts
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda h: h.docker(
            "network", "create", "-d", "macvlan", "-o", f"parent={h.iface}",
            "--subnet", SUBNET, "--ipam-driver", "dockplug-net", NET), hosts))  # fmt: skip
        list(pool.map(lambda i: run(hosts[i % 2]), range(6)))
    got = every_address(cluster35)
    assert len(got) == 6 and len(set(got)) == 6 and GATEWAY not in got
    cluster35.kill_etcd()
    try:
        failed = run(hosts[0], check=False)
        assert failed.returncode != 0 and "etcd at" in failed.stderr
    finally:
        cluster35.start_etcd()
    assert wait_until(lambda: run(hosts[1], check=False).returncode == 0, 30, 1.0)
    got = every_address(cluster35)
    assert len(got) == len(set(got))
    assert wait_until(lambda: no_leak(cluster35), GRACE * 4, 0.5)
