"""The sshfs driver against a real sshd on 127.0.0.1 and real FUSE (issue 5), served over its
socket as dockerd uses it: key and password auth, one FUSE mount per volume shared by its mount
IDs, no secret in any reply or log line, clear errors, and a plugin killed with a live mount."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dockplug.client import PluginClient, Reply
from dockplug.drivers.volume import mountinfo
from dockplug.drivers.volume.sshfs import SshfsDriver
from dockplug.testing.servers import SubprocessPlugin, ThreadedPlugin, free_port
from dockplug.testing.sshd import Sshd

pytestmark = pytest.mark.root

Serve = Callable[..., ThreadedPlugin]


def mounts_on(path: Path | str) -> int:
    with open("/proc/self/mountinfo") as fh:
        return sum(1 for line in fh if line.split()[4] == str(path))


def unmount_everything_under(root: Path) -> None:
    for point in sorted(mountinfo.mount_points(), key=len, reverse=True):
        if point.startswith(f"{root}/"):
            subprocess.run(["fusermount", "-uz", point], capture_output=True)


def sshfs_pid(mountpoint: Path) -> int | None:
    """The sshfs process serving ``mountpoint`` (found by its command line)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"sshfs") and str(mountpoint).encode() in argv:
            return int(entry.name)
    return None


class Plugin:
    """Speaks to a served sshfs driver (in-process or a subprocess) like dockerd does."""

    def __init__(self, client: PluginClient, lines: list[str] | None = None) -> None:
        self.client = client
        self.lines = lines if lines is not None else []

    def call(self, endpoint: str, body: Any = None) -> Reply:
        return self.client.call(endpoint, body)

    def ok(self, endpoint: str, body: Any = None) -> Any:
        reply = self.call(endpoint, body)
        assert reply.status == 200 and reply.error is None, (endpoint, reply.raw)
        return reply.json

    def fails(self, endpoint: str, body: Any = None) -> str:
        reply = self.call(endpoint, body)
        assert reply.status != 200 and reply.error, (endpoint, reply.raw)
        return reply.error

    def create(self, name: str, **opts: str) -> None:
        self.ok("VolumeDriver.Create", {"Name": name, "Opts": opts})

    def mount(self, name: str, mount_id: str) -> Path:
        return Path(self.ok("VolumeDriver.Mount", {"Name": name, "ID": mount_id})["Mountpoint"])

    def unmount(self, name: str, mount_id: str) -> None:
        self.ok("VolumeDriver.Unmount", {"Name": name, "ID": mount_id})

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.ok("VolumeDriver.Get", {"Name": name})["Volume"]["Status"]
        return status


@pytest.fixture
def start(
    serve_plugin: Serve, short_tmp: Path, sshd: Sshd
) -> Iterator[Callable[..., tuple[SshfsDriver, Plugin]]]:
    drivers: list[SshfsDriver] = []

    def make(**kw: Any) -> tuple[SshfsDriver, Plugin]:
        lines: list[str] = []
        driver = SshfsDriver(base_dir=short_tmp / "vols", state_dir=short_tmp / "state",
                             log=lines.append, **kw)  # fmt: skip
        drivers.append(driver)
        return driver, Plugin(serve_plugin(driver).client(), lines)

    yield make
    unmount_everything_under(short_tmp)


def key_opts(sshd: Sshd, folder: Path, **extra: str) -> dict[str, str]:
    return {
        "sshcmd": sshd.sshcmd(folder),
        "port": str(sshd.port),
        "identity_file": str(sshd.user_key),
        "host_key": sshd.host_key_pub,
        **extra,
    }


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_key_auth_mount_reads_and_writes_the_remote_folder(
    start: Callable[..., tuple[SshfsDriver, Plugin]], sshd: Sshd
) -> None:
    _, plugin = start()
    remote = sshd.folder(_name("key"))
    (remote / "from-server").write_text("remote data\n")
    plugin.create("v", **key_opts(sshd, remote))
    assert plugin.status("v")["State"] == "unmounted"
    assert plugin.ok("VolumeDriver.Path", {"Name": "v"})["Mountpoint"] == ""
    began = time.monotonic()
    mp = plugin.mount("v", "c1")
    first = time.monotonic() - began
    assert (mp / "from-server").read_text() == "remote data\n"
    (mp / "from-container").write_text("written through sshfs\n")
    assert (remote / "from-container").read_text() == "written through sshfs\n"
    assert (remote / "from-container").stat().st_uid != 0  # written as the ssh user
    status = plugin.status("v")
    assert {k: status[k] for k in ("Remote", "Port", "State", "Mounts", "Consumers")} == {
        "Remote": sshd.sshcmd(remote), "Port": sshd.port, "State": "mounted",
        "Mounts": 1, "Consumers": 1,
    }  # fmt: skip
    assert plugin.ok("VolumeDriver.Path", {"Name": "v"})["Mountpoint"] == str(mp)
    plugin.unmount("v", "c1")
    assert mounts_on(mp) == 0 and plugin.status("v")["State"] == "unmounted"
    assert first < 10, f"first mount took {first:.2f}s"


def test_two_ids_share_one_fuse_mount_and_the_last_unmount_unmounts(
    start: Callable[..., tuple[SshfsDriver, Plugin]], sshd: Sshd
) -> None:
    _, plugin = start()
    remote = sshd.folder(_name("shared"))
    plugin.create("v", **key_opts(sshd, remote))
    mp = plugin.mount("v", "c1")
    began = time.monotonic()
    assert plugin.mount("v", "c2") == mp
    assert time.monotonic() - began < 1  # no second sshfs
    assert mounts_on(mp) == 1
    assert (plugin.status("v")["Mounts"], plugin.status("v")["Consumers"]) == (2, 2)
    plugin.unmount("v", "c1")
    assert mounts_on(mp) == 1
    (mp / "still").write_text("there")
    assert (remote / "still").read_text() == "there"
    plugin.unmount("v", "c2")
    assert mounts_on(mp) == 0
    assert plugin.status("v")["State"] == "unmounted"
    assert plugin.ok("VolumeDriver.Remove", {"Name": "v"}) == {}
    assert not mp.exists()
    assert (remote / "still").exists()  # Remove never touches the remote data


def test_two_volumes_with_the_same_sshcmd_get_separate_mounts(
    start: Callable[..., tuple[SshfsDriver, Plugin]], sshd: Sshd
) -> None:
    _, plugin = start()
    remote = sshd.folder(_name("same"))
    plugin.create("a", **key_opts(sshd, remote))
    plugin.create("b", **key_opts(sshd, remote))
    mp_a, mp_b = plugin.mount("a", "c1"), plugin.mount("b", "c2")
    assert mp_a != mp_b and mounts_on(mp_a) == 1 and mounts_on(mp_b) == 1
    plugin.unmount("a", "c1")
    assert mounts_on(mp_a) == 0
    (mp_b / "via-b").write_text("b lives on")
    assert (remote / "via-b").read_text() == "b lives on"
    plugin.unmount("b", "c2")


def _no_password_anywhere(plugin: Plugin, sshd: Sshd, state: Path, name: str) -> None:
    texts = [
        json.dumps(plugin.ok("VolumeDriver.Get", {"Name": name})),
        json.dumps(plugin.ok("VolumeDriver.List", {})),
        "\n".join(plugin.lines),
        " ".join(p.read_text(errors="replace") for p in (state / "run").iterdir()),
    ]
    for text in texts:
        assert sshd.password not in text
    assert sshd.password.encode() not in (state / "volumes.db").read_bytes()


def test_password_auth_through_the_secrets_store(
    start: Callable[..., tuple[SshfsDriver, Plugin]], sshd: Sshd, short_tmp: Path
) -> None:
    state = short_tmp / "state"
    res = subprocess.run(
        [sys.executable, "-m", "dockplug", "secret", "set", "test-pw", "--state-dir", str(state)],
        input=sshd.password + "\n", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE((state / "secrets.json").stat().st_mode) == 0o600
    _, plugin = start()
    remote = sshd.folder(_name("pw"))
    plugin.create("v", sshcmd=sshd.sshcmd(remote), port=str(sshd.port), secret="test-pw",
                  host_key=sshd.host_key_pub)  # fmt: skip
    mp = plugin.mount("v", "c1")
    (mp / "pw-file").write_text("by password")
    assert (remote / "pw-file").read_text() == "by password"
    status = plugin.status("v")
    assert status["Options"]["secret"] == "test-pw" and status["State"] == "mounted"
    _no_password_anywhere(plugin, sshd, state, "v")
    plugin.unmount("v", "c1")


def test_inline_password_when_allowed_is_kept_only_in_the_store(
    start: Callable[..., tuple[SshfsDriver, Plugin]], sshd: Sshd, short_tmp: Path
) -> None:
    driver, plugin = start(allow_inline_secrets=True)
    remote = sshd.folder(_name("inline"))
    plugin.create("v", sshcmd=sshd.sshcmd(remote), port=str(sshd.port), password=sshd.password,
                  host_key=sshd.host_key_pub)  # fmt: skip
    mp = plugin.mount("v", "c1")
    (mp / "f").write_text("x")
    assert (remote / "f").exists()
    _no_password_anywhere(plugin, sshd, short_tmp / "state", "v")
    assert driver.secrets.names() == ["volume/v"]
    plugin.unmount("v", "c1")
    plugin.ok("VolumeDriver.Remove", {"Name": "v"})
    assert driver.secrets.names() == []


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong password", "Permission denied"),
        ("wrong host key", "Host key verification failed"),
        ("unknown host key", "Host key verification failed"),
        ("unreachable port", "Connection refused"),
        ("missing folder", "No such file or directory"),
    ],
)
def test_failures_give_a_clear_error_and_leave_nothing_mounted(
    start: Callable[..., tuple[SshfsDriver, Plugin]],
    sshd: Sshd,
    short_tmp: Path,
    case: str,
    expected: str,
) -> None:
    driver, plugin = start(allow_inline_secrets=True)
    remote = sshd.folder(_name("fail"))
    opts = key_opts(sshd, remote)
    if case == "wrong password":
        del opts["identity_file"]
        opts["password"] = "not-" + sshd.password
    elif case == "wrong host key":
        opts["host_key"] = (sshd.user_key.with_suffix(".pub")).read_text()
    elif case == "unknown host key":
        del opts["host_key"]
        opts["known_hosts_file"] = str(short_tmp / "empty_known_hosts")
        (short_tmp / "empty_known_hosts").write_text("")
    elif case == "unreachable port":
        opts["port"] = str(free_port())
    else:
        opts["sshcmd"] = sshd.sshcmd(remote / "nope")
    plugin.create("v", **opts)
    began = time.monotonic()
    error = plugin.fails("VolumeDriver.Mount", {"Name": "v", "ID": "c1"})
    assert time.monotonic() - began < 15
    assert expected in error and error.startswith("volume v: sshfs ")
    assert sshd.password not in error
    status = plugin.status("v")
    assert status["State"] == "failed" and expected in status["Error"]
    assert status["Mounts"] == 0
    assert mounts_on(driver.base_dir / "v") == 0
    assert sshd.password not in "\n".join(plugin.lines)


def test_a_hanging_remote_times_out_without_blocking_other_volumes(
    start: Callable[..., tuple[SshfsDriver, Plugin]], sshd: Sshd
) -> None:
    with socket.socket() as silent:  # accepts TCP, never says a word: ssh waits for a banner
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        _, plugin = start(mount_timeout=2)
        remote = sshd.folder(_name("hang"))
        plugin.create("hang", **key_opts(sshd, remote, port=str(silent.getsockname()[1])))
        plugin.create("fine", **key_opts(sshd, remote))
        errors: list[str] = []
        worker = threading.Thread(
            target=lambda: errors.append(
                plugin.fails("VolumeDriver.Mount", {"Name": "hang", "ID": "c1"})
            )
        )
        worker.start()
        time.sleep(0.2)
        began = time.monotonic()
        other = Plugin(PluginClient(plugin.client.address))  # a second connection, like dockerd
        other.mount("fine", "c2")
        assert time.monotonic() - began < 1.5
        other.unmount("fine", "c2")
        worker.join(10)
        assert errors and "did not mount within 2s" in errors[0]
        assert plugin.status("hang")["State"] == "failed"


# --- restarts -----------------------------------------------------------------------------


class Served:
    """``dockplug serve sshfs`` as a process on a private socket, killable and restartable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "sshfs.sock"
        self.proc: SubprocessPlugin | None = None

    def start(self) -> Plugin:
        args = ["serve", "sshfs", "--socket", str(self.socket), "--announce", "none",
                "--base-dir", str(self.root / "vols"),
                "--state-dir", str(self.root / "state")]  # fmt: skip
        self.proc = SubprocessPlugin(args, wait_for=self.socket).start()
        return Plugin(PluginClient(str(self.socket), timeout=60))

    def wait_reconciled(self, timeout: float = 20) -> str:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.proc.output.splitlines():
                if " reconciled " in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no reconcile line: {self.proc.output}")


@pytest.fixture
def served(short_tmp: Path, sshd: Sshd) -> Iterator[Served]:
    server = Served(short_tmp)
    yield server
    proc = server.proc.proc if server.proc is not None else None
    if proc is not None and proc.poll() is None:
        server.proc.stop()  # type: ignore[union-attr]
    unmount_everything_under(short_tmp)


def test_plugin_killed_with_a_live_mount_keeps_or_restores_it(served: Served, sshd: Sshd) -> None:
    plugin = served.start()
    remote = sshd.folder(_name("crash"))
    plugin.create("v", **key_opts(sshd, remote))
    mp = plugin.mount("v", "c1")
    (mp / "before").write_text("1")
    assert served.proc is not None
    served.proc.stop(signal.SIGKILL)
    # the mount is served by its own sshfs process: it outlives the plugin
    (mp / "while-down").write_text("2")
    assert (remote / "while-down").read_text() == "2"
    plugin = served.start()
    assert "nothing to fix" in served.wait_reconciled()
    status = plugin.status("v")
    assert (status["State"], status["Mounts"]) == ("mounted", 1)
    assert mounts_on(mp) == 1
    # now the sshfs dies too (the "Transport endpoint is not connected" case)
    served.proc.stop(signal.SIGKILL)
    pid = sshfs_pid(mp)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        try:
            os.stat(mp)
        except OSError as exc:
            assert exc.errno == errno.ENOTCONN
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the mount did not die with its sshfs")
    plugin = served.start()
    line = served.wait_reconciled()
    assert "cleaned up a dead mount" in line and "mounted again" in line
    assert plugin.status("v")["State"] == "mounted"
    assert (mp / "before").read_text() == "1"
    assert mounts_on(mp) == 1
    plugin.unmount("v", "c1")
    assert mounts_on(mp) == 0
    assert sshd.password not in served.proc.output


# --- through a real dockerd -------------------------------------------------------------------


@pytest.mark.dockerd
def test_docker_run_writes_through_an_sshfs_volume_and_inspect_shows_no_secret(
    dockerd: Any, busybox_image: str, sshd: Sshd, short_tmp: Path
) -> None:
    name = f"dps-{uuid.uuid4().hex[:8]}"  # the only plugin name of this module (dockerd caches)
    socket_path = Path(f"/run/docker/plugins/{name}.sock")
    state = short_tmp / "state"
    subprocess.run(
        [sys.executable, "-m", "dockplug", "secret", "set", "docker-pw", "--state-dir", str(state)],
        input=sshd.password, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    args = ["serve", "sshfs", "--name", name, "--base-dir", str(short_tmp / "vols"),
            "--state-dir", str(state)]  # fmt: skip
    proc = SubprocessPlugin(args, wait_for=socket_path).start()
    vol, c1, c2 = (
        f"remote-{uuid.uuid4().hex[:6]}",
        f"c1-{uuid.uuid4().hex[:6]}",
        f"c2-{uuid.uuid4().hex[:6]}",
    )
    remote = sshd.folder(_name("docker"))
    try:
        dockerd.docker("volume", "create", "-d", name, "-o", f"sshcmd={sshd.sshcmd(remote)}",
                       "-o", f"port={sshd.port}", "-o", "secret=docker-pw",
                       "-o", f"host_key={sshd.host_key_pub}", vol)  # fmt: skip
        dockerd.docker("run", "--rm", "-v", f"{vol}:/data", busybox_image, "sh", "-c",
                       "echo from-container > /data/hello")  # fmt: skip
        assert (remote / "hello").read_text() == "from-container\n"
        for ctr in (c1, c2):
            dockerd.docker("run", "-d", "--name", ctr, "-v", f"{vol}:/data", busybox_image,
                           "sleep", "300")  # fmt: skip
        inspect = dockerd.docker("volume", "inspect", vol).stdout
        status = json.loads(inspect)[0]["Status"]
        assert (status["State"], status["Mounts"], status["Consumers"]) == ("mounted", 2, 2)
        assert mounts_on(short_tmp / "vols" / vol) == 1  # two containers, one FUSE mount
        assert dockerd.docker("exec", c2, "cat", "/data/hello").stdout == "from-container\n"
        assert sshd.password not in inspect
        dockerd.docker("rm", "-f", c1, c2)
        assert mounts_on(short_tmp / "vols" / vol) == 0
        assert sshd.password not in proc.output
    finally:
        dockerd.docker("rm", "-f", c1, c2, check=False)
        out = dockerd.docker("volume", "ls", "-q", "--filter", f"driver={name}").stdout
        for left in out.split():
            dockerd.docker("volume", "rm", "-f", left, check=False)
        proc.stop()
        socket_path.unlink(missing_ok=True)
        unmount_everything_under(short_tmp)


def _sessions(user: str) -> list[int]:
    """The sshd processes serving ``user``'s connections (the test sshd forked them)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(
                f"sshd: {user}".encode()
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_reconnect_brings_the_volume_back_after_an_sshd_outage(
    start: Callable[..., tuple[SshfsDriver, Plugin]], sshd: Sshd
) -> None:
    _, plugin = start()
    remote = sshd.folder(_name("outage"))
    plugin.create("v", **key_opts(sshd, remote))
    mp = plugin.mount("v", "c1")
    (mp / "before").write_text("1")
    sessions = _sessions(sshd.user)
    assert sessions
    try:
        sshd.stop()  # the server goes away: its listener, then the session of our mount
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(OSError):
            (mp / "during").write_text("2")  # an error, not a hang
    finally:
        sshd.start()
    (mp / "after").write_text("3")  # the same mount reconnects on its own
    assert (remote / "after").read_text() == "3"
    assert (mp / "before").read_text() == "1"
    assert mounts_on(mp) == 1 and plugin.status("v")["State"] == "mounted"
    plugin.unmount("v", "c1")
