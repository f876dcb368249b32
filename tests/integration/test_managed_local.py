"""The local driver as a managed (v2) plugin on a real dockerd: build, create, enable, use a
volume from a container with the data visible on the host, disable, set, re-enable, remove."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockplug.packaging import engine, verbs
from dockplug.packaging.bundle import BuildResult
from dockplug.testing.dockerd import Dockerd
from dockplug.testing.managed import cached_build, created_plugin

pytestmark = pytest.mark.dockerd


@pytest.fixture(scope="session")
def local_bundle() -> BuildResult:
    """The local driver's bundle, built once per run (the first build makes the cached
    debootstrap base: about a minute)."""
    return cached_build("local")


@pytest.fixture
def plugin(dockerd: Dockerd, docker_client: Any, local_bundle: BuildResult) -> Iterator[str]:
    with created_plugin(dockerd, docker_client, local_bundle) as name:
        yield name


@pytest.mark.timeout(900)
def test_managed_local_end_to_end(
    dockerd: Dockerd, docker_client: Any, plugin: str, busybox_image: str
) -> None:
    state = Path(tempfile.mkdtemp(prefix="dpt-state-"))
    try:
        # keep the plugin's state off the host's real /var/lib/dockplug/managed-local
        engine.set_options(plugin, [f"state.source={state}"], docker_client)
        res = verbs.enable(plugin, timeout=30, client=docker_client)
        print(f"enable-to-socket-ready {res.seconds:.2f}s")
        assert res.seconds < 9.5
        assert res.socket is not None and res.socket.exists()
        assert res.socket.name == "local.sock" and len(str(res.socket)) <= 107

        vol = f"v-{uuid.uuid4().hex[:6]}"
        dockerd.docker("volume", "create", "-d", plugin, vol)
        dockerd.docker("run", "--rm", "-v", f"{vol}:/data", busybox_image,
                       "sh", "-c", "echo managed > /data/hello.txt")  # fmt: skip
        root = dockerd.docker("info", "--format", "{{.DockerRootDir}}").stdout.strip()
        host_file = Path(root) / "plugins" / res.id / "propagated-mount" / vol / "hello.txt"
        assert host_file.read_text() == "managed\n"
        # the state database lives in the bind-mounted host folder
        assert any(state.iterdir())
        dockerd.docker("volume", "rm", vol)

        engine.disable(plugin, client=docker_client)
        engine.set_options(plugin, ["DOCKPLUG_DEBUG=1"], docker_client)
        env = json.loads(dockerd.docker("plugin", "inspect", plugin).stdout)[0]["Settings"]["Env"]
        assert "DOCKPLUG_DEBUG=1" in env
        again = verbs.enable(plugin, client=docker_client)
        assert again.socket is not None and again.socket.exists()
        vol2 = f"v-{uuid.uuid4().hex[:6]}"
        dockerd.docker("volume", "create", "-d", plugin, vol2)
        dockerd.docker("volume", "rm", vol2)

        with pytest.raises(engine.EngineError, match="disable"):
            engine.set_options(plugin, ["DOCKPLUG_DEBUG=0"], docker_client)
        with pytest.raises(engine.EngineError, match="disable"):
            engine.remove(plugin, client=docker_client)
        engine.disable(plugin, client=docker_client)
        engine.remove(plugin, client=docker_client)
        assert dockerd.docker("plugin", "inspect", plugin, check=False).returncode != 0
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_doctor_on_installed_plugin(dockerd: Dockerd, docker_client: Any, plugin: str) -> None:
    from dockplug.packaging.doctor import diagnose_installed

    findings = diagnose_installed(plugin, docker_client)
    assert [f.check for f in findings] == ["disabled"]
    with pytest.raises(engine.EngineError, match=r"not settable|not found"):
        engine.set_options(plugin, ["NOPE=1"], docker_client)


@pytest.mark.timeout(120)
def test_failed_enable_runs_the_doctor(dockerd: Dockerd, docker_client: Any, plugin: str) -> None:
    # the process exits at once (unknown command), so the socket never appears
    engine.set_options(plugin, ["args=no-such-command"], docker_client)
    t0 = time.monotonic()
    with pytest.raises(engine.EngineError) as info:
        verbs.enable(plugin, timeout=30, client=docker_client)
    message = str(info.value)
    assert f"enabling {plugin} failed" in message and "\ndoctor:\n" in message, message
    assert "plugin=" in message or "fix:" in message
    assert time.monotonic() - t0 < 60


@pytest.mark.timeout(600)
def test_check_a_managed_plugin_by_name(
    dockerd: Dockerd, docker_client: Any, plugin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dockplug check finds an enabled managed plugin through the Engine API and checks the
    paths it returns where dockerd looks for them: inside the plugin's rootfs."""
    from click.testing import CliRunner

    from dockplug.cli.main import cli

    state = Path(tempfile.mkdtemp(prefix="dpt-state-"))
    try:
        engine.set_options(plugin, [f"state.source={state}"], docker_client)
        verbs.enable(plugin, timeout=30, client=docker_client)
        monkeypatch.setenv("DOCKER_HOST", dockerd.host)
        out = state / "report.json"
        result = CliRunner().invoke(cli, ["check", plugin, "--report", str(out)])
        assert result.exit_code == 0, result.output
        report = json.loads(out.read_text())
        # the engine the plugin serves, asked through DOCKER_HOST; its recordings are replayed
        assert report["engine"]["version"] == dockerd.version, report["engine"]
        assert report["engine"]["api_version"] == dockerd.api_version
        assert f"engine: dockerd {report['engine']['version']}" in result.output
        v11 = next(r for r in report["results"] if r["id"] == "V11")
        assert v11["result"] == "pass" and "on the host" in v11["evidence"], v11
        assert report["url"].endswith("/local.sock")
        engine.disable(plugin, client=docker_client)
        result = CliRunner().invoke(cli, ["check", plugin])
        assert result.exit_code == 1 and "is disabled; fix: dockplug enable" in result.output
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _plugin_pid(plugin_id: str) -> int:
    """The managed plugin's process: dockerd puts it in a cgroup named by the plugin's id."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if plugin_id in (proc / "cgroup").read_text():
                    return int(proc.name)
    raise AssertionError(f"no process in a cgroup of plugin {plugin_id}")


LOOP_CTL_ADD, LOOP_CTL_REMOVE = 0x4C80, 0x4C81


@pytest.mark.timeout(600)
def test_managed_size_limited_volume(
    dockerd: Dockerd, docker_client: Any, plugin: str, busybox_image: str
) -> None:
    """-o size= through the managed plugin: losetup inside it opens the /dev/loopN that
    loop-control hands out, a node the kernel may make after enable (so a list in
    linux.devices is not enough; the host's /dev is bind-mounted instead)."""
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop devices on this host (modprobe loop)")
    state = Path(tempfile.mkdtemp(prefix="dpt-state-"))
    try:
        engine.set_options(plugin, [f"state.source={state}"], docker_client)
        res = verbs.enable(plugin, timeout=30, client=docker_client)
        # a loop device made now, after enable, shows inside the plugin
        with open("/dev/loop-control") as ctl:
            number = fcntl.ioctl(ctl, LOOP_CTL_ADD, 200 + uuid.uuid4().int % 300)
            try:
                pid = _plugin_pid(res.id)
                seen = subprocess.run(["nsenter", "-m", "-t", str(pid), "test", "-b",
                                       f"/dev/loop{number}"])  # fmt: skip
                assert seen.returncode == 0, f"/dev/loop{number} is not in the plugin"
            finally:
                fcntl.ioctl(ctl, LOOP_CTL_REMOVE, number)

        vol = f"sized-{uuid.uuid4().hex[:6]}"
        dockerd.docker("volume", "create", "-d", plugin, "-o", "size=20M", vol)
        dd = ["dd", "if=/dev/zero", "of=/data/big", "bs=1M", "count=64"]
        run = dockerd.docker("run", "--rm", "-v", f"{vol}:/data", busybox_image, *dd,
                             check=False)  # fmt: skip
        assert run.returncode != 0 and "No space left" in run.stderr, run.stderr
        # a second mount of the same volume finds the data the first one wrote
        ls = dockerd.docker("run", "--rm", "-v", f"{vol}:/data", busybox_image,
                            "ls", "-l", "/data/big").stdout.split()  # fmt: skip
        assert 15 * 2**20 < int(ls[4]) < 20 * 2**20, ls
        status = json.loads(dockerd.docker("volume", "inspect", vol).stdout)[0]["Status"]
        assert status["LimitBytes"] <= 20 * 2**20, status
        image = next(state.rglob(f"{vol}.img"))
        dockerd.docker("volume", "rm", vol)
        # the loop device went with the last unmount: nothing is bound to the image any more
        held = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True)
        assert held.stdout.strip() == "", held.stdout
    finally:
        with contextlib.suppress(Exception):
            engine.disable(plugin, client=docker_client, force=True)
        shutil.rmtree(state, ignore_errors=True)
