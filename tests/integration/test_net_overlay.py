"""dockplug-net as a network driver across three Docker hosts: bridges, VXLAN, real etcd.

One module-scoped :class:`~dockplug.testing.hosts.Cluster` (three network namespaces on a
switch, a dockerd each, etcd beside them). Each host's FORWARD policy is set to DROP and
``br_netfilter`` is on in its namespace, as dockerd's default ``--iptables=true`` leaves a real
host (test-environment.md), so the driver's own forward rules are what lets traffic through.
The tests run in order on that cluster; the last ones stop a host's plugin and remove the
networks everywhere.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dockplug.conformance import run as run_conformance
from dockplug.testing.hosts import Cluster, Host, cluster_or_skip
from dockplug.testing.servers import wait_until

pytestmark = [pytest.mark.dockerd, pytest.mark.root, pytest.mark.etcd]

# --heartbeat-ttl, the VTEP lease: a killed plugin must be back within it. The default (10 s):
# with 5 s, a restart on a loaded machine (3-4 s to start Python and reconcile, seen with the
# load at 8 on 2 cores) let a lease run out and the peers drop its FDB entries mid-ping
TTL = 10
NET = "ov"
SUBNET = "10.78.0.0/24"
OVERLAY = "/dockplug/net/v1/overlay/"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with cluster_or_skip(3) as c:
        for h in c.hosts:
            h.firewall_like_dockerd()
        c.serve_net("--heartbeat-ttl", str(TTL))
        yield c


def status(h: Host) -> dict[str, Any]:
    """The network driver's part of the plugin's status."""
    result: dict[str, Any] = h.net_status()["network"]
    return result


def run(h: Host, name: str, net: str = NET, *args: str, check: bool = True) -> Any:
    return h.run(*args, network=net, name=name, check=check)


def ip_of(h: Host, name: str, net: str = NET) -> str:
    return h.ip_of(name, net)


def cluster_net(
    *hosts: Host, name: str = NET, subnet: str = SUBNET, extra: tuple[str, ...] = ()
) -> None:
    for h in hosts:
        h.docker("network", "create", "-d", "dockplug-net", "--ipam-driver", "dockplug-net",
                 "--subnet", subnet, "-o", f"dockplug.network={name}", *extra, name)  # fmt: skip


def test_containers_on_three_hosts_reach_each_other_over_vxlan(cluster: Cluster) -> None:
    h1, h2, h3 = cluster.hosts
    cluster_net(h1, h2, h3)
    for i, h in enumerate(cluster.hosts, 1):
        run(h, f"c{i}")
    ips = {i: ip_of(h, f"c{i}") for i, h in enumerate(cluster.hosts, 1)}
    assert len(set(ips.values())) == 3, ips
    for a, b in ((1, 2), (1, 3), (2, 3), (3, 1)):
        src = cluster.hosts[a - 1]
        assert wait_until(lambda s=src, a=a, b=b: s.pings(f"c{a}", ips[b]), 10), (a, b)
    # one spec, one VNI, three VTEPs, three endpoint ads; nothing floods: learning off and
    # the peers are static FDB entries (with the VTEP as dst), the neighbours are permanent
    spec = status(h2)["cluster"][NET]
    assert sorted(spec["hosts"]) == ["h1", "h2", "h3"]
    assert all(info["alive"] for info in spec["hosts"].values())
    vni = spec["spec"]["vni"]
    assert spec["spec"]["mtu"] == 1450
    vx = next(n for n in status(h1)["networks"] if n["cluster"] == NET)["bridge"].replace(
        "dpb", "dpx"
    )
    details = h1.ns("ip", "-d", "link", "show", vx)
    assert f"vxlan id {vni}" in details and "nolearning" in details and "proxy" in details
    fdb = h1.ns("bridge", "fdb", "show", "dev", vx)
    assert f"dst {h2.address} self permanent" in fdb and f"dst {h3.address} self permanent" in fdb
    assert "00:00:00:00:00:00" not in fdb  # no flood entry
    assert ips[2] in h1.ns("ip", "neigh", "show", "dev", vx)
    # the MTU, lowered for the VXLAN header, on both veth ends: 1422 bytes of ICMP payload go
    # through with don't-fragment, 1423 do not (iputils ping from the container's namespace)
    pid = h1.pid_of("c1")
    assert "mtu 1450" in h1.docker("exec", "c1", "ip", "link", "show", "eth0").stdout
    endpoint = h1.docker(
        "inspect", "-f", '{{(index .NetworkSettings.Networks "ov").EndpointID}}', "c1"
    )
    veth = "dpv" + endpoint.stdout.strip()[:12]
    assert "mtu 1450" in h1.ns("ip", "link", "show", veth)
    # the bridge port forwards (no STP) when dockerd 28 checks it at Join, in the host's sysfs,
    # before its unsolicited ARP; 20.10 does not look
    bridge = vx.replace("dpx", "dpb")
    state = subprocess.run(
        h1.wrap(["cat", f"/sys/class/net/{bridge}/brif/{veth}/state"]), capture_output=True
    )
    assert state.stdout.strip() == b"3", state
    dockerd_log = h1.log_tail(lines=100_000)
    assert "Failed to open port state file" not in dockerd_log  # the host's sysfs is its own
    assert "Bridge port not forwarding" not in dockerd_log
    ping = ["nsenter", f"--net=/proc/{pid}/ns/net", "ping", "-c", "1", "-W", "2", "-M", "do"]
    ok = subprocess.run([*ping, "-s", "1422", ips[2]], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    too_big = subprocess.run([*ping, "-s", "1423", ips[2]], capture_output=True, text=True)
    assert too_big.returncode != 0


def test_a_later_host_must_match_the_spec(cluster: Cluster) -> None:
    h1, h2, _ = cluster.hosts
    res = h2.docker("network", "create", "-d", "dockplug-net", "--subnet", "10.79.0.0/24",
                    "-o", f"dockplug.network={NET}", "ov-bad", check=False)  # fmt: skip
    assert res.returncode != 0
    assert "created by host h1" in res.stderr and "subnet 10.79.0.0/24 here" in res.stderr
    assert f"--subnet {SUBNET}" in res.stderr  # the fix
    assert "ov-bad" not in h2.docker("network", "ls", "--format", "{{.Name}}").stdout
    # -o help lists the options and creates nothing
    res = h1.docker("network", "create", "-d", "dockplug-net", "-o", "help", "x", check=False)
    assert res.returncode != 0 and "dockplug.network" in res.stderr and "masquerade" in res.stderr


def test_other_networks_are_isolated_and_internal_cannot_reach_out(cluster: Cluster) -> None:
    h1, h2, _ = cluster.hosts
    c2 = ip_of(h2, "c2")
    c1 = ip_of(h1, "c1")
    # another dockplug network, on the same host and across hosts
    cluster_net(h1, h2, name="other", subnet="10.80.0.0/24")
    run(h1, "o1", "other")
    run(h2, "o2", "other")
    assert wait_until(lambda: h1.pings("o1", ip_of(h2, "o2", "other")), 10)
    assert not h1.pings("o1", c1)  # routed via the gateway to the other bridge: dropped
    assert not h1.pings("o1", c2)
    assert not h1.pings("c1", ip_of(h1, "o1", "other"))
    # a masquerading network reaches the underlay (h2's address); an internal one does not,
    # and gets no default route
    h1.docker("network", "create", "-d", "dockplug-net", "--subnet", "10.81.0.0/24",
              "-o", "masquerade=true", "out")  # fmt: skip
    h1.docker("network", "create", "-d", "dockplug-net", "--subnet", "10.82.0.0/24",
              "--internal", "inside")  # fmt: skip
    run(h1, "x1", "out")
    run(h1, "i1", "inside")
    run(h1, "i2", "inside")
    assert h1.pings("x1", h2.address)
    assert not h1.pings("i1", h2.address)
    assert "default" not in h1.docker("exec", "i1", "ip", "route").stdout
    assert h1.pings("i1", ip_of(h1, "i2", "inside"))  # within the internal network: fine
    # ports are not published, and docker run -p says so
    res = run(h1, "p1", "out", "-p", "8080:80", check=False)
    assert res.returncode != 0 and "does not publish ports" in (res.stderr + h1.docker(
        "logs", "p1", check=False).stderr)  # fmt: skip
    h1.docker("rm", "-f", "x1", "i1", "i2", "p1", "o1")
    h2.docker("rm", "-f", "o2")
    for name in ("out", "inside", "other"):
        h1.docker("network", "rm", name)
    h2.docker("network", "rm", "other")


def test_plugin_kill_9_and_restart_while_a_ping_runs(cluster: Cluster) -> None:
    h1, h2, _ = cluster.hosts
    target = ip_of(h2, "c2")
    ping = subprocess.Popen(
        ["docker", "-H", h1.docker_host, "exec", "c1", "ping", "-c", "40", "-i", "0.2",
         "-W", "1", target],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(1)
    links_before = h1.ns("ip", "-o", "link", "show")
    for h in (h1, h2):
        h.kill_plugin()
    time.sleep(0.5)
    # each host's plugin comes back on its own, at once, as on separate machines (one after
    # the other, the second one's downtime is both restarts)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda h: h.serve(), (h1, h2)))
    out, _ = ping.communicate(timeout=60)
    assert " 0% packet loss" in out, out
    # the kernel state was adopted, not rebuilt: the same links, FDB entries intact
    assert links_before.count("dpv") == h1.ns("ip", "-o", "link").count("dpv")
    assert "adopted" in h1.log_tail("plugin.log", 200)
    # and the restarted plugins serve new endpoints across hosts
    run(h2, "c2b")
    assert wait_until(lambda: h1.pings("c1", ip_of(h2, "c2b")), 10)


def test_dockerd_live_restore_restart_keeps_the_overlay(cluster: Cluster) -> None:
    """dockerd stopped and started again with live-restore: its containers keep running and
    talking the whole time (a ping from h2 loses nothing), the same processes afterwards, and
    the restarted dockerd finds their sandboxes (its netns bind mounts live in the host's mount
    namespace, which outlives it): removing one tears its endpoint down everywhere."""
    h1, h2, _ = cluster.hosts
    c1 = ip_of(h1, "c1")
    run(h1, "lr1")
    lr1, pids = ip_of(h1, "lr1"), {name: h1.pid_of(name) for name in ("c1", "lr1")}
    endpoint = h1.docker("inspect", "-f", '{{(index .NetworkSettings.Networks "ov").EndpointID}}',
                         "lr1").stdout.strip()  # fmt: skip
    assert wait_until(lambda: h2.pings("c2", lr1), 10)
    (h1.root / "daemon.json").write_text('{"live-restore": true}')
    assert h1.dockerd is not None
    h1.dockerd.send_signal(signal.SIGHUP)  # live-restore is reloadable
    assert wait_until(lambda: "Reloaded configuration" in h1.log_tail(lines=50), 10)
    ping = subprocess.Popen(
        ["docker", "-H", h2.docker_host, "exec", "c2", "ping", "-c", "40", "-i", "0.2",
         "-W", "1", c1],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(1)
    h1.stop_dockerd()
    assert h2.pings("c2", lr1, count=2)  # h1's dockerd is down, its containers still talk
    h1.start_dockerd()
    out, _ = ping.communicate(timeout=60)
    assert " 0% packet loss" in out, out
    assert {name: h1.pid_of(name) for name in pids} == pids  # restored, not restarted
    assert wait_until(lambda: h1.pings("c1", ip_of(h2, "c2"), count=2), 15)
    assert "ov" in h1.docker("network", "ls", "--format", "{{.Name}}").stdout
    # the restored sandbox is found: rm tears down the veth and the endpoint's ad in etcd
    h1.docker("rm", "-f", "lr1")
    assert f"dpv{endpoint[:12]}" not in h1.ns("ip", "-o", "link", "show")
    assert f"{OVERLAY}eps/{NET}/{lr1}" not in cluster.etcd_keys(OVERLAY)
    assert not h2.pings("c2", lr1)
    assert "netns" not in "".join(
        line for line in h1.log_tail(lines=400).splitlines() if "level=error" in line
    )


def test_etcd_away_keeps_running_containers_and_fails_new_ones_fast(cluster: Cluster) -> None:
    h1, h2, _ = cluster.hosts
    cluster.kill_etcd()
    try:
        assert h1.pings("c1", ip_of(h2, "c2"), count=3)
        started = time.monotonic()
        res = run(h1, "late", check=False)
        assert res.returncode != 0 and time.monotonic() - started < 20
        assert "etcd" in res.stderr or "store" in res.stderr, res.stderr
        # a single-host network never needs etcd
        h1.docker("network", "create", "-d", "dockplug-net", "--subnet", "10.83.0.0/24", "solo")
        run(h1, "s1", "solo")
        run(h1, "s2", "solo")
        assert h1.pings("s1", ip_of(h1, "s2", "solo"))
    finally:
        h1.docker("rm", "-f", "late", "s1", "s2", check=False)
        h1.docker("network", "rm", "solo", check=False)
        cluster.start_etcd()

    # once etcd is back (after the client's gRPC back-off), new endpoints work again
    def back() -> bool:
        h1.docker("rm", "-f", "late2", check=False)
        return run(h1, "late2", check=False).returncode == 0

    assert wait_until(back, 30, interval=1.0)
    assert wait_until(lambda: h2.pings("c2", ip_of(h1, "late2")), 15)


def test_a_dead_host_leaves_the_fdb_when_its_lease_expires(cluster: Cluster) -> None:
    h1, _, h3 = cluster.hosts
    vx = next(n for n in status(h1)["networks"] if n["cluster"] == NET)["bridge"].replace(
        "dpb", "dpx"
    )
    assert h3.address in h1.ns("bridge", "fdb", "show", "dev", vx)
    h3.kill_plugin()
    assert wait_until(
        lambda: h3.address not in h1.ns("bridge", "fdb", "show", "dev", vx),
        TTL + 10,
    )
    report = status(h1)
    assert report["cluster"][NET]["hosts"]["h3"]["alive"] is False
    # dockplug net status, asking h1's plugin: its networks, the cluster network's hosts with
    # their liveness, the endpoints per host (h3's ads stay: they are not on its lease)
    shown = subprocess.run(
        [sys.executable, "-m", "dockplug", "net", "status", "--plugin",
         str(h1.plugins / "dockplug-net.sock")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    rows = [line.split() for line in shown.stdout.splitlines()]
    mine = next(n for n in report["networks"] if n["cluster"] == NET)
    assert [mine["network_id"], mine["bridge"], SUBNET, NET, str(mine["vni"]), "1450",
            str(mine["endpoints"]), "-"] in rows  # fmt: skip
    eps = report["cluster"][NET]["endpoints"]
    assert ["ov", "h1", h1.address, "alive", "yes", str(len(eps["h1"]))] in rows
    assert ["ov", "h3", "-", "missing", "(no", "VTEP", "lease)", "yes", "1"] in rows
    c3 = ip_of(h3, "c3")
    assert any(row[:3] == ["ov", "h3", c3] for row in rows), shown.stdout
    h3.serve()  # back: its VTEP and entries return
    assert wait_until(lambda: h3.address in h1.ns("bridge", "fdb", "show", "dev", vx), 15)


def test_check_type_network_passes(cluster: Cluster) -> None:
    report = run_conformance(
        str(cluster.hosts[0].plugins / "dockplug-net.sock"), kind="network",
        opts={"subnet": "198.18.7.0/24"},
    )  # fmt: skip
    assert report.ok, report.failures()


def test_network_rm_on_every_host_leaves_nothing(cluster: Cluster) -> None:
    for h in cluster.hosts:
        running = h.docker("ps", "-aq").stdout.split()
        if running:
            h.docker("rm", "-f", *running)
        h.docker("network", "rm", NET)
    for h in cluster.hosts:
        assert "dockplug-net" not in h.ns("ip", "-d", "-o", "link", "show")
        rules = h.ns("iptables", "-S") + h.ns("iptables", "-t", "nat", "-S")
        assert "DPN-" not in rules and "DOCKPLUG" not in rules, rules
    assert wait_until(lambda: cluster.etcd_keys(OVERLAY) == [], 10), cluster.etcd_keys(OVERLAY)
