"""``dockplug systemd``: the generated units say what systemd needs, and the service line really
serves the plugin on the socket systemd hands it (played by systemd-socket-activate)."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from dockplug.cli.main import cli
from dockplug.cli.systemd import units
from dockplug.client import PluginClient
from dockplug.errors import ConfigError
from dockplug.testing.servers import wait_until


def _parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_units_start_the_plugin_before_dockerd_on_its_socket() -> None:
    texts = units("dp-vols", ["serve", "local", "--base-dir", "/srv/my vols"], group="docker")
    sock, svc = _parse(texts["dp-vols.socket"]), _parse(texts["dp-vols.service"])
    assert sock["Socket"]["ListenStream"] == "/run/docker/plugins/dp-vols.sock"
    assert (sock["Socket"]["SocketMode"], sock["Socket"]["SocketGroup"]) == ("0660", "docker")
    assert sock["Unit"]["Before"] == svc["Unit"]["Before"] == "docker.service"
    assert svc["Unit"]["Requires"] == "dp-vols.socket"
    argv = shlex.split(svc["Service"]["ExecStart"])
    assert argv[1:] == ["-m", "dockplug", "serve", "local", "--base-dir", "/srv/my vols",
                        "--name", "dp-vols"]  # fmt: skip
    odd = units("dp-vols", ["serve", "x.py:Driver", "-c", "path=/a%b$HOME"])
    assert "path=/a%%b$$HOME" in odd["dp-vols.service"]  # literal for systemd


@pytest.mark.parametrize(
    ("name", "command", "message"),
    [
        ("a/b", ["serve", "local"], "a plain file name"),
        ("dp", [], "starting with serve"),
        ("dp", ["check", "x"], "starting with serve"),
    ],
)
def test_units_refuse_what_cannot_work(name: str, command: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        units(name, command)


def test_cli_writes_both_units(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["systemd", "--name", "dp-vols", "-o", str(tmp_path), "--", "serve", "local"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dp-vols.service", "dp-vols.socket"]
    assert "systemctl enable --now dp-vols.socket" in result.output


@pytest.mark.skipif(os.geteuid() != 0, reason="the socket lives in /run/docker/plugins (root)")
@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate (package systemd) is not installed",
)
def test_the_service_line_serves_on_the_socket_systemd_passes(
    short_tmp: Path, plugin_name: str
) -> None:
    texts = units(
        plugin_name,
        ["serve", "local", "--base-dir", str(short_tmp / "v"), "--state-dir", str(short_tmp / "s")],
    )
    listen = _parse(texts[f"{plugin_name}.socket"])["Socket"]["ListenStream"]
    argv = shlex.split(_parse(texts[f"{plugin_name}.service"])["Service"]["ExecStart"])
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", listen, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_until(Path(listen).exists, 10.0, 0.02), "the socket never appeared"
        # the first connection starts the plugin on the inherited socket, like systemd does
        with PluginClient(listen, timeout=20) as client:
            assert client.call("Plugin.Activate").json == {"Implements": ["VolumeDriver"]}
            assert client.call("VolumeDriver.Create", {"Name": "v1", "Opts": None}).error is None
            assert client.call("VolumeDriver.Get", {"Name": "v1"}).error is None
        assert (short_tmp / "v" / "v1").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        Path(listen).unlink(missing_ok=True)  # systemd's RemoveOnStop would do this
    assert proc.returncode == 0, out.decode(errors="replace")
    assert b"stopped" in out
