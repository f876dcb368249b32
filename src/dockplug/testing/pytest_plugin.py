"""pytest fixtures for plugin authors (entry point ``dockplug``; loaded automatically).

``serve_plugin(driver)`` runs a driver on a temporary socket and returns a running server with a
``client()``; ``dockerd`` is a real, isolated Docker Engine (skipped where none can run), so a
plugin can be tested end to end through ``docker volume create`` and ``docker run -v``.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dockplug.conformance import Report
from dockplug.conformance import run as run_conformance
from dockplug.protocol.base import Driver
from dockplug.server.runner import ServeOptions
from dockplug.testing.dockerd import Dockerd, unavailable_reason
from dockplug.testing.etcd_fixtures import etcd, etcd35, etcd_server  # noqa: F401 - fixtures
from dockplug.testing.pki import Certificates, make_certificates
from dockplug.testing.servers import ThreadedPlugin
from dockplug.testing.sshd import Sshd, sshd_unavailable, throwaway_sshd


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="dp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def plugin_name() -> str:
    """A unique plugin name, because /run/docker/plugins is shared by every dockerd."""
    return f"dpt-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def serve_plugin(short_tmp: Path) -> Iterator[Callable[..., ThreadedPlugin]]:
    """``serve_plugin(driver, name=..., socket=..., tcp=...)`` -> a started ThreadedPlugin."""
    started: list[ThreadedPlugin] = []

    def start(driver: Driver | list[Driver], **kw: Any) -> ThreadedPlugin:
        kw.setdefault("name", "test-plugin")
        if "tcp" not in kw:
            kw.setdefault("socket", short_tmp / f"{kw['name']}.sock")
            kw.setdefault("announce", "none")
        plugin = ThreadedPlugin(driver, ServeOptions(**kw)).start()
        started.append(plugin)
        return plugin

    yield start
    for plugin in reversed(started):
        plugin.stop()


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """A real dockerd: the one ``DOCKPLUG_DOCKER_HOST`` names, or a fresh isolated one."""
    import os

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    host = os.environ.get("DOCKPLUG_DOCKER_HOST")
    daemon = Dockerd(host=host) if host else Dockerd()
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def docker_client(dockerd: Dockerd) -> Iterator[Any]:
    """A docker SDK client (Engine API) for the ``dockerd`` fixture's engine."""
    import docker

    client = docker.DockerClient(base_url=dockerd.host, timeout=600)
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(dockerd: Dockerd) -> str:
    return dockerd.busybox_image()


@pytest.fixture
def fresh_dockerd() -> Iterator[Dockerd]:
    """A new isolated dockerd for this test only.

    dockerd remembers every legacy plugin it activated, by name and address, for its whole
    life; tests that vary how one plugin is announced (socket, .spec, .json, TLS) need a daemon
    that has never seen it.
    """
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    daemon = Dockerd().start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A test CA with server (127.0.0.1) and client certificates, for TLS plugins."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    """A real sshd on 127.0.0.1 with a throwaway user, key and password (skipped where it
    cannot run: not root, no openssh-server/sshfs, no /dev/fuse)."""
    reason = sshd_unavailable()
    if reason:
        pytest.skip(reason)
    with throwaway_sshd() as server:
        yield server


@pytest.fixture
def conformance() -> Callable[..., Report]:
    """``conformance(plugin.url, opts={...})`` plays dockerd against a plugin (the checks of
    ``dockplug check``) and returns the report: ``assert report.ok, report.failures()``."""

    def run_checks(
        target: str, kind: str = "volume", opts: dict[str, str] | None = None, **kw: Any
    ) -> Report:
        return run_conformance(target, kind=kind, opts=opts, **kw)

    return run_checks
