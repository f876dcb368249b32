"""The local volume driver driven by a real dockerd: what users type, what they get."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dockplug.client import PluginClient, Reply
from dockplug.testing.dockerd import Dockerd
from dockplug.testing.servers import SubprocessPlugin, wait_until

pytestmark = pytest.mark.dockerd


class LocalPlugin:
    """``dockplug serve local`` as a real process, restartable and killable."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.socket = Path(f"/run/docker/plugins/{name}.sock")
        self.base = root / "vols"
        self.state = root / "state"
        self.proc: SubprocessPlugin | None = None

    def start(self) -> LocalPlugin:
        args = ["serve", "local", "--name", self.name, "--base-dir", str(self.base),
                "--state-dir", str(self.state)]  # fmt: skip
        self.proc = SubprocessPlugin(args, wait_for=self.socket).start()
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.stop(signal.SIGKILL)

    def stop(self) -> int:
        assert self.proc is not None
        return self.proc.stop()

    def call(self, endpoint: str, body: object = None) -> Reply:
        with PluginClient(str(self.socket)) as client:
            return client.call(endpoint, body)


@pytest.fixture(scope="module")
def local_name() -> str:
    """One plugin name for the whole module: dockerd caches every legacy plugin it activated
    for its lifetime and retries a vanished one for ~15 s on every lookup that fans out to all
    drivers, so tests restart the same plugin instead of leaving dead ones behind."""
    return f"dpl-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def local(local_name: str, short_tmp: Path) -> Iterator[LocalPlugin]:
    plugin = LocalPlugin(local_name, short_tmp).start()
    yield plugin
    proc = plugin.proc.proc if plugin.proc is not None else None
    if proc is not None and proc.poll() is None:
        plugin.stop()
    plugin.socket.unlink(missing_ok=True)


def _volumes(dockerd: Dockerd, driver: str) -> list[str]:
    """Volumes of one driver (a filtered ls asks only that driver)."""
    out = dockerd.docker("volume", "ls", "-q", "--filter", f"driver={driver}").stdout
    return sorted(out.split())


@pytest.fixture
def cleanup(dockerd: Dockerd, local: LocalPlugin) -> Iterator[list[str]]:
    """Containers named here are removed after the test, then every volume of the plugin
    (never ``volume rm`` of a name dockerd does not know: that asks every driver)."""
    names: list[str] = []
    yield names
    containers = set(dockerd.docker("ps", "-aq", "--format", "{{.Names}}").stdout.split())
    for name in names:
        if name in containers:
            dockerd.docker("rm", "-f", name, check=False)
    for vol in _volumes(dockerd, local.name):
        dockerd.docker("volume", "rm", "-f", vol, check=False)


def _inspect(dockerd: Dockerd, volume: str) -> dict[str, object]:
    out = dockerd.docker("volume", "inspect", volume).stdout
    data = json.loads(out)[0]
    assert isinstance(data, dict)
    return data


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def test_volume_create_with_each_option(
    dockerd: Dockerd, local: LocalPlugin, cleanup: list[str], short_tmp: Path
) -> None:
    user_dir = short_tmp / "user-folder"
    cases = {
        f"plain-{_uid()}": [],
        f"owned-{_uid()}": ["-o", "uid=1234", "-o", "gid=2345", "-o", "mode=0750"],
        f"mp-{_uid()}": ["-o", f"mountpoint={user_dir}"],
        f"sized-{_uid()}": ["-o", "size=16M"],
    }
    for name, opts in cases.items():
        cleanup.append(name)
        dockerd.docker("volume", "create", "-d", local.name, *opts, name)
    assert _volumes(dockerd, local.name) == sorted(cases)
    owned = next(n for n in cases if n.startswith("owned-"))
    st = (local.base / owned).stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 2345, 0o750)
    mp = next(n for n in cases if n.startswith("mp-"))
    assert _inspect(dockerd, mp)["Mountpoint"] == str(user_dir)
    assert user_dir.is_dir()
    sized = next(n for n in cases if n.startswith("sized-"))
    status = _inspect(dockerd, sized)["Status"]
    assert isinstance(status, dict)
    assert status["Quota"].startswith("ext4 loop image")


@pytest.mark.parametrize(
    ("opts", "expected"),
    [
        (["-o", "size=lots"], "size"),
        (["-o", "uid=-1"], "uid"),
        (["-o", "mode=999"], "mode"),
        (["-o", "colour=blue"], "accepted: gid, mode, mountpoint, size, uid"),
        (["-o", "mountpoint=relative/path"], "absolute"),
        (["-o", "mountpoint=/proc"], "system folder"),
        (["-o", "mountpoint=/tmp/../proc/self"], "'..'"),
        (["-o", "help"], "options of the local volume driver"),
    ],
)
def test_bad_options_are_refused_with_a_clear_error(
    dockerd: Dockerd, local: LocalPlugin, cleanup: list[str], opts: list[str], expected: str
) -> None:
    name = f"bad-{_uid()}"
    cleanup.append(name)
    res = dockerd.docker("volume", "create", "-d", local.name, *opts, name, check=False)
    assert res.returncode != 0
    assert expected in res.stderr
    assert _volumes(dockerd, local.name) == []


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden"])
def test_path_traversal_in_names_never_touches_the_filesystem(
    dockerd: Dockerd, local: LocalPlugin, cleanup: list[str], name: str
) -> None:
    cleanup.append(name)
    res = dockerd.docker("volume", "create", "-d", local.name, name, check=False)
    assert res.returncode != 0
    assert not (local.base.parent / "escape").exists()
    assert sorted(p.name for p in local.base.iterdir()) == []


def test_two_containers_share_a_volume_and_block_its_removal(
    dockerd: Dockerd, local: LocalPlugin, busybox_image: str, cleanup: list[str]
) -> None:
    vol, c1, c2 = f"shared-{_uid()}", f"c1-{_uid()}", f"c2-{_uid()}"
    cleanup += [c1, c2, vol]
    dockerd.docker("volume", "create", "-d", local.name, vol)
    for ctr in (c1, c2):
        dockerd.docker("run", "-d", "--name", ctr, "-v", f"{vol}:/data", busybox_image,
                       "sleep", "300")  # fmt: skip
    status = _inspect(dockerd, vol)["Status"]
    assert isinstance(status, dict)
    assert (status["Mounts"], status["Consumers"]) == (2, 2)
    # dockerd refuses on its own while containers exist; the plugin refuses too, if asked
    reply = local.call("VolumeDriver.Remove", {"Name": vol})
    assert reply.status != 200 and "in use by 2 mounts" in (reply.error or "")
    dockerd.docker("exec", c1, "sh", "-c", "echo shared > /data/f")
    assert dockerd.docker("exec", c2, "cat", "/data/f").stdout.strip() == "shared"
    dockerd.docker("rm", "-f", c1, c2)
    status = _inspect(dockerd, vol)["Status"]
    assert isinstance(status, dict)
    assert status["Mounts"] == 0
    dockerd.docker("volume", "rm", vol)
    # the folder goes a moment after Remove answers
    assert wait_until(lambda: not (local.base / vol).exists(), 5.0), "the folder stayed"


def test_docker_run_writes_into_the_volume_folder(
    dockerd: Dockerd, local: LocalPlugin, busybox_image: str, cleanup: list[str]
) -> None:
    vol = f"run-{_uid()}"
    cleanup.append(vol)
    dockerd.docker("run", "--rm", "--volume-driver", local.name, "-v", f"{vol}:/data",
                   busybox_image, "sh", "-c", "echo hi > /data/hello")  # fmt: skip
    assert (local.base / vol / "hello").read_text() == "hi\n"


def test_plugin_killed_mid_workload_keeps_volumes_and_data(
    dockerd: Dockerd, local: LocalPlugin, busybox_image: str, cleanup: list[str]
) -> None:
    vols = [f"crash-{i}-{_uid()}" for i in range(5)]
    cleanup += vols
    for vol in vols:
        dockerd.docker("volume", "create", "-d", local.name, vol)
        dockerd.docker("run", "--rm", "-v", f"{vol}:/data", busybox_image, "sh", "-c",
                       f"echo {vol} > /data/id")  # fmt: skip
    ctr = f"runner-{_uid()}"
    cleanup.insert(0, ctr)
    dockerd.docker("run", "-d", "--name", ctr, "-v", f"{vols[0]}:/data", busybox_image,
                   "sleep", "300")  # fmt: skip
    before = _volumes(dockerd, local.name)
    local.kill()
    local.start()
    assert _volumes(dockerd, local.name) == before
    for vol in vols:
        out = dockerd.docker("run", "--rm", "-v", f"{vol}:/data", busybox_image, "cat", "/data/id")
        assert out.stdout.strip() == vol
    # the running container's mount survived the restart, counted
    status = _inspect(dockerd, vols[0])["Status"]
    assert isinstance(status, dict)
    assert status["Mounts"] == 1
    assert dockerd.docker("exec", ctr, "cat", "/data/id").stdout.strip() == vols[0]


def test_a_thousand_volumes_created_from_eight_threads_then_listed(
    dockerd: Dockerd, local: LocalPlugin
) -> None:
    import docker

    api = docker.DockerClient(base_url=dockerd.host, timeout=120)
    prefix = f"many-{_uid()}"
    names = [f"{prefix}-{i}" for i in range(1000)]
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: api.volumes.create(n, driver=local.name), names))
        listed = _volumes(dockerd, local.name)
        assert sorted(v for v in listed if v.startswith(prefix)) == sorted(names)
        assert len(list(local.base.iterdir())) == 1000
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: api.volumes.get(n).remove(force=True), names))
        api.close()


def test_size_limit_stops_writes_at_the_limit(
    dockerd: Dockerd, local: LocalPlugin, busybox_image: str, cleanup: list[str]
) -> None:
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop devices on this host")
    vol = f"quota-{_uid()}"
    cleanup.append(vol)
    dockerd.docker("volume", "create", "-d", local.name, "-o", "size=20M", vol)
    dd = ["dd", "if=/dev/zero", "of=/data/big", "bs=1M", "count=64"]
    res = dockerd.docker("run", "--rm", "-v", f"{vol}:/data", busybox_image, *dd, check=False)
    assert res.returncode != 0
    assert "No space left" in res.stderr
    assert (local.base / vol / "big").stat().st_size < 20 * 2**20


def test_gc_clears_counts_no_running_container_backs(
    dockerd: Dockerd, local: LocalPlugin, busybox_image: str, cleanup: list[str]
) -> None:
    stale, live, ctr = f"stale-{_uid()}", f"live-{_uid()}", f"gc-{_uid()}"
    cleanup += [ctr, stale, live]
    dockerd.docker("volume", "create", "-d", local.name, stale)
    dockerd.docker("volume", "create", "-d", local.name, live)
    dockerd.docker("run", "-d", "--name", ctr, "-v", f"{live}:/data", busybox_image,
                   "sleep", "300")  # fmt: skip
    # a Mount whose Unmount never came (dockerd crashed): the count would block Remove forever
    local.call("VolumeDriver.Mount", {"Name": stale, "ID": "f" * 64})
    assert dockerd.docker("volume", "rm", stale, check=False).returncode != 0
    res = subprocess.run(
        [sys.executable, "-m", "dockplug", "local", "gc", "--plugin", local.name],
        env=dockerd.env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert f"{stale}: cleared 1" in res.stdout
    assert live not in res.stdout
    dockerd.docker("volume", "rm", stale)
    status = _inspect(dockerd, live)["Status"]
    assert isinstance(status, dict)
    assert status["Mounts"] == 1
