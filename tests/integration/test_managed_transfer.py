"""Moving the local driver's managed plugin around on a real dockerd: push to a real
``docker-registry`` on 127.0.0.1 and install from it under an alias (privileges granted
explicitly), export/import round trip under a new name, rename; settings survive each move."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dockplug.cli.main import cli
from dockplug.packaging import engine, verbs
from dockplug.packaging.bundle import BuildResult
from dockplug.packaging.transfer import authored_config, settable_args, settings_pairs, unpack
from dockplug.testing.dockerd import Dockerd
from dockplug.testing.managed import cached_build
from dockplug.testing.servers import free_port


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    """A docker-registry (distribution 2.8) on 127.0.0.1:PORT, storage in a temp folder."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry not installed (apt-get install docker-registry)")
    root = Path(tempfile.mkdtemp(prefix="dp-registry-"))
    addr = f"127.0.0.1:{free_port()}"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: {addr}\n"
    )
    log = open(root / "registry.log", "ab")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://{addr}/v2/", timeout=1) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (root / "registry.log").read_text(errors="replace")
                pytest.fail(f"docker-registry did not start: {text}")
            time.sleep(0.05)
        yield addr
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def bundle() -> BuildResult:
    """The local driver's bundle, from the cached debootstrap base (as test_managed_local)."""
    return cached_build("local")


@pytest.fixture
def cleanup(dockerd: Dockerd, docker_client: Any) -> Iterator[list[str]]:
    """Names of plugins a test may have made: all disabled (-f) and removed (-f) afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            plugin_id = docker_client.plugins.get(name).id
        except Exception:
            continue
        for vol in docker_client.volumes.list(filters={"driver": name}):
            vol.remove(force=True)
        dockerd.docker("plugin", "disable", "-f", name, check=False)
        dockerd.docker("plugin", "rm", "-f", name, check=False)
        shutil.rmtree(Path("/run/docker/plugins") / plugin_id, ignore_errors=True)


@pytest.fixture
def state() -> Iterator[Path]:
    """A host folder for the plugin's state mount (off the real /var/lib/dockplug)."""
    path = Path(tempfile.mkdtemp(prefix="dpt-state-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _cli(dockerd: Dockerd, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"DOCKER_HOST": dockerd.host})


def _settings(dockerd: Dockerd, name: str) -> dict[str, Any]:
    info = json.loads(dockerd.docker("plugin", "inspect", name).stdout)[0]
    return {"enabled": info["Enabled"], **info["Settings"]}


def _sources(settings: dict[str, Any]) -> list[str]:
    return [m.get("Source") for m in settings.get("Mounts") or []]


@pytest.mark.dockerd
@pytest.mark.timeout(300)
def test_push_then_install_with_alias(
    dockerd: Dockerd,
    docker_client: Any,
    registry: str,
    bundle: BuildResult,
    cleanup: list[str],
    state: Path,
) -> None:
    tag = uuid.uuid4().hex[:8]
    name = f"{registry}/dockplug/local-{tag}:0.1"
    alias = f"dpt-inst-{tag}:latest"
    cleanup += [name, alias]
    verbs.create(name, bundle.path, docker_client)

    with pytest.raises(engine.EngineError, match="not a pushable reference"):
        engine.push(f"dockplug/local-{tag}:0.1", client=docker_client)
    t0 = time.monotonic()
    res = _cli(dockerd, "push", name)
    push_s = time.monotonic() - t0
    assert res.exit_code == 0, res.output
    assert f"pushed {name} (sha256:" in res.output
    assert "Preparing" in res.output and "Upload complete" in res.output  # progress lines

    asked = engine.privileges(name, docker_client)
    assert asked and all({"Name", "Value"} <= set(p) for p in asked)
    # no terminal and no --grant-all-permissions: refused before pulling anything
    res = _cli(dockerd, "install", name, "--alias", alias)
    assert res.exit_code == 1 and "--grant-all-permissions" in res.output, res.output
    assert "PRIVILEGE" in res.output
    assert dockerd.docker("plugin", "inspect", alias, check=False).returncode != 0

    t0 = time.monotonic()
    res = _cli(
        dockerd,
        "install",
        name,
        "--alias",
        alias,
        "--grant-all-permissions",
        f"state.source={state}",
        "DOCKPLUG_DEBUG=1",
    )
    install_s = time.monotonic() - t0
    assert res.exit_code == 0, res.output
    assert f"installed {alias}" in res.output and f"enabled {alias}" in res.output
    settings = _settings(dockerd, alias)
    assert settings["enabled"] and "DOCKPLUG_DEBUG=1" in settings["Env"]
    assert str(state) in _sources(settings)
    vol = f"v-{tag}"
    dockerd.docker("volume", "create", "-d", alias, vol)
    dockerd.docker("volume", "rm", vol)
    print(f"push {push_s:.1f}s, install (privileges+pull+set+enable) {install_s:.1f}s")


@pytest.mark.dockerd
@pytest.mark.timeout(300)
def test_export_import_then_rename(
    dockerd: Dockerd,
    docker_client: Any,
    bundle: BuildResult,
    cleanup: list[str],
    state: Path,
    tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:8]
    old, copy, renamed = (f"dpt-{kind}-{tag}:latest" for kind in ("exp", "imp", "ren"))
    cleanup += [old, copy, renamed]
    verbs.create(old, bundle.path, docker_client)
    engine.set_options(old, [f"state.source={state}", "DOCKPLUG_DEBUG=1"], docker_client)

    archive = tmp_path / "plugin.tar.gz"
    t0 = time.monotonic()
    res = _cli(dockerd, "export", old, "-o", str(archive))
    export_s = time.monotonic() - t0
    assert res.exit_code == 0, res.output
    with tarfile.open(archive) as tar:
        config = json.load(tar.extractfile("config.json"))  # type: ignore[arg-type]
        meta = json.load(tar.extractfile("settings.json"))  # type: ignore[arg-type]
        assert tar.getmember("rootfs/usr/bin/python3")
    assert "rootfs" not in config and "interface" in config and "propagatedMount" in config
    assert meta["name"] == old and "DOCKPLUG_DEBUG=1" in meta["settings"]["Env"]

    t0 = time.monotonic()
    res = _cli(dockerd, "import", str(archive), "--name", copy)
    import_s = time.monotonic() - t0
    assert res.exit_code == 0, res.output
    settings = _settings(dockerd, copy)
    assert not settings["enabled"]
    assert "DOCKPLUG_DEBUG=1" in settings["Env"] and str(state) in _sources(settings)

    # an enabled plugin in use cannot be renamed: it has to be disabled first
    verbs.enable(copy, client=docker_client)
    vol = f"v-{tag}"
    dockerd.docker("volume", "create", "-d", copy, vol)
    res = _cli(dockerd, "rename", copy, renamed)
    assert res.exit_code == 1 and "disabled first" in res.output, res.output
    assert _settings(dockerd, copy)["enabled"]
    dockerd.docker("volume", "rm", vol)

    t0 = time.monotonic()
    res = _cli(dockerd, "rename", copy, renamed)
    rename_s = time.monotonic() - t0
    assert res.exit_code == 0, res.output
    assert dockerd.docker("plugin", "inspect", copy, check=False).returncode != 0
    settings = _settings(dockerd, renamed)
    assert settings["enabled"]  # enabled state restored
    assert "DOCKPLUG_DEBUG=1" in settings["Env"] and str(state) in _sources(settings)
    dockerd.docker("volume", "create", "-d", renamed, vol)
    dockerd.docker("volume", "rm", vol)
    print(
        f"export {export_s:.1f}s (archive {archive.stat().st_size / 1e6:.0f} MB, bundle "
        f"{bundle.size / 1e6:.0f} MB), import {import_s:.1f}s, rename {rename_s:.1f}s"
    )


# --- without dockerd: the pieces the moves are made of ---

#: ``Config`` as the Engine API reports it (Go names, nulls for empty lists, dockerd's keys)
API_CONFIG: dict[str, Any] = {
    "Args": {"Description": "", "Name": "args", "Settable": ["value"], "Value": ["serve"]},
    "Description": "d",
    "DockerVersion": "26.1.5",
    "Documentation": "",
    "Entrypoint": ["/usr/bin/python3", "-m", "dockplug"],
    "Env": [{"Description": "", "Name": "DOCKPLUG_DEBUG", "Settable": ["value"], "Value": "0"}],
    "Interface": {"Socket": "local.sock", "Types": ["docker.volumedriver/1.0"]},
    "IpcHost": False,
    "Linux": {"AllowAllDevices": False, "Capabilities": ["CAP_SYS_ADMIN"], "Devices": None},
    "Mounts": [
        {
            "Description": "",
            "Destination": "/state",
            "Name": "state",
            "Options": ["rbind"],
            "Settable": ["source"],
            "Source": "/var/lib/x",
            "Type": "bind",
        }
    ],
    "Network": {"Type": ""},
    "PidHost": False,
    "PropagatedMount": "/mnt/volumes",
    "User": {},
    "WorkDir": "",
    "rootfs": {"diff_ids": ["sha256:00"], "type": "layers"},
}


def test_authored_config_from_the_engine_api() -> None:
    data = json.loads(authored_config(API_CONFIG).to_json())
    assert "rootfs" not in data and "dockerVersion" not in data and "user" not in data
    assert data["propagatedMount"] == "/mnt/volumes"
    assert data["interface"] == {
        "types": ["docker.volumedriver/1.0"],
        "socket": "local.sock",
        "protocolscheme": "",
    }
    assert data["mounts"][0]["source"] == "/var/lib/x" and data["linux"]["devices"] == []


def test_settings_pairs_only_what_differs() -> None:
    config = authored_config(API_CONFIG)
    current = {"Env": ["DOCKPLUG_DEBUG=0"], "Args": ["serve"], "Mounts": [API_CONFIG["Mounts"][0]]}
    assert settings_pairs(config, current, current) == []
    wanted = {
        "Env": ["DOCKPLUG_DEBUG=1"],
        "Args": ["serve", "--x"],
        "Mounts": [{**API_CONFIG["Mounts"][0], "Source": "/tmp/s"}],
    }
    assert settings_pairs(config, wanted, current) == [
        "DOCKPLUG_DEBUG=1",
        "args=serve --x",
        "state.source=/tmp/s",
    ]


def test_push_needs_a_registry_reference() -> None:
    engine.check_pushable("127.0.0.1:5000/dockplug/local:0.1")
    engine.check_pushable("localhost/a/b")
    with pytest.raises(engine.EngineError, match=r"not a pushable reference.*rename"):
        engine.check_pushable("dockplug/local:0.1")
    with pytest.raises(engine.EngineError, match="digest"):
        engine.check_pushable("127.0.0.1:5000/a@sha256:" + "0" * 64)


def test_unpack_refuses_what_is_not_an_export(tmp_path: Path) -> None:
    import io

    from dockplug.errors import ConfigError

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("config.json", "settings.json", "rootfs/../../escape", "other"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(ConfigError, match="not a plugin archive"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out" / "other").exists()


@pytest.mark.dockerd
@pytest.mark.timeout(300)
def test_settings_with_spaces_survive_import_and_rename(
    dockerd: Dockerd,
    docker_client: Any,
    bundle: BuildResult,
    cleanup: list[str],
    tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:8]
    old, copy, renamed = (f"dpt-{kind}-{tag}:latest" for kind in ("sp", "spi", "spr"))
    cleanup += [old, copy, renamed]
    state = tmp_path / "state with spaces"
    verbs.create(old, bundle.path, docker_client)
    engine.set_options(old, [f"state.source={state}", "DOCKPLUG_DEBUG=a b  c"], docker_client)
    archive = tmp_path / "plugin.tar.gz"
    assert _cli(dockerd, "export", old, "-o", str(archive)).exit_code == 0

    # Args holding a space differ from the config's default: what a plugin keeps across
    # docker plugin upgrade (Settings survive, Config changes); plugin set cannot make them
    default = json.loads(bundle.path.joinpath("config.json").read_text())["args"]["value"]
    args = [*default, "--note", "two words", ""]
    patched = tmp_path / "patched.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(patched, "w:gz", compresslevel=1) as dst:
        for member in src:
            data = src.extractfile(member) if member.isreg() else None
            if member.name == "settings.json":
                assert data is not None
                meta = json.load(data)
                meta["settings"]["Args"] = args
                body = json.dumps(meta).encode()
                member.size = len(body)
                data = io.BytesIO(body)
            dst.addfile(member, data)

    res = _cli(dockerd, "import", str(patched), "--name", copy)
    assert res.exit_code == 0, res.output
    assert "cannot be set through dockerd" in res.output
    settings = _settings(dockerd, copy)
    assert settings["Args"] == args
    assert "DOCKPLUG_DEBUG=a b  c" in settings["Env"] and str(state) in _sources(settings)

    res = _cli(dockerd, "rename", copy, renamed)
    assert res.exit_code == 0, res.output
    settings = _settings(dockerd, renamed)
    assert settings["Args"] == args
    assert "DOCKPLUG_DEBUG=a b  c" in settings["Env"] and str(state) in _sources(settings)


def test_args_plugin_set_cannot_express_are_not_set() -> None:
    assert settable_args(["serve", "x"]) and settable_args(["a", "", "b"])
    assert not settable_args(["a b"]) and not settable_args([]) and not settable_args(["a "])
    config = authored_config(API_CONFIG)
    current = {"Env": [], "Args": ["serve"]}
    assert settings_pairs(config, {"Args": ["serve", "two words"]}, current) == []
    assert settings_pairs(config, {"Args": []}, current) == []
    assert settings_pairs(config, {"Env": ["DOCKPLUG_DEBUG=a  b"]}, current) == [
        "DOCKPLUG_DEBUG=a  b"
    ]
