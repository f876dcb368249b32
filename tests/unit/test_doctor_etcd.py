"""``dockplug doctor``'s etcd check against a real etcd and a closed port: the plugin's
effective ETCD_ENDPOINTS (Env or --etcd in its args, as dockerd's Settings hold them) probed
from this host, one finding per problem."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from dockplug.packaging.config import config_for_driver
from dockplug.packaging.doctor import check_etcd, plugin_path_on_host
from dockplug.testing.etcd import EtcdServer

NAME = "dpt/net:latest"


def config() -> dict[str, Any]:
    cfg: dict[str, Any] = config_for_driver("net").model_dump(by_alias=True)
    return cfg


def settings(*env: str, args: list[str] | None = None, mounts: Any = None) -> dict[str, Any]:
    """Settings as ``docker plugin inspect`` shows them after ``docker plugin set``."""
    cfg = config()
    values = {e["name"]: e.get("value") or "" for e in cfg["env"]}
    for item in env:
        key, _, value = item.partition("=")
        values[key] = value
    return {
        "Env": [f"{k}={v}" for k, v in values.items()],
        "Args": args if args is not None else cfg["args"]["value"],
        "Mounts": mounts if mounts is not None else cfg["mounts"],
        "Devices": [],
    }


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


def checks(findings: list[Any]) -> list[str]:
    return [f.check for f in findings]


def test_unset_endpoints_warn_that_the_plugin_is_on_sqlite() -> None:
    (finding,) = check_etcd(NAME, config(), settings())
    assert finding.check == "etcd-unset" and finding.level == "warning"
    assert "SQLite" in finding.message
    assert f"docker plugin set {NAME} ETCD_ENDPOINTS=" in finding.fix


def test_a_plugin_without_etcd_settings_is_not_checked() -> None:
    cfg = config_for_driver("local").model_dump(by_alias=True)
    assert check_etcd(NAME, cfg, {"Env": [], "Args": cfg["args"]["value"]}) == []


def test_a_malformed_endpoint_is_an_error_naming_the_value() -> None:
    (finding,) = check_etcd(NAME, config(), settings("ETCD_ENDPOINTS=127.0.0.1:2379"))
    assert finding.check == "etcd-endpoint-malformed" and finding.level == "error"
    assert "'127.0.0.1:2379'" in finding.message and "http(s)://HOST:PORT" in finding.fix


def test_a_live_etcd_answers(etcd: EtcdServer) -> None:
    (finding,) = check_etcd(NAME, config(), settings(f"ETCD_ENDPOINTS={etcd.endpoint}"))
    assert finding.check == "etcd-answering" and finding.level == "info", finding
    assert etcd.endpoint in finding.message and "revision" in finding.message


def test_a_closed_port_is_unreachable_fast(etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    findings = check_etcd(NAME, config(), settings(f"ETCD_ENDPOINTS={etcd.endpoint},{dead}"))
    assert time.monotonic() - t0 < 5
    assert checks(findings) == ["etcd-answering", "etcd-unreachable"], findings
    assert dead in findings[1].message and "unreachable" in findings[1].message, findings[1]
    assert findings[1].level == "error"


def test_etcd_in_args_wins_over_the_env(etcd: EtcdServer) -> None:
    """--etcd in args is what click uses, whatever ETCD_ENDPOINTS says: the check follows it."""
    dead = f"http://127.0.0.1:{closed_port()}"
    args = [*config()["args"]["value"], "--etcd", etcd.endpoint]
    findings = check_etcd(NAME, config(), settings(f"ETCD_ENDPOINTS={dead}", args=args))
    assert checks(findings) == ["etcd-answering"], findings
    findings = check_etcd(NAME, config(), settings(args=[*args[:-2], f"--etcd={dead}"]))
    assert checks(findings) == ["etcd-unreachable"], findings


def test_tls_files_missing_inside_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    mounts = [*config()["mounts"], {"name": "pki", "source": str(tmp_path),
                                    "destination": "/etc/etcd-pki", "type": "bind"}]  # fmt: skip
    findings = check_etcd(
        NAME, config(),
        settings("ETCD_ENDPOINTS=https://127.0.0.1:2379", "ETCD_CA=/etc/etcd-pki/ca.pem",
                 "ETCD_CERT=/etc/etcd-pki/client.pem", "ETCD_KEY=/etc/nowhere/key.pem",
                 mounts=mounts),
        rootfs=tmp_path / "rootfs",
    )  # fmt: skip
    assert checks(findings) == ["etcd-tls-missing", "etcd-tls-missing"], findings
    assert "ETCD_CERT=/etc/etcd-pki/client.pem" in findings[0].message
    assert str(tmp_path / "client.pem") in findings[0].message
    assert "ETCD_KEY=/etc/nowhere/key.pem" in findings[1].message
    assert "bind-mount" in findings[1].fix


def test_plugin_paths_map_through_the_deepest_mount(tmp_path: Path) -> None:
    mounts = [{"source": "/a", "destination": "/mnt"}, {"source": "/b", "destination": "/mnt/x"}]
    assert plugin_path_on_host("/mnt/x/ca.pem", mounts, tmp_path) == Path("/b/ca.pem")
    assert plugin_path_on_host("/mnt/y", mounts, tmp_path) == Path("/a/y")
    assert plugin_path_on_host("/etc/ca.pem", mounts, tmp_path) == tmp_path / "etc/ca.pem"
    assert plugin_path_on_host("/etc/ca.pem", mounts, None) is None


@pytest.mark.timeout(30)
def test_a_paused_etcd_times_out_with_the_reason(etcd_server: Any) -> None:
    server = etcd_server("3.4")
    with server.paused():
        t0 = time.monotonic()
        findings = check_etcd(NAME, config(), settings(f"ETCD_ENDPOINTS={server.endpoint}"),
                              timeout=1.0)  # fmt: skip
        assert time.monotonic() - t0 < 4
    assert checks(findings) == ["etcd-unreachable"], findings
    assert "within 1 s" in findings[0].message and "timed out" in findings[0].message, findings[0]
