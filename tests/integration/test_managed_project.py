"""A user's own project (examples/hello_project) as a managed (v2) plugin on a real dockerd:
``dockplug build DIR`` from the cached base, create, enable, a volume written from a container
and seen on the host under the propagated mount, disable, remove."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockplug.packaging import engine, verbs
from dockplug.packaging.bundle import BuildResult, build
from dockplug.testing.dockerd import Dockerd

pytestmark = pytest.mark.dockerd

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello_project"


@pytest.fixture(scope="module")
def hello_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildResult]:
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap not installed (apt-get install debootstrap)")
    out = tmp_path_factory.mktemp("bundle") / "hello"
    result = build(str(HELLO), "hello/plugin:0.1", out)
    print(f"hello project bundle: {result.size / 1e6:.0f} MB in {result.seconds:.1f}s "
          f"(cold={result.cold})")  # fmt: skip
    yield result
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.timeout(600)
def test_managed_project_end_to_end(
    dockerd: Dockerd, hello_bundle: BuildResult, busybox_image: str
) -> None:
    import docker

    client: Any = docker.DockerClient(base_url=dockerd.host, timeout=600)
    name = f"dpt-hello-{uuid.uuid4().hex[:8]}:latest"
    plugin_id = ""
    try:
        site = hello_bundle.path / "rootfs/opt/dockplug/site"
        assert (site / "hello_plugin" / "__init__.py").is_file()
        assert (site / "dockplug").is_dir()
        verbs.create(name, hello_bundle.path, client)
        plugin_id = client.plugins.get(name).id
        res = verbs.enable(name, timeout=30, client=client)
        print(f"enable-to-socket-ready {res.seconds:.2f}s")
        assert res.socket is not None and res.socket.name == "plugin.sock"

        vol = f"v-{uuid.uuid4().hex[:6]}"
        dockerd.docker("volume", "create", "-d", name, vol)
        dockerd.docker("run", "--rm", "-v", f"{vol}:/data", busybox_image,
                       "sh", "-c", "echo project > /data/hello.txt")  # fmt: skip
        root = dockerd.docker("info", "--format", "{{.DockerRootDir}}").stdout.strip()
        host_file = Path(root) / "plugins" / res.id / "propagated-mount" / vol / "hello.txt"
        assert host_file.read_text() == "project\n"
        listed = dockerd.docker("volume", "ls", "-q", "--filter", f"driver={name}").stdout
        assert vol in listed.split()
        dockerd.docker("volume", "rm", vol)
        assert not host_file.parent.exists()

        engine.disable(name, client=client)
        engine.remove(name, client=client)
        assert dockerd.docker("plugin", "inspect", name, check=False).returncode != 0
    finally:
        dockerd.docker("plugin", "rm", "-f", name, check=False)
        if plugin_id:
            shutil.rmtree(Path("/run/docker/plugins") / plugin_id, ignore_errors=True)
        client.close()
