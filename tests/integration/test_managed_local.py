"""The local driver as a managed (v2) plugin on a real dockerd: build, create, enable, use a
volume from a container with the data visible on the host, disable, set, re-enable, remove."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockplug.packaging import engine, verbs
from dockplug.packaging.bundle import BuildResult, build
from dockplug.testing.dockerd import Dockerd

pytestmark = pytest.mark.dockerd


@pytest.fixture(scope="session")
def local_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildResult]:
    """The local driver's bundle, built once per run (the first build makes the cached
    debootstrap base: about a minute)."""
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap not installed (apt-get install debootstrap)")
    out = tmp_path_factory.mktemp("bundle") / "local"
    result = build("local", "dockplug/local", out)
    yield result
    shutil.rmtree(out, ignore_errors=True)  # 150 MB


@pytest.fixture
def plugin(dockerd: Dockerd, docker_client: Any, local_bundle: BuildResult) -> Iterator[str]:
    name = f"dpt-{uuid.uuid4().hex[:8]}:latest"
    t0 = time.monotonic()
    verbs.create(name, local_bundle.path, docker_client)
    plugin_id = docker_client.plugins.get(name).id
    print(f"create took {time.monotonic() - t0:.1f}s; bundle {local_bundle.size / 1e6:.0f} MB, "
          f"built in {local_bundle.seconds:.1f}s (cold={local_bundle.cold})")  # fmt: skip
    yield name
    for vol in docker_client.volumes.list(filters={"driver": name}):
        vol.remove(force=True)
    dockerd.docker("plugin", "rm", "-f", name, check=False)
    # a failed enable leaves dockerd's init-stdout/err fifos behind in the socket folder
    shutil.rmtree(Path("/run/docker/plugins") / plugin_id, ignore_errors=True)


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
        v11 = next(r for r in report["results"] if r["id"] == "V11")
        assert v11["result"] == "pass" and "on the host" in v11["evidence"], v11
        assert report["url"].endswith("/local.sock")
        engine.disable(plugin, client=docker_client)
        result = CliRunner().invoke(cli, ["check", plugin])
        assert result.exit_code == 1 and "is disabled; fix: dockplug enable" in result.output
    finally:
        shutil.rmtree(state, ignore_errors=True)
