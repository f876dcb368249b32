"""dockplug-net dual stack (IPv4 + IPv6) through real dockerds: ``docker network create -d
dockplug-net --ipam-driver dockplug-net --ipv6 --subnet A --subnet B`` must work as the built-in
bridge driver does.

One host: the test dockerd (20.10 or 28, ``--engine``), the plugin in this process on SQLite.
dockerd asks the IPAM for the IPv6 pool (``RequestPool`` with ``V6: true``) only with
``--ipv6`` (libnetwork ``ipamAllocate``, on both engines), sends the pool in CreateNetwork's
``IPv6Data`` and the container's address in CreateEndpoint's ``AddressIPv6``, and sets the
default route from Join's ``GatewayIPv6``; the addresses themselves are put on the container's
interface by dockerd (with ``nodad``).

Two hosts: a :class:`~dockplug.testing.hosts.Cluster` with etcd, both families over one VXLAN
network. Each host's FORWARD policy is DROP in iptables *and* ip6tables, with ``br_netfilter``
on for both and IPv6 forwarding on, as dockerd 28 leaves a host with its default
``--ip6tables=true``: the driver's ip6tables rules are what lets IPv6 through, and what keeps
other networks out. The cluster hosts run the engine ``--engine`` selects, like the one-host
tests.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dockplug.drivers.ipam.engine_sync import read_engine
from dockplug.drivers.net import NetDriver
from dockplug.facts import default_socket
from dockplug.testing import engines
from dockplug.testing.dockerd import Dockerd
from dockplug.testing.hosts import Cluster, Host, cluster_or_skip
from dockplug.testing.servers import ThreadedPlugin, wait_until

pytestmark = [pytest.mark.dockerd, pytest.mark.root]
# --heartbeat-ttl of the cluster's plugins: a killed plugin's VTEP key outlives its restart (on
# a loaded machine a restart took over 5 s, the peer then dropped the host's FDB entries)
TTL = 20


def run_cmd(*argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


def field(docker: Callable[..., Any], container: str, net: str, name: str) -> str:
    fmt = f"{{{{(index .NetworkSettings.Networks {json.dumps(net)}).{name}}}}}"
    return str(docker("inspect", "-f", fmt, container).stdout.strip())


def ipam_status(plugin: ThreadedPlugin) -> dict[str, Any]:
    with plugin.client() as c:
        result: dict[str, Any] = c.call("DockplugNet.Status").json["Result"]
    return result


def rules_of(network_id: str) -> str:
    """This network's rules in both families (the chains are named after its ID)."""
    short = network_id[:12]
    out = run_cmd("iptables", "-S") + run_cmd("ip6tables", "-S")
    return "\n".join(line for line in out.splitlines() if short in line)


@pytest.fixture
def net_plugin(
    dockerd: Dockerd,
    plugin_name: str,
    short_tmp: Path,
    serve_plugin: Callable[..., ThreadedPlugin],
) -> ThreadedPlugin:
    # a default IPv6 base of this test's own: the bridges live in the machine's namespace
    driver = NetDriver(
        state_dir=short_tmp / "state", host_id="solo", docker_host=dockerd.host,
        key_prefix=f"/t{uuid.uuid4().hex[:6]}",
        default_pools="base=10.128.0.0/9,size=24 base=fd00:7e57::/48,size=64",
    )  # fmt: skip
    return serve_plugin(driver, name=plugin_name, socket=default_socket(plugin_name))


def test_a_dual_stack_network_on_one_host(
    dockerd: Dockerd, busybox_image: str, plugin_name: str, net_plugin: ThreadedPlugin
) -> None:
    net = f"{plugin_name}-ds"
    nid = dockerd.docker(
        "network", "create", "-d", plugin_name, "--ipam-driver", plugin_name, "--ipv6",
        "--subnet", "10.74.0.0/24", "--subnet", "fd00:74::/64",
        "-o", "routes=fd00:9::/64=fd00:74::fe", net,
    ).stdout.strip()  # fmt: skip
    names = [f"{plugin_name}-{i}" for i in range(3)]
    try:
        assert dockerd.docker("network", "inspect", "-f", "{{.EnableIPv6}}", net).stdout.strip() \
            == "true"  # fmt: skip
        for name in names[:2]:
            dockerd.docker("run", "-d", "--name", name, "--network", net, busybox_image,
                           "sleep", "300")  # fmt: skip
        dockerd.docker("run", "-d", "--name", names[2], "--network", net,
                       "--ip6", "fd00:74::99", busybox_image, "sleep", "300")  # fmt: skip
        v6 = [field(dockerd.docker, n, net, "GlobalIPv6Address") for n in names]
        v4 = [field(dockerd.docker, n, net, "IPAddress") for n in names]
        assert v6 == ["fd00:74::2", "fd00:74::3", "fd00:74::99"]  # ::1 is the gateway
        assert v4 == ["10.74.0.2", "10.74.0.3", "10.74.0.4"]
        assert field(dockerd.docker, names[0], net, "IPv6Gateway") == "fd00:74::1"
        assert field(dockerd.docker, names[0], net, "GlobalIPv6PrefixLen") == "64"
        # in the container: the address on eth0, the default route via the bridge's gateway
        addrs = dockerd.docker("exec", names[0], "ip", "-6", "addr", "show", "eth0").stdout
        assert "inet6 fd00:74::2/64" in addrs
        route = dockerd.docker("exec", names[0], "ip", "-6", "route").stdout
        assert "default via fd00:74::1 dev eth0" in route, route
        assert "fd00:9::/64 via fd00:74::fe dev eth0" in route  # -o routes, IPv6 too
        bridge = "dpb" + nid[:12]
        assert "inet6 fd00:74::1/64" in run_cmd("ip", "-6", "addr", "show", "dev", bridge)
        # the containers reach each other and the gateway over IPv6, and over IPv4 still
        for target in ("fd00:74::3", "fd00:74::99", "fd00:74::1", "10.74.0.3"):
            assert wait_until(
                lambda t=target: (
                    dockerd.docker(
                        "exec", names[0], "ping", "-c", "1", "-W", "1", t, check=False
                    ).returncode
                    == 0
                ),
                10,
            ), target
        # forward rules from ip6tables beside iptables
        rules = rules_of(nid)
        assert f"-A DPN-{nid[:12]}-I -i {bridge} -j ACCEPT" in rules
        assert rules.count(f"-N DPN-{nid[:12]}-I") == 2  # one chain per family
        # the pool and its addresses in the IPAM's store: gateway, three containers
        (pool,) = [p for p in ipam_status(net_plugin)["pools"] if p["pool"] == "fd00:74::/64"]
        assert pool["gateway"] == "fd00:74::1" and pool["allocated"] == {"solo": 3}
        # the leak reclaimer reads the Engine API: the containers' IPv6 addresses count as held
        # (the gateway is never reclaimed: its record says gateway)
        held = read_engine(dockerd.host).addresses[ipaddress.ip_network("fd00:74::/64")]
        assert {ipaddress.ip_address(a) for a in v6} <= held
        # a taken --ip6 is refused naming its holder
        clash = dockerd.docker("run", "--rm", "--network", net, "--ip6", "fd00:74::99",
                               busybox_image, "true", check=False)  # fmt: skip
        assert clash.returncode != 0 and "fd00:74::99 is in use" in clash.stderr
        dockerd.docker("rm", "-f", names[1])
        assert wait_until(
            lambda: [p["allocated"] for p in ipam_status(net_plugin)["pools"]
                     if p["pool"] == "fd00:74::/64"] == [{"solo": 2}], 10,
        )  # fmt: skip
    finally:
        dockerd.docker("rm", "-f", *names, check=False)
    dockerd.docker("network", "rm", net)
    assert ipam_status(net_plugin)["pools"] == []
    assert bridge not in run_cmd("ip", "-o", "link", "show")
    assert rules_of(nid) == ""


def test_an_internal_network_with_a_default_ipv6_pool(
    dockerd: Dockerd, busybox_image: str, plugin_name: str, net_plugin: ThreadedPlugin
) -> None:
    """``--ipv6`` without an IPv6 ``--subnet``: dockerd asks RequestPool V6 with no Pool and
    the plugin carves a /64 from its default base; ``--internal`` takes the default route away
    in both families and cuts the network off in ip6tables as in iptables."""
    net = f"{plugin_name}-in"
    nid = dockerd.docker(
        "network", "create", "-d", plugin_name, "--ipam-driver", plugin_name, "--ipv6",
        "--internal", "--subnet", "10.75.0.0/24", net,
    ).stdout.strip()  # fmt: skip
    names = [f"{plugin_name}-i{i}" for i in range(2)]
    try:
        subnets = dockerd.docker(
            "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", net
        ).stdout.split()
        assert "fd00:7e57::/64" in subnets, subnets
        for name in names:
            dockerd.docker("run", "-d", "--name", name, "--network", net, busybox_image,
                           "sleep", "300")  # fmt: skip
        peer = field(dockerd.docker, names[1], net, "GlobalIPv6Address")
        assert peer == "fd00:7e57::3"
        routes = dockerd.docker("exec", names[0], "ip", "-6", "route").stdout
        assert "default" not in routes and "fd00:7e57::/64 dev eth0" in routes
        assert "default" not in dockerd.docker("exec", names[0], "ip", "route").stdout
        assert wait_until(
            lambda: dockerd.docker("exec", names[0], "ping", "-c", "1", "-W", "1", peer,
                                   check=False).returncode == 0, 10,
        )  # fmt: skip
        out6 = run_cmd("ip6tables", "-S", f"DPN-{nid[:12]}-O")
        assert f"-A DPN-{nid[:12]}-O -j DROP" in out6
    finally:
        dockerd.docker("rm", "-f", *names, check=False)
    dockerd.docker("network", "rm", net)
    assert rules_of(nid) == ""


def test_without_ipv6_the_ipv6_subnet_is_ignored_as_dockerd_does(
    dockerd: Dockerd, busybox_image: str, plugin_name: str, net_plugin: ThreadedPlugin
) -> None:
    """Without ``--ipv6`` neither engine asks the IPAM for the IPv6 pool (28 skips its
    validation too, ``ValidateIPAM``): the network is IPv4 only, no IPv6 pool is held."""
    net = f"{plugin_name}-v4"
    dockerd.docker("network", "create", "-d", plugin_name, "--ipam-driver", plugin_name,
                   "--subnet", "10.76.0.0/24", "--subnet", "fd00:76::/64", net)  # fmt: skip
    try:
        pools = [p["pool"] for p in ipam_status(net_plugin)["pools"]]
        assert pools == ["10.76.0.0/24"]
    finally:
        dockerd.docker("network", "rm", net)


def test_an_ipv6_only_network_on_dockerd_28(
    dockerd: Dockerd, busybox_image: str, plugin_name: str, net_plugin: ThreadedPlugin
) -> None:
    """``--ipv4=false --ipv6`` (dockerd 27+): no IPv4 pool is asked for, CreateNetwork's
    IPv4Data is empty, the container has IPv6 only."""
    if engines.selected().name == "20.10":
        pytest.skip("dockerd 20.10 has no --ipv4=false (IPv6-only networks came in 27)")
    net = f"{plugin_name}-v6"
    nid = dockerd.docker(
        "network", "create", "-d", plugin_name, "--ipam-driver", plugin_name, "--ipv4=false",
        "--ipv6", "--subnet", "fd00:77::/64", net,
    ).stdout.strip()  # fmt: skip
    names = [f"{plugin_name}-s{i}" for i in range(2)]
    try:
        assert [p["pool"] for p in ipam_status(net_plugin)["pools"]] == ["fd00:77::/64"]
        for name in names:
            dockerd.docker("run", "-d", "--name", name, "--network", net, busybox_image,
                           "sleep", "300")  # fmt: skip
        assert field(dockerd.docker, names[0], net, "IPAddress") == ""
        peer = field(dockerd.docker, names[1], net, "GlobalIPv6Address")
        assert peer == "fd00:77::3"
        assert "inet " not in dockerd.docker("exec", names[0], "ip", "addr", "show", "eth0").stdout
        assert wait_until(
            lambda: dockerd.docker("exec", names[0], "ping", "-c", "1", "-W", "1", peer,
                                   check=False).returncode == 0, 10,
        )  # fmt: skip
    finally:
        dockerd.docker("rm", "-f", *names, check=False)
    dockerd.docker("network", "rm", net)
    assert rules_of(nid) == "" and ipam_status(net_plugin)["pools"] == []


def test_two_subnets_of_one_family_are_refused_naming_the_fix(
    dockerd: Dockerd, plugin_name: str, net_plugin: ThreadedPlugin
) -> None:
    """One bridge carries one gateway per family: a second IPv6 subnet would get addresses
    nothing routes, so CreateNetwork refuses it and dockerd rolls the pools back."""
    res = dockerd.docker(
        "network", "create", "-d", plugin_name, "--ipam-driver", plugin_name, "--ipv6",
        "--subnet", "10.79.0.0/24", "--subnet", "fd00:79::/64", "--subnet", "fd00:7a::/64",
        f"{plugin_name}-2x", check=False,
    )  # fmt: skip
    assert res.returncode != 0
    assert "takes one IPv6 subnet per network, got fd00:7" in res.stderr  # in dockerd's order
    assert "fd00:79::/64" in res.stderr and "fd00:7a::/64" in res.stderr
    assert "give one --subnet per family" in res.stderr
    assert wait_until(lambda: ipam_status(net_plugin)["pools"] == [], 10)


# -- two hosts over VXLAN ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with cluster_or_skip(2) as c:
        for h in c.hosts:
            h.firewall_like_dockerd(ipv6=True)
            # an IPv6 underlay beside the IPv4 one, for the masquerade test
            h.ns("ip", "-6", "addr", "add", underlay6(h), "dev", h.iface, "nodad")
        c.serve_net("--heartbeat-ttl", str(TTL))
        yield c


def underlay6(h: Host) -> str:
    """The host's IPv6 address on the switch (fd00:77::11/64 for 192.168.77.11)."""
    return f"fd00:77::{h.address.rsplit('.', 1)[1]}/64"


def host_status(h: Host) -> dict[str, Any]:
    return h.net_status()


def dual_stack(h: Host, name: str, v4: str, v6: str) -> str:
    return str(h.docker(
        "network", "create", "-d", "dockplug-net", "--ipam-driver", "dockplug-net", "--ipv6",
        "--subnet", v4, "--subnet", v6, "-o", f"dockplug.network={name}", name,
    ).stdout.strip())  # fmt: skip


def start(h: Host, name: str, net: str) -> None:
    h.run(network=net, name=name)


def pings(h: Host, name: str, ip: str) -> bool:
    return h.pings(name, ip)


def test_two_hosts_reach_each_other_over_ipv6_on_one_vxlan(cluster: Cluster) -> None:
    h1, h2 = cluster.hosts
    ids = {h.name: dual_stack(h, "ds", "10.84.0.0/24", "fd00:84::/64") for h in (h1, h2)}
    start(h1, "c1", "ds")
    start(h2, "c2", "ds")
    c1 = field(h1.docker, "c1", "ds", "GlobalIPv6Address")
    c2 = field(h2.docker, "c2", "ds", "GlobalIPv6Address")
    subnet = ipaddress.ip_network("fd00:84::/64")
    assert c1 != c2 and all(ipaddress.ip_address(a) in subnet for a in (c1, c2))
    assert "fd00:84::1" not in (c1, c2)  # the shared gateway
    assert wait_until(lambda: pings(h1, "c1", c2), 15), h1.log_tail("plugin.log")
    assert pings(h2, "c2", c1)
    assert pings(h1, "c1", field(h2.docker, "c2", "ds", "IPAddress"))  # IPv4 too
    # one spec with both families; h2's VXLAN has h1's MAC once in its FDB and both of its
    # addresses as permanent neighbours (the device's proxy answers ARP and ND from them)
    spec = host_status(h1)["network"]["cluster"]["ds"]["spec"]
    assert (spec["subnet"], spec["subnet6"]) == ("10.84.0.0/24", "fd00:84::/64")
    mac = field(h1.docker, "c1", "ds", "MacAddress")
    vx = "dpx" + ids["h2"][:12]
    fdb = h2.ns("bridge", "fdb", "show", "dev", vx)
    assert fdb.count(f"{mac} dst {h1.address} self permanent") == 1, fdb
    neigh = h2.ns("ip", "-6", "neigh", "show", "dev", vx)
    assert f"{c1} lladdr {mac} PERMANENT" in neigh, neigh
    # the addresses come from one shared pool in etcd, the gateway once for both hosts
    pools = {p["pool"]: p for p in host_status(h2)["pools"]}
    assert pools["fd00:84::/64"]["allocated"] == {"h1": 1, "h2": 1}
    assert pools["fd00:84::/64"]["gateway"] == "fd00:84::1"


def test_ipv6_isolation_between_networks_under_a_drop_policy(cluster: Cluster) -> None:
    h1, _ = cluster.hosts
    dual_stack(h1, "other", "10.85.0.0/24", "fd00:85::/64")
    start(h1, "o1", "other")
    try:
        c1 = field(h1.docker, "c1", "ds", "GlobalIPv6Address")
        # IPv6 forwarding is on: the packet is routed to the other bridge, then dropped by
        # the networks' ip6tables chains
        assert pings(h1, "o1", "fd00:85::1")  # its own gateway
        assert not pings(h1, "o1", c1)
        assert not pings(h1, "c1", field(h1.docker, "o1", "other", "GlobalIPv6Address"))
    finally:
        h1.docker("rm", "-f", "o1", check=False)
        h1.docker("network", "rm", "other", check=False)


def test_masquerade_reaches_the_ipv6_underlay_and_internal_does_not(cluster: Cluster) -> None:
    """h2 has no route back to the containers' /64: only a masqueraded packet (NAT66, from
    ip6tables' nat table) gets an answer; an internal network's is dropped on the way out."""
    h1, h2 = cluster.hosts
    target = underlay6(h2).split("/")[0]
    h1.docker("network", "create", "-d", "dockplug-net", "--ipam-driver", "dockplug-net",
              "--ipv6", "--subnet", "10.86.0.0/24", "--subnet", "fd00:86::/64",
              "-o", "masquerade=true", "out6")  # fmt: skip
    h1.docker("network", "create", "-d", "dockplug-net", "--ipam-driver", "dockplug-net",
              "--ipv6", "--subnet", "10.87.0.0/24", "--subnet", "fd00:87::/64",
              "--internal", "in6")  # fmt: skip
    h1.docker(
        "network",
        "create",
        "-d",
        "dockplug-net",
        "--ipam-driver",
        "dockplug-net",
        "--ipv6",
        "--subnet",
        "10.88.0.0/24",
        "--subnet",
        "fd00:88::/64",
        "plain6",
    )
    try:
        for name, net in (("x1", "out6"), ("i1", "in6"), ("p1", "plain6")):
            start(h1, name, net)
        assert wait_until(lambda: pings(h1, "x1", target), 10)
        assert not pings(h1, "p1", target)  # forwarded, but h2 cannot answer fd00:88::2
        assert not pings(h1, "i1", target)
        assert "default" not in h1.docker("exec", "i1", "ip", "-6", "route").stdout
        nat = h1.ns("ip6tables", "-t", "nat", "-S", "DOCKPLUG-NET-NAT")
        assert "-s fd00:86::/64 ! -o dpb" in nat and "MASQUERADE" in nat
    finally:
        h1.docker("rm", "-f", "x1", "i1", "p1", check=False)
        for net in ("out6", "in6", "plain6"):
            h1.docker("network", "rm", net, check=False)


def test_a_host_without_ipv6_gets_the_spec_difference_named(cluster: Cluster) -> None:
    _, h2 = cluster.hosts
    res = h2.docker("network", "create", "-d", "dockplug-net", "--ipam-driver", "dockplug-net",
                    "--subnet", "10.84.0.0/24", "-o", "dockplug.network=ds", "ds4",
                    check=False)  # fmt: skip
    assert res.returncode != 0
    assert "subnet6 None here, fd00:84::/64 in the cluster" in res.stderr, res.stderr
    assert "--ipv6 --subnet fd00:84::/64" in res.stderr


def test_plugin_kill_9_and_restart_keep_ipv6_and_serve_new_endpoints(cluster: Cluster) -> None:
    h1, h2 = cluster.hosts
    c2 = field(h2.docker, "c2", "ds", "GlobalIPv6Address")
    ping = subprocess.Popen(
        ["docker", "-H", h1.docker_host, "exec", "c1", "ping", "-c", "20", "-i", "0.2",
         "-W", "1", c2],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for h in (h1, h2):
        h.kill_plugin()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda h: h.serve(), (h1, h2)))
    out, _ = ping.communicate(timeout=60)
    logs = "\n".join(h.log_tail("plugin.log", 30) for h in (h1, h2))
    assert " 0% packet loss" in out, out + logs
    assert "adopted" in h1.log_tail("plugin.log", 200)
    start(h2, "c3", "ds")  # the restarted plugins: a new IPv6 endpoint, reached across hosts
    c3 = field(h2.docker, "c3", "ds", "GlobalIPv6Address")
    assert c3 not in ("", c2) and wait_until(lambda: pings(h1, "c1", c3), 15)


def test_network_rm_on_both_hosts_leaves_no_ipv6_state(cluster: Cluster) -> None:
    for h in cluster.hosts:
        running = h.docker("ps", "-aq").stdout.split()
        if running:
            h.docker("rm", "-f", *running)
        h.docker("network", "rm", "ds")
    for h in cluster.hosts:
        assert "dockplug-net" not in h.ns("ip", "-d", "-o", "link", "show")
        rules = h.ns("ip6tables", "-S") + h.ns("iptables", "-S")
        assert "DPN-" not in rules and "DOCKPLUG" not in rules, rules
        assert h.ns("ip", "-6", "neigh", "show", "nud", "permanent").strip() == ""
    assert host_status(cluster.hosts[0])["pools"] == []
