"""The cluster records of dockplug-net's network half on a real SQLite key-value store: specs
fixed by the first host and checked for later ones, VNI claims, endpoint ads that refuse a
second host's copy of an address, and the FDB/neighbour entries a host wants from its view."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from dockplug.drivers.network.bridges import Bridges
from dockplug.drivers.network.cluster import Cluster
from dockplug.drivers.network.driver import NETWORK_OPTIONS
from dockplug.drivers.network.records import EndpointAd, EndpointRecord
from dockplug.errors import Conflict, InvalidOption
from dockplug.state.sqlite_kv import SqliteKV


def test_spec_vni_ads_and_wanted_entries(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteKV(tmp_path / "kv.db")
        changed: list[set[str]] = []
        a = Cluster(store, "h1", "/t", 5, changed.append, lambda _: None)
        b = Cluster(store, "h2", "/t", 5, changed.append, lambda _: None)
        spec = await a.join("web", "10.1.0.0/24", "10.1.0.1/24", 1450, None, "n1")
        assert 4096 <= spec.vni < 2**24 and spec.created_by == "h1"
        assert (await b.join("web", "10.1.0.0/24", "10.1.0.1/24", 1450, None, "n2")).vni == spec.vni
        with pytest.raises(Conflict, match=r"subnet 10.2.0.0/24 here, 10.1.0.0/24 in the cluster"):
            await b.join("web", "10.2.0.0/24", "10.2.0.1/24", 1450, None, "n2")
        with pytest.raises(Conflict, match=f"VNI {spec.vni} is taken by cluster network web"):
            await b.join("api", "10.3.0.0/24", None, 1450, spec.vni, "n3")
        await a.publish("web", EndpointAd("h1", "e1", "10.1.0.2", "02:00:00:00:00:02"))
        await a.publish("web", EndpointAd("h1", "e1", "10.1.0.2", "02:00:00:00:00:02"))  # again
        with pytest.raises(Conflict, match="already used by a container on host h1"):
            await b.publish("web", EndpointAd("h2", "e9", "10.1.0.2", "02:00:00:00:00:09"))
        await b.publish("web", EndpointAd("h2", "e2", "10.1.0.3", "02:00:00:00:00:03"))
        assert b.wanted("web") is None  # never read the store yet: wipe nothing
        lease = await store.grant(5)
        a.lease = lease
        await a.set_vtep("web", "192.0.2.1")
        b.start()
        for _ in range(100):
            wanted = b.wanted("web")
            if wanted and wanted.fdb:
                break
            await asyncio.sleep(0.05)
        assert wanted is not None
        assert wanted.fdb == {("02:00:00:00:00:02", "192.0.2.1")}  # h1's, not its own
        assert wanted.neighbours == {("10.1.0.2", "02:00:00:00:00:02")}
        await store.revoke(lease)  # h1 dies: its entries go
        for _ in range(100):
            if not (b.wanted("web") or wanted).fdb:
                break
            await asyncio.sleep(0.05)
        assert b.wanted("web") == type(wanted)(frozenset(), frozenset())
        await b.stop()
        await b.withdraw("web", "10.1.0.3", "e2")
        await a.withdraw("web", "10.1.0.2", "e1")
        assert not await a.leave("web")  # h2 is still a member
        assert await b.leave("web")
        entries, _ = await store.range("/t/overlay/")
        assert [e.key for e in entries] == []
        await store.close()

    asyncio.run(scenario())


def test_network_options_name_the_field() -> None:
    with pytest.raises(InvalidOption, match=r"dockplug\.network='bad name'"):
        NETWORK_OPTIONS.parse({"dockplug.network": "bad name"})
    with pytest.raises(InvalidOption, match="unknown option 'mtuu'"):
        NETWORK_OPTIONS.parse({"mtuu": "1400"})
    opts = NETWORK_OPTIONS.parse({"routes": "10.9.0.0/16=10.1.0.254,10.8.0.0/16", "mtu": "1400"})
    assert opts["routes"] == [("10.9.0.0/16", "10.1.0.254"), ("10.8.0.0/16", None)]
    assert opts["mtu"] == 1400 and opts["masquerade"] is False
    six = NETWORK_OPTIONS.parse({"routes": "fd00:9::/64=fd00:1::fe,fd00:8::/64"})["routes"]
    assert six == [("fd00:9::/64", "fd00:1::fe"), ("fd00:8::/64", None)]
    with pytest.raises(InvalidOption, match=r"next hop 10\.1\.0\.254 is not of fd00:9::/64"):
        NETWORK_OPTIONS.parse({"routes": "fd00:9::/64=10.1.0.254"})


def test_a_dual_stack_spec_is_checked_in_both_families_and_ads_cover_both(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteKV(tmp_path / "kv.db")
        a = Cluster(store, "h1", "/t", 5, lambda _: None, lambda _: None)
        b = Cluster(store, "h2", "/t", 5, lambda _: None, lambda _: None)
        v4, v6 = ("10.1.0.0/24", "10.1.0.1/24"), ("fd00:1::/64", "fd00:1::1/64")
        spec = await a.join("web", *v4, 1450, None, "n1", *v6)
        assert (spec.subnet6, spec.gateway6) == v6
        assert (await b.join("web", *v4, 1450, None, "n2", *v6)).vni == spec.vni
        with pytest.raises(Conflict, match=r"subnet6 None here, fd00:1::/64 in the cluster") as e:
            await b.join("web", *v4, 1450, None, "n2")  # this host without --ipv6
        assert "--ipv6 --subnet fd00:1::/64 --gateway fd00:1::1" in str(e.value)  # the fix
        with pytest.raises(Conflict, match=r"subnet6 fd00:2::/64 here"):
            await b.join("web", *v4, 1450, None, "n2", "fd00:2::/64", "fd00:2::1/64")
        # an IPv6-only network (dockerd 28's --ipv4=false) is a spec too
        only6 = await a.join("six", "", None, 1450, None, "n3", *v6)
        assert only6.subnet == "" and only6.subnet6 == "fd00:1::/64"
        mac = "02:00:00:00:00:02"
        await a.publish("web", EndpointAd("h1", "e1", "10.1.0.2", mac))
        await a.publish("web", EndpointAd("h1", "e1", "fd00:1::2", mac))
        with pytest.raises(Conflict, match=r"fd00:1::2 is already used by a container on host h1"):
            await b.publish("web", EndpointAd("h2", "e9", "fd00:1::2", "02:00:00:00:00:09"))
        a.lease = await store.grant(5)
        await a.set_vtep("web", "192.0.2.1")
        b.start()
        for _ in range(100):
            wanted = b.wanted("web")
            if wanted and len(wanted.neighbours) == 2:
                break
            await asyncio.sleep(0.05)
        assert wanted is not None
        assert wanted.fdb == {(mac, "192.0.2.1")}  # one MAC, one FDB entry for both families
        assert wanted.neighbours == {("10.1.0.2", mac), ("fd00:1::2", mac)}
        await b.stop()
        await store.close()

    asyncio.run(scenario())


def test_an_endpoint_has_one_ip_per_family() -> None:
    ep = EndpointRecord("n", "e", "dpv", "dpc", "10.1.0.2/24", "02:00:00:00:00:02",
                        address6="fd00:1::2/64")  # fmt: skip
    assert ep.ips() == ["10.1.0.2", "fd00:1::2"]
    assert EndpointRecord("n", "e", "v", "p", "", "m", address6="fd00::5/64").ips() == ["fd00::5"]


def test_records_written_before_ipv6_load_as_ipv4_only(tmp_path: Path) -> None:
    """links.json of a plugin from before IPv6: the records load, with no IPv6 subnet."""
    (tmp_path / "links.json").write_text(json.dumps({
        "networks": {"n1": {"network_id": "n1", "bridge": "dpbn1", "subnet": "10.1.0.0/24",
                            "gateway": "10.1.0.1/24", "mtu": 1500}},
        "endpoints": {"e1": {"network_id": "n1", "endpoint_id": "e1", "veth": "dpve1",
                             "peer": "dpce1", "address": "10.1.0.2/24", "mac": "02:00:00:00:00:02",
                             "joined": True}},
    }))  # fmt: skip
    bridges = Bridges(tmp_path, "h1", None, "/t", None, None, 5, lambda _: None)
    assert bridges.nets["n1"].subnet6 is None and bridges.nets["n1"].gateway6 is None
    assert bridges.eps["e1"].ips() == ["10.1.0.2"]


def test_net_status_prints_cluster_networks_hosts_and_endpoints_from_the_store(
    tmp_path: Path,
) -> None:
    """``dockplug net status`` without ``--json``, no plugin running: the cluster records read
    from the store as tables (h2's VTEP lease is gone: missing), and the same under ``network``
    with ``--json``."""
    from click.testing import CliRunner

    from dockplug.cli.main import cli
    from dockplug.drivers.ipam.driver import NetDriver

    async def publish() -> None:
        d = NetDriver(state_dir=tmp_path, host_id="h1")  # its store is the one the CLI reads
        try:
            a = Cluster(d.store, "h1", "/dockplug/net/v1", 5, lambda _: None, lambda _: None)
            b = Cluster(d.store, "h2", "/dockplug/net/v1", 5, lambda _: None, lambda _: None)
            spec = await a.join("web", "10.1.0.0/24", "10.1.0.1/24", 1450, 7001, "n1")
            await b.join("web", "10.1.0.0/24", "10.1.0.1/24", 1450, None, "n2")
            await a.publish("web", EndpointAd("h1", "e1", "10.1.0.2", "02:00:00:00:00:02"))
            await b.publish("web", EndpointAd("h2", "e2", "10.1.0.3", "02:00:00:00:00:03"))
            await b.publish("web", EndpointAd("h2", "e3", "10.1.0.4", "02:00:00:00:00:04"))
            a.lease = await d.store.grant(60)
            await a.set_vtep("web", "192.0.2.1")
            b.lease = await d.store.grant(60)
            await b.set_vtep("web", "192.0.2.2")
            await d.store.revoke(b.lease)  # h2 died: its VTEP key went with its lease
            assert spec.vni == 7001
        finally:
            await d.store.close()

    asyncio.run(publish())
    base = ["net", "status", "--plugin", "none", "--state-dir", str(tmp_path), "--host-id", "h1"]
    shown = CliRunner(env={"COLUMNS": "160"}).invoke(cli, base)
    assert shown.exit_code == 0, shown.output
    lines = [line.split() for line in shown.output.splitlines()]
    assert ["web", "10.1.0.0/24", "10.1.0.1", "7001", "1450", "h1"] in lines
    assert ["web", "h1", "192.0.2.1", "alive", "yes", "1"] in lines
    assert ["web", "h2", "-", "missing", "(no", "VTEP", "lease)", "yes", "2"] in lines
    assert ["web", "h2", "10.1.0.4", "02:00:00:00:00:04"] in lines
    assert ["web", "h1", "10.1.0.2", "02:00:00:00:00:02"] in lines
    as_json = CliRunner().invoke(cli, [*base, "--json"])
    hosts = json.loads(as_json.stdout)["network"]["cluster"]["web"]["hosts"]
    assert hosts == {
        "h1": {"member": True, "vtep": "192.0.2.1", "alive": True},
        "h2": {"member": True, "alive": False},
    }


def test_net_status_tables_show_both_families_of_a_dual_stack_network() -> None:
    from rich.console import Console

    from dockplug.cli.net import _print_network

    console = Console(record=True, width=200)
    spec = {"subnet": "10.1.0.0/24", "gateway": "10.1.0.1/24", "subnet6": "fd00:1::/64",
            "gateway6": "fd00:1::1/64", "vni": 7002, "mtu": 1450, "created_by": "h1"}  # fmt: skip
    only6 = {"subnet": "", "subnet6": "fd00:2::/64", "gateway6": "fd00:2::1/64", "vni": 7003,
             "mtu": 1450, "created_by": "h1"}  # fmt: skip
    _print_network(console, {
        "host": "h1",
        "networks": [{"network_id": "abc", "bridge": "dpbabc", "subnet": "10.1.0.0/24",
                      "subnet6": "fd00:1::/64", "cluster": "web", "vni": 7002, "mtu": 1450,
                      "endpoints": 0}],
        "cluster": {"web": {"spec": spec, "hosts": {}, "endpoints": {}},
                    "six": {"spec": only6, "hosts": {}, "endpoints": {}}},
    })  # fmt: skip
    lines = [line.split() for line in console.export_text().splitlines()]
    assert ["abc", "dpbabc", "10.1.0.0/24", "fd00:1::/64", "web", "7002", "1450", "0", "-"] in lines
    assert ["web", "10.1.0.0/24", "fd00:1::/64", "10.1.0.1", "fd00:1::1", "7002", "1450",
            "h1"] in lines  # fmt: skip
    assert ["six", "fd00:2::/64", "fd00:2::1", "7003", "1450", "h1"] in lines
