"""Binding, announcing, serving and stopping as dockerd and systemd expect (plugin-protocol.md
§1.2-1.4, §1.11): the socket is 0660, a live socket is never stolen, discovery files appear
while the plugin serves and vanish after it stops, and SIGTERM lets in-flight calls finish."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from stubs import FixedVolumes

from dockplug.client import PluginClient
from dockplug.errors import ConfigError
from dockplug.facts import PLUGIN_DIR
from dockplug.facts import UNIX_PATH_MAX as SOCKET_PATH_MAX
from dockplug.protocol.volume import MountRequest
from dockplug.server import discovery
from dockplug.server.runner import ServeOptions, TLSSettings
from dockplug.testing.servers import SubprocessPlugin, ThreadedPlugin

REPO = Path(__file__).resolve().parents[2]
HELLO = f"{REPO}/examples/hello_volume.py:HelloDriver"

Serve = Callable[..., ThreadedPlugin]
Connect = Callable[..., Any]  # the raw_connection fixture (conftest.py)


Volumes = FixedVolumes


def answers(url_or_path: str | Path) -> bool:
    target = str(url_or_path)
    with PluginClient(target if "://" in target else f"unix://{target}", timeout=2) as c:
        return c.call("Plugin.Activate").json == {"Implements": ["VolumeDriver"]}


def listening_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    return sock


# --- the unix socket ----------------------------------------------------------------------


def test_socket_is_created_with_mode_0660(serve_plugin: Serve, short_tmp: Path) -> None:
    path = short_tmp / "p.sock"
    serve_plugin(Volumes(), socket=path)
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


def test_missing_parent_directories_are_created(serve_plugin: Serve, short_tmp: Path) -> None:
    path = short_tmp / "a" / "b" / "p.sock"
    plugin = serve_plugin(Volumes(), socket=path)
    assert answers(path)
    assert plugin.url == f"unix://{path}"


def test_stale_socket_file_is_replaced(serve_plugin: Serve, short_tmp: Path) -> None:
    path = short_tmp / "p.sock"
    listening_socket(path).close()  # the file stays behind, nothing listens
    assert path.is_socket()
    serve_plugin(Volumes(), socket=path)
    assert answers(path)


def test_live_socket_is_refused_and_left_alone(serve_plugin: Serve, short_tmp: Path) -> None:
    path = short_tmp / "p.sock"
    other = listening_socket(path)
    try:
        inode = path.stat().st_ino
        with pytest.raises(ConfigError, match="already listening"):
            serve_plugin(Volumes(), socket=path)
        assert path.stat().st_ino == inode
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(path))  # the other listener still gets its connections
        probe.close()
    finally:
        other.close()


def test_regular_file_at_the_socket_path_is_refused(serve_plugin: Serve, short_tmp: Path) -> None:
    path = short_tmp / "p.sock"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"):
        serve_plugin(Volumes(), socket=path)
    assert path.read_text() == "precious"


def test_socket_path_over_107_bytes_is_refused_clearly(
    serve_plugin: Serve, short_tmp: Path
) -> None:
    path = short_tmp / ("x" * (SOCKET_PATH_MAX + 1 - len(f"{short_tmp}/.sock")) + ".sock")
    assert len(str(path)) == 108
    with pytest.raises(ConfigError, match=r"108 bytes.*at most 107"):
        serve_plugin(Volumes(), socket=path)
    assert not path.exists()


def test_socket_path_of_exactly_107_bytes_is_served(serve_plugin: Serve, short_tmp: Path) -> None:
    path = short_tmp / ("x" * (SOCKET_PATH_MAX - len(f"{short_tmp}/.sock")) + ".sock")
    assert len(str(path)) == 107
    serve_plugin(Volumes(), socket=path)
    assert answers(path)


# --- discovery files ----------------------------------------------------------------------


def test_spec_file_announces_a_non_default_socket_and_goes_away_on_stop(
    short_tmp: Path,
) -> None:
    path, spec_dir = short_tmp / "p.sock", short_tmp / "spec"
    with ThreadedPlugin(Volumes(), ServeOptions(name="dp1", socket=path, spec_dir=spec_dir)):
        spec = spec_dir / "dp1.spec"
        assert spec.read_text() == f"unix://{path}\n"
        address = discovery.find("dp1", socket_dir=short_tmp / "none", spec_dirs=(spec_dir,))
        assert answers(address.url)
    assert not spec.exists()
    assert not path.exists()
    assert list(spec_dir.iterdir()) == []


def test_default_socket_needs_no_discovery_file(short_tmp: Path, plugin_name: str) -> None:
    spec_dir = short_tmp / "spec"
    path = PLUGIN_DIR / f"{plugin_name}.sock"
    try:
        with ThreadedPlugin(Volumes(), ServeOptions(name=plugin_name, spec_dir=spec_dir)) as p:
            assert p.url == f"unix://{path}"
            assert answers(path)
            assert not spec_dir.exists() or list(spec_dir.iterdir()) == []
        assert not path.exists()
    finally:
        path.unlink(missing_ok=True)


def test_tcp_plugin_is_announced_by_a_spec_file(short_tmp: Path) -> None:
    spec_dir = short_tmp / "spec"
    with ThreadedPlugin(
        Volumes(), ServeOptions(name="dp2", tcp="127.0.0.1:0", spec_dir=spec_dir)
    ) as p:
        port = int(p.url.rsplit(":", 1)[1])
        assert port > 0
        spec = spec_dir / "dp2.spec"
        assert spec.read_text() == f"tcp://127.0.0.1:{port}\n"
        assert answers(spec.read_text().strip())
    assert not spec.exists()


def test_tls_plugin_is_announced_by_a_json_file_with_its_tls_config(
    short_tmp: Path, certificates: Any
) -> None:
    spec_dir = short_tmp / "spec"
    tls = TLSSettings(
        cert=certificates.server_cert, key=certificates.server_key, ca=certificates.ca
    )
    opts = ServeOptions(name="dp3", tcp="127.0.0.1:0", tls=tls, spec_dir=spec_dir)
    with ThreadedPlugin(Volumes(), opts) as p:
        port = int(p.url.rsplit(":", 1)[1])
        announced = spec_dir / "dp3.json"
        data = json.loads(announced.read_text())
        assert data["Addr"] == f"https://127.0.0.1:{port}"
        assert data["TLSConfig"] == {"InsecureSkipVerify": False, "CAFile": str(certificates.ca)}
        assert not (spec_dir / "dp3.spec").exists()  # a .spec file cannot carry the CA
    assert not announced.exists()


def test_tls_over_a_unix_socket_is_refused(short_tmp: Path, certificates: Any) -> None:
    tls = TLSSettings(cert=certificates.server_cert, key=certificates.server_key)
    with pytest.raises(ConfigError, match="TLS needs --tcp"):
        ThreadedPlugin(
            Volumes(), ServeOptions(name="dp4", socket=short_tmp / "p.sock", tls=tls)
        ).start()


@pytest.mark.parametrize(
    ("announce", "written"),
    [("auto", {"dp6.spec"}), ("spec", {"dp6.spec"}), ("json", {"dp6.json"}), ("none", set())],
)
def test_announce_mode_decides_the_discovery_file(
    short_tmp: Path, announce: str, written: set[str]
) -> None:
    path, spec_dir = short_tmp / "p.sock", short_tmp / "spec"
    opts = ServeOptions(name="dp6", socket=path, spec_dir=spec_dir, announce=announce)
    with ThreadedPlugin(Volumes(), opts):
        files = {p.name for p in spec_dir.iterdir()} if spec_dir.exists() else set()
        assert files == written
        for name in files:
            reader = discovery.read_spec if name.endswith(".spec") else discovery.read_json
            assert reader(spec_dir / name, "dp6").url == f"unix://{path}"
    assert not spec_dir.exists() or list(spec_dir.iterdir()) == []


def test_advertised_address_is_what_the_spec_file_announces(short_tmp: Path) -> None:
    spec_dir = short_tmp / "spec"
    opts = ServeOptions(
        name="dp7", tcp="127.0.0.1:0", advertise="plugins.example:9000", spec_dir=spec_dir
    )
    with ThreadedPlugin(Volumes(), opts):
        assert (spec_dir / "dp7.spec").read_text() == "tcp://plugins.example:9000\n"


def test_ipv6_loopback_is_served_and_announced_in_brackets(short_tmp: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    spec_dir = short_tmp / "spec"
    try:
        plugin = ThreadedPlugin(
            Volumes(), ServeOptions(name="dp8", tcp="[::1]:0", spec_dir=spec_dir)
        )
        plugin.start()
    except ConfigError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        port = int(plugin.url.rsplit(":", 1)[1])
        assert plugin.url == f"tcp://[::1]:{port}"
        assert (spec_dir / "dp8.spec").read_text() == f"tcp://[::1]:{port}\n"
        assert answers(plugin.url)
    finally:
        plugin.stop()


def test_stop_is_prompt_although_clients_keep_idle_connections(
    serve_plugin: Serve, raw_connection: Connect
) -> None:
    # dockerd before 29.4.1 keeps idle plugin connections open forever
    plugin = serve_plugin(Volumes())
    used = raw_connection(plugin.url)
    assert used.post("/Plugin.Activate").status == 200
    raw_connection(plugin.url)  # connected, never sends anything
    began = time.monotonic()
    plugin.stop()
    assert time.monotonic() - began < 2


# --- a real `dockplug serve` process ---------------------------------------------------------

SLOW_DRIVER = '''
import time
from pathlib import Path

import dockplug


class SlowDriver(dockplug.VolumeDriver):
    """Mount takes 1.5 s and leaves a marker file when it starts."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def mount(self, req):
        self.marker.write_text(req.name)
        time.sleep(1.5)
        return "/mnt/" + req.name

    def create(self, req): pass
    def remove(self, req): pass
    def unmount(self, req): pass
    def path(self, req): return "/mnt/" + req.name
    def get(self, req): return dockplug.Volume(name=req.name)
    def list(self, req): return []
'''


@pytest.fixture
def subprocesses() -> Iterator[list[SubprocessPlugin]]:
    started: list[SubprocessPlugin] = []
    yield started
    for plugin in started:
        if plugin.proc is not None and plugin.proc.poll() is None:
            plugin.kill()


def test_serve_process_answers_announces_and_cleans_up_on_sigterm(
    short_tmp: Path, subprocesses: list[SubprocessPlugin]
) -> None:
    path, spec_dir, base = short_tmp / "h.sock", short_tmp / "spec", short_tmp / "vols"
    plugin = SubprocessPlugin(
        ["serve", HELLO, "-c", f"base={base}", "--name", "hello-t", "--socket", str(path),
         "--spec-dir", str(spec_dir)],
        wait_for=path,
    )  # fmt: skip
    subprocesses.append(plugin.start())
    print(f"dockplug serve answered {plugin.started_in:.2f} s after the process started")
    assert plugin.started_in < 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert (spec_dir / "hello-t.spec").read_text() == f"unix://{path}\n"
    with PluginClient(str(path)) as client:
        assert client.call("VolumeDriver.Create", {"Name": "v1", "Opts": None}).status == 200
        assert client.call("VolumeDriver.List", {}).json["Volumes"][0]["Name"] == "v1"
    assert plugin.stop(signal.SIGTERM) == 0
    assert not path.exists()
    assert not (spec_dir / "hello-t.spec").exists()
    assert "hello-t stopped" in plugin.output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_lets_the_request_in_flight_finish(
    short_tmp: Path, subprocesses: list[SubprocessPlugin], sig: signal.Signals
) -> None:
    module, marker = short_tmp / "slow_driver.py", short_tmp / "mount-started"
    module.write_text(SLOW_DRIVER)
    path, spec_dir = short_tmp / "s.sock", short_tmp / "spec"
    plugin = SubprocessPlugin(
        ["serve", f"{module}:SlowDriver", "-c", f"marker={marker}", "--name", "slow",
         "--socket", str(path), "--spec-dir", str(spec_dir)],
        wait_for=path,
    )  # fmt: skip
    subprocesses.append(plugin.start())
    replies: list[Any] = []

    def slow_mount() -> None:
        with PluginClient(str(path), timeout=20) as client:
            replies.append(client.call("VolumeDriver.Mount", {"Name": "m", "ID": "1"}))

    caller = threading.Thread(target=slow_mount)
    caller.start()
    deadline = time.monotonic() + 5
    while not marker.exists():
        assert time.monotonic() < deadline, plugin.output
        time.sleep(0.01)
    os.kill(plugin.pid, sig)
    caller.join(10)
    assert plugin.stop(sig, timeout=10) == 0, plugin.output
    assert replies and replies[0].status == 200, plugin.output
    assert replies[0].json == {"Mountpoint": "/mnt/m"}
    assert not path.exists()
    assert not (spec_dir / "slow.spec").exists()


# Exec into `python -m dockplug` with the inherited socket on fd 3 and LISTEN_PID set to the
# pid that will serve (exec keeps it), as systemd does. Python rather than `sh -c '... 3<&N'`
# because dash only redirects single-digit descriptors and N is often larger under pytest.
SYSTEMD_EXEC = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'dockplug', *sys.argv[2:]])\n"
)


def test_systemd_socket_activation_serves_the_inherited_socket(
    short_tmp: Path, subprocesses: list[SubprocessPlugin], plugin_name: str
) -> None:
    path, spec_dir = short_tmp / "sd.sock", short_tmp / "spec"
    listener = listening_socket(path)
    try:
        fd = listener.fileno()
        plugin = SubprocessPlugin(
            ["serve", HELLO, "-c", f"base={short_tmp / 'vols'}", "--name", plugin_name,
             "--spec-dir", str(spec_dir)],
            wait_for=path,
            env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "plugin"},
            pass_fds=[fd],
            cmd=[sys.executable, "-c", SYSTEMD_EXEC, str(fd)],
        )  # fmt: skip
        subprocesses.append(plugin.start())
        assert answers(path)
        assert f"on unix://{path}" in plugin.output
        # nothing else was bound or announced
        assert not (PLUGIN_DIR / f"{plugin_name}.sock").exists()
        assert not spec_dir.exists()
        assert plugin.stop() == 0, plugin.output
        assert path.is_socket()  # the socket belongs to systemd: left in place
    finally:
        listener.close()


class StuckMount(Volumes):
    """Mount blocks until the test lets it go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def mount(self, req: MountRequest) -> str:
        self.entered.set()
        self.release.wait(30)
        return "/mnt"


def refuses_connections(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        return True
    finally:
        probe.close()
    return False


def test_a_draining_plugin_never_removes_its_successors_socket_or_spec(short_tmp: Path) -> None:
    """A plugin stopping with a call in flight stops listening at once; a new instance may bind
    the path meanwhile, and the old one's clean-up must leave the new files alone."""
    path, spec_dir = short_tmp / "p.sock", short_tmp / "spec"
    stuck = StuckMount()
    old = ThreadedPlugin(stuck, ServeOptions(name="dp5", socket=path, spec_dir=spec_dir)).start()
    replies: list[Any] = []
    caller = threading.Thread(
        target=lambda: replies.append(old.client().call("VolumeDriver.Mount", {"Name": "m"}))
    )
    caller.start()
    try:
        assert stuck.entered.wait(5)
        old.server.stop()
        deadline = time.monotonic() + 5
        while not refuses_connections(path):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        successor = ServeOptions(name="dp5", socket=path, spec_dir=spec_dir)
        with ThreadedPlugin(Volumes(), successor) as new:
            stuck.release.set()
            caller.join(10)
            old.stop()
            assert replies[0].status == 200  # the old instance finished its call...
            assert answers(path)  # ...and left the new one's socket...
            assert (spec_dir / "dp5.spec").read_text() == f"unix://{path}\n"  # ...and spec
            assert new.url == f"unix://{path}"
        assert not path.exists()
        assert not (spec_dir / "dp5.spec").exists()
    finally:
        stuck.release.set()
        caller.join(10)
        old.stop()
