"""dockplug-net as a managed (v2) plugin on a real dockerd with a real etcd: build, create,
``docker plugin set ETCD_ENDPOINTS``, enable; a network on its IPAM and network driver, a
container address from the pool, the pool and endpoint records in etcd, ``dockplug doctor``
seeing etcd answer, and ``docker network rm`` clearing it all.

One module-scoped plugin: the build (about 45 s with the debootstrap base cached, which
tests/integration/test_managed_local.py shares) and the 200 MB upload happen once. The plugin
has the host's network, so the etcd on 127.0.0.1 is the one the plugin reaches.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockplug.client import PluginClient
from dockplug.drivers.registry import builtin
from dockplug.packaging import engine, verbs
from dockplug.packaging.doctor import diagnose_installed
from dockplug.state.etcd_kv import EtcdKV
from dockplug.testing.dockerd import Dockerd
from dockplug.testing.etcd import EtcdServer, throwaway_etcd
from dockplug.testing.managed import EnabledPlugin, enabled_builtin
from dockplug.testing.servers import wait_until

pytestmark = [pytest.mark.dockerd, pytest.mark.root, pytest.mark.etcd]

SUBNET = "10.77.0.0/24"
PREFIX = "/dockplug/net/v1/"


def etcd_keys(server: EtcdServer, prefix: str = PREFIX) -> list[str]:
    async def read() -> list[str]:
        kv = EtcdKV(server.endpoint, timeout=5)
        try:
            entries, _ = await kv.range(prefix)
        finally:
            await kv.close()
        return [e.key for e in entries]

    return asyncio.run(read())


@pytest.fixture(scope="module")
def etcd_for_plugin() -> Iterator[EtcdServer]:
    """A fresh etcd of its own: the plugin writes under the default prefix /dockplug/net/v1."""
    try:
        with throwaway_etcd("3.4") as server:
            yield server
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def net_plugin(dockerd: Dockerd, etcd_for_plugin: EtcdServer) -> Iterator[tuple[str, Any]]:
    """The net driver built, created, pointed at the etcd with docker plugin set, enabled."""
    # the isolated dockerd's socket is DIR/docker.sock: its folder on the engine mount; a
    # short grace so the leak reclaimer reads the Engine API every second
    sock = Path(dockerd.host.removeprefix("unix://"))
    if sock.name != "docker.sock":
        pytest.skip(f"the engine mount expects a docker.sock, this dockerd has {sock}")
    args = " ".join([*builtin("net").managed.args, "--reclaim-after", "3s"])
    settings = [f"engine.source={sock.parent}", f"args={args}",
                f"ETCD_ENDPOINTS={etcd_for_plugin.endpoint}"]  # fmt: skip

    def remove_networks(plugin: EnabledPlugin) -> None:
        for net in plugin.client.networks.list(filters={"driver": plugin.name}):
            for c in net.containers:
                c.remove(force=True)
            net.remove()

    with enabled_builtin(dockerd, "net", settings, before_remove=remove_networks) as plugin:
        yield plugin.name, plugin.client


@pytest.mark.timeout(600)
def test_managed_net_on_etcd_end_to_end(
    dockerd: Dockerd,
    net_plugin: tuple[str, Any],
    etcd_for_plugin: EtcdServer,
    busybox_image: str,
) -> None:
    name, client = net_plugin
    settings = json.loads(dockerd.docker("plugin", "inspect", name).stdout)[0]["Settings"]
    assert f"ETCD_ENDPOINTS={etcd_for_plugin.endpoint}" in settings["Env"]

    findings = diagnose_installed(name, client, log_lines=0)
    assert [f.level for f in findings] == ["info", "info"], findings
    assert [f.check for f in findings] == ["etcd-answering", "engine-mount"], findings
    assert etcd_for_plugin.endpoint in findings[0].message

    net = f"n1-{uuid.uuid4().hex[:6]}"
    dockerd.docker("network", "create", "-d", name, "--ipam-driver", name,
                   "--subnet", SUBNET, "-o", "dockplug.network=n1", net)  # fmt: skip
    box = f"dpt-net-{uuid.uuid4().hex[:6]}"
    try:
        dockerd.docker("run", "-d", "--name", box, "--network", net, busybox_image,
                       "sleep", "300")  # fmt: skip
        fmt = f'{{{{(index .NetworkSettings.Networks "{net}").IPAddress}}}}'
        ip = dockerd.docker("inspect", "--format", fmt, box).stdout.strip()
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET), ip
        # the address is on the container's interface (the network driver made its veth)
        shown = dockerd.docker("exec", box, "ip", "-4", "addr", "show", "eth0").stdout
        assert f"inet {ip}/24" in shown, shown
        # the leak reclaimer reads this host's Engine API through the engine mount
        sock = engine.plugin_socket(client.plugins.get(name))

        def synced() -> dict[str, Any]:
            with PluginClient(f"unix://{sock}", timeout=10) as c:
                result: dict[str, Any] = c.call("DockplugNet.Status").json["Result"]
            return dict(result["this_host"].get("engine_sync") or {})

        assert wait_until(lambda: synced().get("networks", 0) >= 1, 15), synced()

        keys = etcd_keys(etcd_for_plugin)
        pool = "10.77.0.0_24"
        assert any(k.endswith(f"/pools/{pool}") for k in keys), keys
        assert any(k.endswith(f"/addrs/{pool}/{ip}") for k in keys), keys
        assert f"{PREFIX}overlay/nets/n1" in keys, keys
        assert f"{PREFIX}overlay/eps/n1/{ip}" in keys, keys
        # dockerd gives a host-network plugin its own UTS namespace, a copy of the host's: the
        # default --host-id is the host's name, so hosts of a cluster stay apart
        assert f"{PREFIX}hosts/{socket.gethostname()}" in keys, keys
    finally:
        dockerd.docker("rm", "-f", box, check=False)
    dockerd.docker("network", "rm", net)
    keys = etcd_keys(etcd_for_plugin)
    assert not [k for k in keys if "/pools/" in k or "/addrs/" in k or "/overlay/" in k], keys


def test_doctor_names_an_etcd_that_stopped(
    net_plugin: tuple[str, Any], etcd_for_plugin: EtcdServer
) -> None:
    """The seed's contiv case the other way round: the setting took effect, the etcd is gone."""
    name, client = net_plugin
    with etcd_for_plugin.paused():
        findings = diagnose_installed(name, client, log_lines=0)
    bad = [f for f in findings if f.check == "etcd-unreachable"]
    assert len(bad) == 1 and etcd_for_plugin.endpoint in bad[0].message, findings


def test_doctor_warns_when_the_engine_mount_holds_no_socket_or_another_dockerds(
    dockerd: Dockerd,
    net_plugin: tuple[str, Any],
    fresh_dockerd: Dockerd,
    tmp_path: Path,
) -> None:
    """The engine mount's source is a setting dockerd mounts without looking: a folder with no
    docker.sock, or the folder of another dockerd's socket (a second engine on the host), is a
    warning naming the docker plugin set that fixes it; the folder of this dockerd's own
    socket is fine again."""
    name, client = net_plugin
    own = Path(dockerd.host.removeprefix("unix://"))
    other = Path(fresh_dockerd.host.removeprefix("unix://"))
    fix = f"docker plugin set {name} engine.source={own.parent};"

    def engine_findings() -> list[Any]:
        found = diagnose_installed(name, client, log_lines=0)
        return [f for f in found if f.check.startswith("engine-mount")]

    (ok,) = engine_findings()
    assert ok.level == "info" and str(own) in ok.message, ok
    dockerd.docker("plugin", "disable", name)  # dockerd sets a mount's source only then
    try:
        engine.set_options(name, [f"engine.source={tmp_path}"], client)
        (empty,) = engine_findings()
        assert empty.check == "engine-mount-no-socket" and empty.level == "warning", empty
        assert f"{tmp_path}/docker.sock does not exist" in empty.message and fix in empty.fix
        engine.set_options(name, [f"engine.source={other.parent}"], client)
        (wrong,) = engine_findings()
        other_root = fresh_dockerd.docker("info", "--format", "{{.DockerRootDir}}").stdout
        assert wrong.check == "engine-mount-other-dockerd", wrong
        assert f"another dockerd (data root {other_root.strip()}," in wrong.message
        assert fix in wrong.fix
    finally:
        engine.set_options(name, [f"engine.source={own.parent}"], client)
        verbs.enable(name, timeout=30, client=client)
    (ok,) = engine_findings()
    assert ok.check == "engine-mount", ok
