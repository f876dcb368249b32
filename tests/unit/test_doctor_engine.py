"""``dockplug doctor``'s engine-mount check on real files: the socket dockplug-net's config reads
the Engine API on (``--docker-host unix:///mnt/engine/docker.sock``), looked up under the
engine mount's source as ``docker plugin set`` leaves it. A real dockerd on the other end (the
same one, another one) is tests/integration/test_managed_net.py's part."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from dockplug.packaging.config import config_for_driver
from dockplug.packaging.doctor import check_engine_mount
from dockplug.packaging.doctor_engine import engine_socket_in_plugin, mount_point

NAME = "dpt/net:latest"
OWN = {"ID": "ID1", "DockerRootDir": "/srv/d1/data"}  # the dockerd the doctor asks


def config() -> dict[str, Any]:
    cfg: dict[str, Any] = config_for_driver("net").model_dump(by_alias=True)
    return cfg


def settings(source: str | None, args: list[str] | None = None) -> dict[str, Any]:
    """Settings as ``docker plugin inspect`` shows them after ``engine.source=SOURCE``."""
    cfg = config()
    mounts = [
        {**m, "source": source} if m["name"] == "engine" else m for m in cfg["mounts"]
    ]  # fmt: skip
    return {"Env": [], "Args": args or cfg["args"]["value"], "Mounts": mounts, "Devices": []}


def test_the_managed_net_config_reads_the_engine_api_through_its_engine_mount() -> None:
    cfg = config()
    assert engine_socket_in_plugin(cfg, settings("/run")) == "/mnt/engine/docker.sock"
    engine = next(m for m in cfg["mounts"] if m["name"] == "engine")
    assert engine["source"] == "/run" and engine["destination"] == "/mnt/engine"


def test_a_source_without_docker_sock_is_a_warning_naming_the_setting(tmp_path: Path) -> None:
    own = "/srv/d1/docker.sock"
    (finding,) = check_engine_mount(NAME, config(), settings(str(tmp_path)), OWN, own)
    assert finding.check == "engine-mount-no-socket" and finding.level == "warning"
    assert f"{tmp_path}/docker.sock does not exist" in finding.message
    assert "leak reclaimer then frees nothing" in finding.message
    assert f"docker plugin set {NAME} engine.source=/srv/d1;" in finding.fix
    assert finding.fix.startswith(f"docker plugin disable {NAME}; ")
    # a dockerd whose socket has another name: the args must name it too
    (renamed,) = check_engine_mount(NAME, config(), settings(str(tmp_path)), OWN, "/x/api.sock")
    assert "engine.source=/x" in renamed.fix
    assert '--docker-host unix:///mnt/engine/api.sock"' in renamed.fix
    (plain,) = check_engine_mount(NAME, config(), settings(str(tmp_path)), None, None)
    assert "engine.source=DIR (the folder holding this dockerd's API socket)" in plain.fix


def test_a_file_that_is_not_a_socket_or_a_socket_nobody_serves(tmp_path: Path) -> None:
    (tmp_path / "docker.sock").write_text("")
    (finding,) = check_engine_mount(NAME, config(), settings(str(tmp_path)), OWN, None)
    assert finding.check == "engine-mount-no-socket" and "is not a socket" in finding.message
    (tmp_path / "docker.sock").unlink()
    stale = socket.socket(socket.AF_UNIX)  # bound, never listening: connect is refused
    stale.bind(str(tmp_path / "docker.sock"))
    try:
        (finding,) = check_engine_mount(
            NAME, config(), settings(str(tmp_path)), OWN, None, timeout=2
        )
    finally:
        stale.close()
    assert finding.check == "engine-mount-not-dockerd", finding
    assert f"nothing answers as dockerd on {tmp_path}/docker.sock" in finding.message


def test_no_finding_without_a_unix_docker_host_through_a_mount(tmp_path: Path) -> None:
    cfg = config()
    tcp = ["serve", "net", "--docker-host", "tcp://10.0.0.1:2375"]
    assert check_engine_mount(NAME, cfg, settings(str(tmp_path), tcp), OWN, None) == []
    own_root = ["serve", "net", "--docker-host", "unix:///var/run/docker.sock"]  # not a mount
    assert check_engine_mount(NAME, cfg, settings(str(tmp_path), own_root), OWN, None) == []


def test_mount_point_is_the_deepest_mount_holding_a_path() -> None:
    """What tells a socket on a submount of the source (a plain bind leaves it out)."""
    assert mount_point(Path("/proc/self")) == "/proc"
    assert mount_point(Path("/")) == "/"
    info = (
        "1 0 0:1 / / rw - ext4 x rw\n2 1 0:2 / /run rw - tmpfs t rw\n3 2 0:3 / /run/u rw - t t rw"
    )
    assert mount_point(Path("/run/u/docker.sock"), info) == "/run/u"
    assert mount_point(Path("/run/docker.sock"), info) == "/run"
