"""Rootfs bases other than debootstrap on a real dockerd, with no registry: a local image (made
by ``docker import`` of the cached debootstrap rootfs), a rootfs tarball, and a Dockerfile
``FROM`` that image; the image-based plugin is created, enabled and used by a container; a base
without python3 is refused with one message naming what is missing."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockplug.errors import ConfigError
from dockplug.packaging import engine, verbs
from dockplug.packaging.bases import parse_base
from dockplug.packaging.bundle import build
from dockplug.packaging.doctor import diagnose_bundle
from dockplug.packaging.rootfs import ensure_base
from dockplug.testing.dockerd import Dockerd

pytestmark = [pytest.mark.dockerd, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def debian_rootfs() -> Path:
    """The cached debootstrap base (python3 only), made if absent."""
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap not installed (apt-get install debootstrap)")
    from rich.console import Console

    path, _cold = ensure_base(Console(stderr=True))
    return path


@pytest.fixture(scope="module")
def debian_image(dockerd: Dockerd, debian_rootfs: Path) -> Iterator[str]:
    """A local image with Debian and python3, made with ``docker import`` (no registry)."""
    ref = f"dpt-debian-py:{uuid.uuid4().hex[:8]}"
    tar = subprocess.Popen(["tar", "-C", str(debian_rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        ["docker", "import", "-", ref],
        stdin=tar.stdout,
        env=dockerd.env,
        check=True,
        capture_output=True,
    )
    assert tar.wait() == 0
    yield ref
    dockerd.docker("image", "rm", "-f", ref, check=False)


@pytest.fixture
def docker_host(dockerd: Dockerd, monkeypatch: pytest.MonkeyPatch) -> str:
    """DOCKER_HOST for the code under test, which connects through the environment."""
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    return dockerd.host


def _check_rootfs(out: Path) -> None:
    rootfs = out / "rootfs"
    assert (rootfs / "usr/bin/python3").exists()
    assert (rootfs / "opt/dockplug/site/dockplug/__init__.py").is_file()
    assert (rootfs / "run/docker/plugins").is_dir()
    assert not (rootfs / ".dockerenv").exists()
    assert [f for f in diagnose_bundle(out) if f.level == "error"] == []


def test_image_base_end_to_end(
    dockerd: Dockerd,
    docker_client: Any,
    docker_host: str,
    debian_image: str,
    busybox_image: str,
    tmp_path: Path,
    plugin_name: str,
) -> None:
    res = build("local", "dpt/local", tmp_path / "img", base=parse_base(f"image:{debian_image}"))
    print(f"build from image: {res.seconds:.1f}s, {res.size / 1e6:.0f} MB")
    _check_rootfs(res.path)
    assert str(res.base) == f"image:{debian_image}" and not res.cold
    # the container made to read the image is gone
    assert not docker_client.containers.list(all=True, filters={"name": "dockplug-base-"})

    name = f"{plugin_name}:latest"
    state = Path(tempfile.mkdtemp(prefix="dpt-state-"))
    verbs.create(name, res.path, docker_client)
    plugin_id = docker_client.plugins.get(name).id
    try:
        engine.set_options(name, [f"state.source={state}"], docker_client)
        enabled = verbs.enable(name, timeout=30, client=docker_client)
        assert enabled.socket is not None and enabled.socket.exists()
        vol = f"v-{uuid.uuid4().hex[:6]}"
        dockerd.docker("volume", "create", "-d", name, vol)
        dockerd.docker("run", "--rm", "-v", f"{vol}:/data", busybox_image,
                       "sh", "-c", "echo from-image > /data/hello.txt")  # fmt: skip
        root = dockerd.docker("info", "--format", "{{.DockerRootDir}}").stdout.strip()
        host_file = Path(root) / "plugins" / plugin_id / "propagated-mount" / vol / "hello.txt"
        assert host_file.read_text() == "from-image\n"
        dockerd.docker("volume", "rm", vol)
    finally:
        for v in docker_client.volumes.list(filters={"driver": name}):
            v.remove(force=True)
        dockerd.docker("plugin", "rm", "-f", name, check=False)
        shutil.rmtree(Path("/run/docker/plugins") / plugin_id, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def test_tar_base(debian_rootfs: Path, tmp_path: Path) -> None:
    tarball = tmp_path / "rootfs.tar.gz"
    subprocess.run(["tar", "-C", str(debian_rootfs), "-czf", str(tarball), "."], check=True)
    res = build("local", "dpt/local", tmp_path / "tar", base=parse_base(f"tar:{tarball}"))
    print(f"build from tar.gz: {res.seconds:.1f}s, {res.size / 1e6:.0f} MB")
    _check_rootfs(res.path)
    # owners and setuid bits as in the base (su is setuid root in Debian)
    su = debian_rootfs / "usr/bin/su"
    if su.exists():
        assert (res.path / "rootfs/usr/bin/su").stat().st_mode == su.stat().st_mode


def test_dockerfile_base_from_a_local_image(
    docker_client: Any, docker_host: str, debian_image: str, tmp_path: Path
) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "marker.txt").write_text("copied\n")
    (context / "Dockerfile").write_text(
        f"FROM {debian_image}\nCOPY marker.txt /etc/dockplug-marker\n"
        "RUN echo run >> /etc/dockplug-marker\n"
    )
    before = {t for i in docker_client.images.list() for t in i.tags}
    t0 = time.monotonic()
    res = build("local", "dpt/local", tmp_path / "df", base=parse_base(f"dockerfile:{context}"))
    print(f"build from Dockerfile: {time.monotonic() - t0:.1f}s, {res.size / 1e6:.0f} MB")
    _check_rootfs(res.path)
    assert (res.path / "rootfs/etc/dockplug-marker").read_text() == "copied\nrun\n"
    after = {t for i in docker_client.images.list() for t in i.tags}
    assert after == before  # the temporary tag is removed

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Dockerfile").write_text("FROM dpt-no-such-image-here:1\n")
    with pytest.raises(ConfigError, match=r"docker build failed.*fix: FROM an image already"):
        build("local", "dpt/local", tmp_path / "bad-out", base=parse_base(f"dockerfile:{bad}"))
    assert not (tmp_path / "bad-out").exists()


def test_base_without_python3_is_refused(
    docker_host: str, busybox_image: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        build("sshfs", "dpt/sshfs", tmp_path / "bb", base=parse_base(f"image:{busybox_image}"))
    message = str(info.value)
    assert f"--base image:{busybox_image} lacks what the plugin needs" in message
    assert "there is no python3" in message
    assert "sshfs" in message and "fuse3 (no fusermount3 program)" in message
    assert "fix: add them to the base" in message and "--base debootstrap" in message
    assert not (tmp_path / "bb").exists()
    with pytest.raises(ConfigError, match="no such image on the Docker host"):
        build("local", "dpt/local", tmp_path / "x", base=parse_base("image:dpt-missing:0"))
