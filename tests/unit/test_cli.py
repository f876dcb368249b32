"""The ``dockplug`` command line: every command has help, ``call`` talks like dockerd and
reports failures in one line, ``serve`` refuses bad input in one line, ``ls`` finds plugins."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from stubs import FixedVolumes

import dockplug
from dockplug.cli.main import cli
from dockplug.facts import PLUGIN_DIR
from dockplug.protocol.base import Empty
from dockplug.server import discovery
from dockplug.testing.servers import ThreadedPlugin

REPO = Path(__file__).resolve().parents[2]
HELLO = f"{REPO}/examples/hello_volume.py:HelloDriver"

Serve = Callable[..., ThreadedPlugin]


class Volumes(FixedVolumes):
    def remove(self, req: Any) -> None:
        raise dockplug.VolumeInUse(req.name, 2)

    def get(self, req: Any) -> dockplug.Volume:
        raise dockplug.VolumeNotFound(req.name)

    def list(self, req: Empty) -> list[dockplug.Volume]:
        return [dockplug.Volume(name="listed", mountpoint="/mnt/listed")]


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=stdin, prog_name="dockplug")


def one_line_error(result: Result) -> str:
    """The single stderr line of a failed command (and no traceback anywhere)."""
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def plugin(serve_plugin: Serve) -> ThreadedPlugin:
    return serve_plugin(Volumes())


def socket_path(plugin: ThreadedPlugin) -> str:
    return plugin.url.removeprefix("unix://")


# --- version and help ---------------------------------------------------------------------


def test_version_is_printed() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"dockplug, version {dockplug.__version__}"


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))


ALL_COMMANDS = [(), *command_paths(cli), ("serve", HELLO)]


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "dockplug")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: dockplug")
    assert "Options:" in result.output


def test_every_command_is_covered_by_the_help_test() -> None:
    names = {path[-1] for path in ALL_COMMANDS if path}
    assert {"serve", "local", "call", "ls", "gc"} <= names


# --- call ---------------------------------------------------------------------------------


def test_call_prints_the_json_reply_and_exits_0(plugin: ThreadedPlugin) -> None:
    result = run("call", socket_path(plugin), "VolumeDriver.List")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "Volumes": [{"Name": "listed", "Mountpoint": "/mnt/listed"}]
    }
    assert result.stderr == ""


def test_call_accepts_a_url_and_a_body(plugin: ThreadedPlugin) -> None:
    result = run("call", plugin.url, "VolumeDriver.Create", '{"Name": "v", "Opts": null}')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {}


def test_call_reads_the_body_from_stdin(plugin: ThreadedPlugin) -> None:
    result = run("call", socket_path(plugin), "VolumeDriver.Mount", "-", stdin='{"Name": "v"}')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"Mountpoint": "/mnt"}


def test_call_on_an_error_reply_exits_1_with_one_line(plugin: ThreadedPlugin) -> None:
    result = run("call", socket_path(plugin), "VolumeDriver.Remove", '{"Name": "busy"}')
    assert result.exit_code == 1
    line = one_line_error(result)
    assert line == "dockplug: VolumeDriver.Remove: HTTP 500: volume busy is in use by 2 mounts"
    assert json.loads(result.stdout) == {"Err": "volume busy is in use by 2 mounts"}


def test_call_of_an_unknown_endpoint_exits_1(plugin: ThreadedPlugin) -> None:
    result = run("call", socket_path(plugin), "VolumeDriver.Nope")
    assert "HTTP 404" in one_line_error(result)


def test_call_with_invalid_json_body_fails_clearly(plugin: ThreadedPlugin) -> None:
    result = run("call", socket_path(plugin), "VolumeDriver.Create", "{Name: v}")
    assert result.exit_code != 0
    assert "BODY is not valid JSON" in one_line_error(result)


def test_call_on_a_missing_socket_fails_in_one_line(short_tmp: Path) -> None:
    result = run("call", str(short_tmp / "nothing.sock"), "Plugin.Activate")
    assert result.exit_code == 1
    assert one_line_error(result) == f"dockplug: {short_tmp}/nothing.sock: no such socket"


def test_call_on_a_stale_socket_fails_in_one_line(short_tmp: Path) -> None:
    path = short_tmp / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    result = run("call", str(path), "Plugin.Activate")
    assert result.exit_code == 1
    assert "nothing listens there" in one_line_error(result)


def test_call_on_an_unknown_plugin_name_fails_in_one_line(plugin_name: str) -> None:
    result = run("call", plugin_name, "Plugin.Activate")
    assert result.exit_code == 1
    assert f"no plugin named '{plugin_name}'" in one_line_error(result)


# --- serve --------------------------------------------------------------------------------


def dockplug_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockplug", *args], capture_output=True, text=True, timeout=30
    )


def test_serve_with_an_unknown_driver_fails_in_one_line() -> None:
    proc = dockplug_process("serve", "no-such-driver")
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "unknown driver 'no-such-driver'" in lines[0]


@pytest.mark.parametrize("tcp", ["nonsense", "127.0.0.1:http", "127.0.0.1:70000", "127.0.0.1"])
def test_serve_with_a_bad_tcp_address_fails_in_one_line(short_tmp: Path, tcp: str) -> None:
    proc = dockplug_process(
        "serve", HELLO, "-c", f"base={short_tmp}", "--name", "t", "--tcp", tcp,
        "--spec-dir", str(short_tmp / "spec"),
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"dockplug: --tcp {tcp!r}: expected HOST:PORT, e.g. 127.0.0.1:8080"
    ]
    assert not (short_tmp / "spec").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--socket", "/tmp/x.sock", "--tcp", "127.0.0.1:0"], "--socket and --tcp exclude"),
        (["--tls-cert", __file__], "TLS needs both --tls-cert and --tls-key"),
        (["--tls-cert", __file__, "--tls-key", __file__], "TLS needs --tcp"),
        (["-c", "no-equals-sign"], "expected KEY=VALUE"),
        (["-c", "colour=blue"], "unexpected keyword argument 'colour'"),
        (["--name", "../evil"], "a plugin name is a plain file name"),
    ],
)
def test_serve_refuses_bad_options_in_one_line(
    short_tmp: Path, args: list[str], message: str
) -> None:
    proc = dockplug_process("serve", HELLO, "-c", f"base={short_tmp}", *args)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dockplug: ")
    assert message in lines[0]


def test_serve_with_a_missing_driver_class_fails_in_one_line(short_tmp: Path) -> None:
    proc = dockplug_process("serve", f"{REPO}/examples/hello_volume.py:Nope")
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Nope is not a dockplug driver class" in proc.stderr


# --- ls -----------------------------------------------------------------------------------


@pytest.fixture
def discoverable(serve_plugin: Serve, plugin_name: str) -> Iterator[ThreadedPlugin]:
    """A plugin on /run/docker/plugins/NAME.sock, where dockerd (and ``ls``) look."""
    path = PLUGIN_DIR / f"{plugin_name}.sock"
    try:
        yield serve_plugin(Volumes(), name=plugin_name, socket=path)
    finally:
        path.unlink(missing_ok=True)


def test_ls_lists_a_plugin_socket_with_what_it_implements(
    discoverable: ThreadedPlugin, plugin_name: str
) -> None:
    result = run("ls", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows[plugin_name] == {
        "name": plugin_name,
        "kind": "legacy sock",
        "address": f"unix://{PLUGIN_DIR}/{plugin_name}.sock",
        "implements": "VolumeDriver",
        "status": "ok",
    }


def test_ls_table_shows_the_plugin_and_its_protocols(
    discoverable: ThreadedPlugin, plugin_name: str
) -> None:
    result = run("ls")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if plugin_name in line)
    assert "VolumeDriver" in line
    assert line.split()[0] == plugin_name


def test_ls_reports_a_stale_socket_as_stale(plugin_name: str) -> None:
    path = PLUGIN_DIR / f"{plugin_name}.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
    stale.bind(str(path))
    stale.close()
    try:
        result = run("ls", "--json")
        assert result.exit_code == 0, result.output
        rows = {row["name"]: row for row in json.loads(result.stdout)}
        assert rows[plugin_name]["status"] == "stale (nothing listens)"
    finally:
        path.unlink(missing_ok=True)


class NotHTTP:
    """A unix socket whose listener answers every connection with an SSH banner."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def discovery_dirs(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """``ls`` scans these instead of /run/docker/plugins and /etc/docker/plugins."""
    socket_dir, spec_dir = short_tmp / "run", short_tmp / "etc"
    socket_dir.mkdir()
    spec_dir.mkdir()
    scan = functools.partial(discovery.scan, socket_dir=socket_dir, spec_dirs=(spec_dir,))
    monkeypatch.setattr(discovery, "scan", scan)
    return socket_dir, spec_dir


def test_call_on_a_socket_that_does_not_speak_http_fails_in_one_line(short_tmp: Path) -> None:
    path = short_tmp / "ssh.sock"
    other = NotHTTP(path)
    try:
        result = run("call", str(path), "Plugin.Activate")
    finally:
        other.close()
    assert result.exit_code == 1
    assert "did not answer with HTTP" in one_line_error(result)


def test_ls_lists_what_it_can_and_flags_what_it_cannot_use(
    serve_plugin: Serve, discovery_dirs: tuple[Path, Path]
) -> None:
    socket_dir, spec_dir = discovery_dirs
    serve_plugin(Volumes(), name="good", socket=socket_dir / "good.sock")
    other = NotHTTP(socket_dir / "ssh.sock")
    (spec_dir / "pipe.spec").write_text("npipe:////./pipe/docker_plugin\n")  # a Windows address
    (spec_dir / "array.json").write_text('["https://127.0.0.1:1"]\n')
    (spec_dir / "broken.json").write_text("{Addr: ")
    try:
        result = run("ls", "--json")
    finally:
        other.close()
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["good"]["implements"] == "VolumeDriver"
    assert rows["good"]["status"] == "ok"
    assert rows["ssh"]["status"].startswith("error: ")
    assert rows["pipe"]["status"].startswith("error: ")
    assert "array" not in rows and "broken" not in rows  # dockerd cannot read them either
