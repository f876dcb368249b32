"""dockplug-net as dockerd meets it: the IPAM conformance checks on both stores, and calls that
stay bounded and clear while etcd is away, with releases queued and sent when it returns."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from dockplug.cli.main import cli
from dockplug.conformance import Report
from dockplug.drivers.ipam.driver import NetDriver, parse_duration
from dockplug.errors import ConfigError
from dockplug.protocol.ipam import RequestAddressRequest, RequestPoolRequest
from dockplug.testing.etcd import EtcdServer
from dockplug.testing.pki import Certificates
from dockplug.testing.servers import ThreadedPlugin, wait_until

GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}
_P = "IpamDriver."


def driver(tmp: Path, etcd: str | None = None, **kw: object) -> NetDriver:
    return NetDriver(
        state_dir=tmp / "state",
        etcd=etcd,
        host_id="h1",
        key_prefix=f"/test-{uuid.uuid4().hex[:8]}",
        docker_host="unix:///nonexistent/docker.sock",
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("etcd", id="etcd-3.4", marks=pytest.mark.etcd),
        pytest.param("etcd35", id="etcd-3.5", marks=pytest.mark.etcd),
    ],
)
def test_dockplug_check_ipam_passes(
    backend: str,
    request: pytest.FixtureRequest,
    short_tmp: Path,
    serve_plugin: Callable[..., ThreadedPlugin],
    conformance: Callable[..., Report],
) -> None:
    etcd = None if backend == "sqlite" else request.getfixturevalue(backend).endpoint
    plugin = serve_plugin(driver(short_tmp, etcd), name="dockplug-net")
    report = conformance(plugin.url, kind="ipam")
    assert report.ok, report.failures()
    with plugin.client() as c:
        caps = c.call(_P + "GetCapabilities").json
    # state persists (no replay); no MAC: dockerd would invent one, and ipvlan refuses any
    assert caps == {"RequiresMACAddress": False, "RequiresRequestReplay": False}


@pytest.mark.etcd
def test_etcd_away_fails_fast_and_queues_releases(
    etcd_server: Callable[..., EtcdServer],
    short_tmp: Path,
    serve_plugin: Callable[..., ThreadedPlugin],
) -> None:
    server = etcd_server("3.4")
    net = driver(short_tmp, server.endpoint)
    plugin = serve_plugin(net, name="dockplug-net", metrics=f"unix:{short_tmp / 'metrics.sock'}")
    health = plugin.server.health.report  # what /health and dockplug status answer
    with plugin.client() as c:
        pool = c.call(_P + "RequestPool", {"AddressSpace": "LocalDefault", "Pool": "10.70.0.0/24"})
        pid = pool.json["PoolID"]
        c.call(_P + "RequestAddress", {"PoolID": pid, "Address": "", "Options": GATEWAY})
        held = c.call(_P + "RequestAddress", {"PoolID": pid, "Address": ""}).json["Address"]
        with server.paused():  # SIGSTOP: sockets open, no answer: the deadline must catch it
            started = time.monotonic()
            reply = c.call(_P + "RequestAddress", {"PoolID": pid, "Address": ""})
            took = time.monotonic() - started
            assert reply.status == 500 and took < 6.0, (reply.status, took)
            assert reply.error.startswith("dockplug-net RequestAddress in 10.70.0.0/24: etcd at")
            assert "check the etcd members" in reply.error
            # the next call fails at once with the same reason, not after another deadline
            started = time.monotonic()
            again = c.call(_P + "RequestAddress", {"PoolID": pid, "Address": ""})
            assert again.status == 500 and time.monotonic() - started < 1.0
            assert "is away; nothing was changed" in again.error
            # a release never fails dockerd: it is queued (and kept on disk)
            release = c.call(_P + "ReleaseAddress", {"PoolID": pid, "Address": held.split("/")[0]})
            assert release.status == 200 and release.error is None
            assert (short_tmp / "state/pending-releases.json").read_text() != "[]"
            report = health()
            assert report["status"] == "degraded" and "IPAM store away" in report["reasons"][0]
            metrics = plugin.server.metrics.exposition().decode()  # type: ignore[attr-defined]
            assert "dockplug_ipam_store_up 0.0" in metrics
            assert "dockplug_ipam_queued_releases 1.0" in metrics
            assert (
                'dockplug_ipam_store_call_duration_seconds_count{result="unavailable"} 1.0'
                in metrics
            )
        # etcd is back: the queued release is sent, and the address is free again
        assert wait_until(
            lambda: (short_tmp / "state/pending-releases.json").read_text() == "[]", 15
        )
        got = c.call(_P + "RequestAddress", {"PoolID": pid, "Address": held.split("/")[0]})
        assert got.status == 200, got.error
        assert health()["status"] == "ready"
        assert "dockplug_ipam_store_up 1.0" in plugin.server.metrics.exposition().decode()  # type: ignore[attr-defined]


def test_settings_are_checked_with_the_fix_named(tmp_path: Path) -> None:
    assert parse_duration("30s") == 30 and parse_duration("10m") == 600
    assert parse_duration("1.5h") == 5400 and parse_duration("90") == 90
    with pytest.raises(ConfigError, match="--reclaim-after 'soon'"):
        parse_duration("soon")
    with pytest.raises(ConfigError, match="--host-id"):
        NetDriver(state_dir=tmp_path, host_id="bad/name")
    with pytest.raises(ConfigError, match="--etcd"):
        NetDriver(state_dir=tmp_path, etcd_ca=tmp_path / "ca.pem")


@pytest.mark.etcd
def test_etcd_with_tls_client_certificates(
    etcd_server: Callable[..., EtcdServer], certificates: Certificates, tmp_path: Path
) -> None:
    server = etcd_server("3.4", tls=certificates)

    async def main() -> None:
        d = NetDriver(
            state_dir=tmp_path, etcd=server.endpoint, host_id="h1",
            etcd_ca=certificates.ca, etcd_cert=certificates.client_cert,
            etcd_key=certificates.client_key,
        )  # fmt: skip
        try:
            pool = await d.request_pool(
                RequestPoolRequest(address_space="LocalDefault", pool="10.71.0.0/24")
            )
            got = await d.request_address(RequestAddressRequest(pool_id=pool.pool_id))
            assert got.address == "10.71.0.1/24"
        finally:
            await d.store.close()

    asyncio.run(main())


def test_net_status_and_gc_read_the_store_when_no_plugin_runs(tmp_path: Path) -> None:
    async def allocate() -> None:
        d = NetDriver(state_dir=tmp_path, host_id="h1")
        try:
            pool = await d.request_pool(
                RequestPoolRequest(address_space="LocalDefault", pool="10.72.0.0/24")
            )
            await d.request_address(RequestAddressRequest(pool_id=pool.pool_id, options=GATEWAY))
            await d.request_address(RequestAddressRequest(pool_id=pool.pool_id))
        finally:
            await d.store.close()

    asyncio.run(allocate())
    base = ["--plugin", "none", "--state-dir", str(tmp_path), "--host-id", "h1"]
    shown = CliRunner().invoke(cli, ["net", "status", *base, "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)  # engine sync notes go to stderr
    (pool,) = report["pools"]
    assert pool["pool"] == "10.72.0.0/24" and pool["gateway"] == "10.72.0.1"
    assert pool["allocated"] == {"h1": 1} and pool["users"] == {"h1": 1}
    table = CliRunner().invoke(cli, ["net", "status", *base])
    assert "10.72.0.0/24" in table.output and "shared" in table.output
    # no Engine API to ask: gc says so and frees nothing
    gc = CliRunner().invoke(
        cli, ["net", "gc", *base, "--dry-run", "--docker-host", "unix:///nonexistent.sock"]
    )
    assert "nothing stale" in gc.output and "Engine API" in gc.output
