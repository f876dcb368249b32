"""dockplug-net on one host with nothing to set up (SQLite), through a real dockerd: a bridge
network on its IPAM, containers, --ip, removal, and ``docker network rm`` releasing the pool."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dockplug.conformance import Report
from dockplug.drivers.ipam.driver import NetDriver
from dockplug.drivers.net import NetDriver as IpamAndNetwork
from dockplug.facts import default_socket
from dockplug.testing.dockerd import Dockerd
from dockplug.testing.servers import ThreadedPlugin, wait_until

pytestmark = pytest.mark.dockerd


def status(plugin: ThreadedPlugin) -> dict[str, Any]:
    with plugin.client() as c:
        result: dict[str, Any] = c.call("DockplugNet.Status").json["Result"]
    return result


def test_a_bridge_network_on_sqlite_gets_unique_addresses_and_releases_them(
    dockerd: Dockerd,
    busybox_image: str,
    plugin_name: str,
    short_tmp: Path,
    serve_plugin: Callable[..., ThreadedPlugin],
) -> None:
    driver = NetDriver(
        state_dir=short_tmp / "state", host_id="solo", docker_host=dockerd.host,
        key_prefix=f"/t{uuid.uuid4().hex[:6]}",
    )  # fmt: skip
    plugin = serve_plugin(driver, name=plugin_name, socket=default_socket(plugin_name))
    net = f"{plugin_name}-br"
    dockerd.docker("network", "create", "--ipam-driver", plugin_name,
                   "--subnet", "10.73.0.0/24", "--gateway", "10.73.0.254",
                   "--aux-address", "router=10.73.0.250", net)  # fmt: skip
    names = [f"{plugin_name}-{i}" for i in range(3)]
    try:
        for name in names[:2]:
            dockerd.docker("run", "-d", "--name", name, "--network", net, busybox_image,
                           "sleep", "300")  # fmt: skip
        dockerd.docker("run", "-d", "--name", names[2], "--network", net, "--ip", "10.73.0.9",
                       busybox_image, "sleep", "300")  # fmt: skip
        ips = [
            dockerd.docker("inspect", "--format",
                           f"{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}",
                           n).stdout.strip()
            for n in names
        ]  # fmt: skip
        assert ips == ["10.73.0.1", "10.73.0.2", "10.73.0.9"]  # the gateway and aux are held
        clash = dockerd.docker("run", "--rm", "--network", net, "--ip", "10.73.0.250",
                               busybox_image, "true", check=False)  # fmt: skip
        assert clash.returncode != 0 and "address 10.73.0.250 is in use" in clash.stderr
        (pool,) = [p for p in status(plugin)["pools"] if p["pool"] == "10.73.0.0/24"]
        assert pool["gateway"] == "10.73.0.254" and pool["allocated"] == {"solo": 4}
        dockerd.docker("rm", "-f", names[0])
        assert wait_until(
            lambda: [p["allocated"] for p in status(plugin)["pools"]] == [{"solo": 3}], 10
        )
    finally:
        dockerd.docker("rm", "-f", *names, check=False)
    dockerd.docker("network", "rm", net)  # gateway, aux, ReleasePool: the pool is gone
    assert status(plugin)["pools"] == []


@pytest.mark.root
def test_the_plugin_dockerd_uses_passes_dockplug_check_as_network_and_ipam(
    dockerd: Dockerd,
    busybox_image: str,
    plugin_name: str,
    short_tmp: Path,
    serve_plugin: Callable[..., ThreadedPlugin],
    conformance: Callable[..., Report],
) -> None:
    """One process, both protocols: a container on a dockplug-net bridge network (both
    drivers) while the harness plays dockerd against the same socket, on this engine."""
    driver = IpamAndNetwork(
        state_dir=short_tmp / "state", host_id="solo", docker_host=dockerd.host,
        key_prefix=f"/t{uuid.uuid4().hex[:6]}",
    )  # fmt: skip
    plugin = serve_plugin(driver, name=plugin_name, socket=default_socket(plugin_name))
    net, box = f"{plugin_name}-own", f"{plugin_name}-box"
    dockerd.docker("network", "create", "-d", plugin_name, "--ipam-driver", plugin_name,
                   "--subnet", "10.74.0.0/24", net)  # fmt: skip
    try:
        dockerd.docker("run", "-d", "--name", box, "--network", net, busybox_image,
                       "sleep", "300")  # fmt: skip
        route = dockerd.docker("exec", box, "ip", "route", "show", "default").stdout.split()
        assert route[:2] == ["default", "via"], route  # Join's gateway, set by dockerd
        ping = dockerd.docker("exec", box, "ping", "-c", "1", "-W", "2", route[2], check=False)
        for kind, subnet in (("network", "198.18.8.0/24"), ("ipam", "198.18.9.0/24")):
            report = conformance(plugin.url, kind=kind, opts={"subnet": subnet})
            assert report.ok, (kind, report.failures())
        assert ping.returncode == 0, ping.stdout + ping.stderr  # the gateway on the bridge
    finally:
        dockerd.docker("rm", "-f", box, check=False)
        dockerd.docker("network", "rm", net, check=False)


@pytest.mark.root
def test_a_second_instance_leaves_the_first_ones_links_and_removes_only_its_own_half_made(
    dockerd: Dockerd,
    busybox_image: str,
    plugin_name: str,
    short_tmp: Path,
    serve_plugin: Callable[..., ThreadedPlugin],
) -> None:
    """Two dockplug-net plugins on one host (say, a legacy one beside a managed one): each
    start-up sweep removes only links of networks its own journal says it began to make."""
    from dockplug.drivers.network import firewall, links

    def serve(which: str) -> tuple[IpamAndNetwork, ThreadedPlugin]:
        driver = IpamAndNetwork(
            state_dir=short_tmp / which, host_id="solo", docker_host=dockerd.host,
            key_prefix=f"/t{uuid.uuid4().hex[:6]}",
        )  # fmt: skip
        name = f"{plugin_name}{which}"
        plugin = serve_plugin(driver, name=name, socket=default_socket(name))
        assert wait_until(driver.bridges.reconciled.is_set, 10)
        return driver, plugin

    first, _ = serve("a")
    net, box = f"{plugin_name}-a", f"{plugin_name}-abox"
    dockerd.docker("network", "create", "-d", f"{plugin_name}a", "--ipam-driver",
                   f"{plugin_name}a", "--subnet", "10.75.0.0/24", net)  # fmt: skip
    try:
        dockerd.docker("run", "-d", "--name", box, "--network", net, busybox_image,
                       "sleep", "300")  # fmt: skip
        (record,) = first.bridges.nets.values()
        rules = [r for r in firewall.all_rules() if record.network_id[:12] in r]
        assert rules
        _, plugin = serve("b")
        assert links.get(record.bridge) is not None, "the second plugin removed the first's bridge"
        assert [r for r in firewall.all_rules() if record.network_id[:12] in r] == rules
        # the second one killed between saving its journal and saving the network's record:
        # its bridge exists, no record explains it
        plugin.stop()
        half = "ab" * 32
        journal = short_tmp / "b" / "links.json"
        data = json.loads(journal.read_text()) if journal.exists() else {}
        data["made"] = [*data.get("made", []), half]
        journal.write_text(json.dumps(data))
        links.ensure_bridge("dpbhalfmade", half, ["10.99.0.1/24"], 1500)
        serve("b")
        assert links.get("dpbhalfmade") is None, "the half-made bridge was left"
        assert links.get(record.bridge) is not None
        assert json.loads(journal.read_text())["made"] == []
        ping = dockerd.docker("exec", box, "ping", "-c", "1", "-W", "2",
                              str(record.gateway).split("/")[0], check=False)  # fmt: skip
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        dockerd.docker("rm", "-f", box, check=False)
        dockerd.docker("network", "rm", net, check=False)
        with contextlib.suppress(Exception):
            links.delete("dpbhalfmade")
