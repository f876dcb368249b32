"""The sshfs driver as the managed plugin ``dockplug/sshfs`` on a real dockerd (issue 5, "Managed
plugin"): build (its rootfs holds sshfs, fusermount and ssh), create, enable with the host's
network so it reaches the test sshd on 127.0.0.1, a volume with key auth (the key in the
plugin's state folder) and a pinned host key, a second one with a password from the secrets
store (`dockplug secret set` on the host); a container writes through each, the files appear in
the remote folders; no secret in `docker volume inspect` or the plugin's log; disable and rm."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockplug.packaging import engine, verbs
from dockplug.packaging.bundle import BuildResult
from dockplug.packaging.doctor import diagnose_bundle, diagnose_installed
from dockplug.packaging.rootfs import cache_dir, ensure_base
from dockplug.testing.dockerd import Dockerd
from dockplug.testing.managed import cached_build, created_plugin
from dockplug.testing.sshd import Sshd

pytestmark = pytest.mark.dockerd


@pytest.fixture(scope="session")
def sshfs_bundle() -> BuildResult:
    """The sshfs driver's bundle, built once per run (the first build ever makes the cached
    debootstrap base with sshfs, fuse3 and openssh-client: under a minute)."""
    return cached_build("sshfs")


def _unmount_under(prefix: str) -> None:
    """Lazily unmount whatever a killed plugin left mounted under PREFIX (dead FUSE mounts)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = [line.split()[4] for line in lines]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


@pytest.fixture
def plugin(dockerd: Dockerd, docker_client: Any, sshfs_bundle: BuildResult) -> Iterator[str]:
    root = dockerd.docker("info", "--format", "{{.DockerRootDir}}").stdout.strip()

    def unmount(plugin_id: str) -> None:
        _unmount_under(f"{root}/plugins/{plugin_id}/")

    with created_plugin(dockerd, docker_client, sshfs_bundle, "dpt-sshfs", unmount) as name:
        yield name


def test_bundle_has_sshfs_and_passes_the_doctor(sshfs_bundle: BuildResult) -> None:
    rootfs = sshfs_bundle.path / "rootfs"
    for tool in ("usr/bin/sshfs", "usr/bin/ssh", "usr/bin/fusermount", "usr/bin/python3"):
        assert (rootfs / tool).exists(), tool
    assert diagnose_bundle(sshfs_bundle.path) == []
    config = json.loads((sshfs_bundle.path / "config.json").read_text())
    assert config["network"] == {"type": "host"}
    assert config["linux"]["devices"][0]["path"] == "/dev/fuse"


@pytest.mark.timeout(900)
def test_managed_sshfs_end_to_end(
    dockerd: Dockerd, docker_client: Any, plugin: str, busybox_image: str, sshd: Sshd
) -> None:
    state = Path(tempfile.mkdtemp(prefix="dpt-sshfs-state-"))
    try:
        # the plugin's state folder (its /mnt/state): off the host's real
        # /var/lib/dockplug/managed-sshfs; holds the user key and the secrets store
        state.chmod(0o700)
        shutil.copy(sshd.user_key, state / "key")
        (state / "key").chmod(0o600)
        key_text = sshd.user_key.read_text()
        subprocess.run(
            [sys.executable, "-m", "dockplug", "secret", "set", "sshpw", "--state-dir", str(state)],
            input=sshd.password + "\n", capture_output=True, text=True, check=True,
        )  # fmt: skip
        engine.set_options(plugin, [f"state.source={state}"], docker_client)
        # the doctor's /dev/fuse check accepts the installed plugin
        assert [f.check for f in diagnose_installed(plugin, docker_client)] == ["disabled"]
        res = verbs.enable(plugin, timeout=30, client=docker_client)
        print(f"enable-to-socket-ready {res.seconds:.2f}s")
        assert res.socket is not None and res.socket.exists()
        assert res.socket.name == "sshfs.sock" and len(str(res.socket)) <= 107
        root = dockerd.docker("info", "--format", "{{.DockerRootDir}}").stdout.strip()
        propagated = Path(root) / "plugins" / res.id / "propagated-mount"

        key_vol, pw_vol = f"k-{uuid.uuid4().hex[:6]}", f"p-{uuid.uuid4().hex[:6]}"
        key_dir, pw_dir = sshd.folder(key_vol), sshd.folder(pw_vol)
        common = ["-o", f"port={sshd.port}", "-o", f"host_key={sshd.host_key_pub}"]
        dockerd.docker("volume", "create", "-d", plugin, "-o", f"sshcmd={sshd.sshcmd(key_dir)}",
                       "-o", "identity_file=/mnt/state/key", *common, key_vol)  # fmt: skip
        dockerd.docker("volume", "create", "-d", plugin, "-o", f"sshcmd={sshd.sshcmd(pw_dir)}",
                       "-o", "secret=sshpw", *common, pw_vol)  # fmt: skip
        for vol, folder in ((key_vol, key_dir), (pw_vol, pw_dir)):
            t0 = time.monotonic()
            dockerd.docker("run", "--rm", "-v", f"{vol}:/data", busybox_image,
                           "sh", "-c", f"echo managed {vol} > /data/hello.txt")  # fmt: skip
            print(f"{vol}: docker run with a first mount {time.monotonic() - t0:.2f}s")
            assert (folder / "hello.txt").read_text() == f"managed {vol}\n"
            # the FUSE mount was made inside the plugin under /mnt/volumes, seen by dockerd
            # through the propagated mount; the last Unmount took it down again
            mounts = Path("/proc/self/mountinfo").read_text()
            assert f"{propagated}/{vol} " not in mounts

        # written on the remote, read back through the volume
        (key_dir / "from-remote.txt").write_text("remote\n")
        out = dockerd.docker("run", "--rm", "-v", f"{key_vol}:/data:ro", busybox_image,
                             "cat", "/data/from-remote.txt").stdout  # fmt: skip
        assert out == "remote\n"

        inspect = dockerd.docker("volume", "inspect", key_vol, pw_vol).stdout
        status = {v["Name"]: v for v in json.loads(inspect)}
        assert status[key_vol]["Driver"] == plugin
        assert sshd.password not in inspect
        key_body = "".join(key_text.splitlines()[1:-1])
        assert key_body[:40] not in inspect.replace("\n", "")
        assert sshd.password not in dockerd.log_tail(5000)
        assert not any(key_body[i : i + 40] in dockerd.log_tail(5000) for i in (0, 40))
        # the state (volume records, ssh configs, the pinned host keys) is on the host folder
        assert (state / "volumes.db").exists() and (state / "known_hosts").is_dir()

        dockerd.docker("volume", "rm", key_vol, pw_vol)
        with pytest.raises(engine.EngineError, match="disable"):
            engine.remove(plugin, client=docker_client)
        engine.disable(plugin, client=docker_client)
        engine.remove(plugin, client=docker_client)
        assert dockerd.docker("plugin", "inspect", plugin, check=False).returncode != 0
        assert (key_dir / "hello.txt").exists()  # removing a volume leaves the remote alone
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_state_folder_is_the_plugins_own() -> None:
    """The bundle's default state source is not the host-run sshfs driver's state dir."""
    from dockplug.drivers.volume.sshfs import DEFAULT_STATE_DIR
    from dockplug.packaging.config import config_for_driver

    mount = config_for_driver("sshfs").mounts[0]
    assert mount.source == "/var/lib/dockplug/managed-sshfs"
    assert os.path.commonpath([mount.source, str(DEFAULT_STATE_DIR)]) != str(DEFAULT_STATE_DIR)


def test_each_package_set_has_its_own_cached_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    monkeypatch.setenv("DOCKPLUG_ROOTFS_CACHE", str(tmp_path / "bookworm-python3"))
    assert cache_dir() == tmp_path / "bookworm-python3"
    both = cache_dir(["sshfs", "openssh-client", "fuse3", "python3"])
    assert both == tmp_path / "bookworm-python3+fuse3+openssh-client+sshfs"
    # a complete base for that set is used as it is (no debootstrap)
    (both / "usr/bin").mkdir(parents=True)
    (both / "usr/bin/python3").touch()
    (both / ".dockplug-base").write_text(
        "debootstrap --variant=minbase --include=python3,fuse3,openssh-client,sshfs bookworm\n"
    )
    assert ensure_base(Console(quiet=True), packages=["sshfs", "fuse3", "openssh-client"]) == (
        both,
        False,
    )
