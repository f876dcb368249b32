"""The authz driver as a managed (v2) plugin: ``dockplug build authz``, ``docker plugin
create``, ``docker plugin set`` of its state folder (the policy lives in ``policy/`` there),
enable, then a dedicated dockerd restarted with ``--authorization-plugin=REPO/NAME:TAG`` (dockerd
looks the plugin up at start, so it must already be enabled in that data root). The plugin
denies ``docker run --privileged`` with the policy's reason and allows ordinary work; its audit
log lands in the host's state folder. One dockerd and one plugin for the module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockplug.packaging.bundle import BuildResult
from dockplug.packaging.config import SITE_DIR
from dockplug.testing.dockerd import Dockerd, unavailable_reason
from dockplug.testing.managed import cached_build
from dockplug.testing.servers import wait_until

pytestmark = pytest.mark.dockerd

SAFE = Path(__file__).resolve().parents[2] / "examples" / "authz" / "safe"
DENIED = "authorization denied by plugin"


@dataclass
class Managed:
    dockerd: Dockerd
    name: str  # REPO/NAME:TAG, as dockerd names it
    bundle: BuildResult
    state: Path
    image: str


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Managed]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("authz-managed")
    name = f"dpz/authz-{uuid.uuid4().hex[:8]}:latest"
    bundle = cached_build("authz")
    # the host folder bind-mounted at /mnt/state: the policy in policy/, the audit log beside
    state = root / "state"
    shutil.copytree(SAFE, state / "policy")
    daemon = Dockerd()
    plugin_id = ""
    try:
        daemon.start()
        image = daemon.busybox_image()
        daemon.docker("plugin", "create", name, str(bundle.path))
        plugin_id = daemon.docker("plugin", "inspect", "-f", "{{.Id}}", name).stdout.strip()
        daemon.docker("plugin", "set", name, f"state.source={state}")
        daemon.docker("plugin", "enable", name, timeout=60)
        # dockerd restores the enabled plugin before it checks --authorization-plugin
        daemon.restart(extra_args=(f"--authorization-plugin={name}",))
        yield Managed(daemon, name, bundle, state, image)
    finally:
        daemon.stop()
        if plugin_id:  # a managed plugin's socket folder is in the shared /run/docker/plugins
            shutil.rmtree(Path("/run/docker/plugins") / plugin_id, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def test_cedarpy_imports_in_the_rootfs_python(managed: Managed) -> None:
    """cedarpy is a compiled wheel: the one pip put under SITE_DIR must load in the rootfs's
    own python3, not only the host's."""
    rootfs = managed.bundle.path / "rootfs"
    res = subprocess.run(
        ["chroot", str(rootfs), "/usr/bin/python3", "-c",
         "import cedarpy; print(cedarpy.__file__)"],
        env={**os.environ, "PYTHONPATH": SITE_DIR, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{SITE_DIR}/cedarpy/__init__.py"


def test_privileged_run_is_denied_with_the_policys_reason(managed: Managed) -> None:
    res = managed.dockerd.docker("run", "--rm", "--privileged", managed.image, "true", check=False)
    assert res.returncode != 0
    assert DENIED in res.stderr and managed.name in res.stderr, res.stderr
    assert "privileged containers are root on the host" in res.stderr, res.stderr


def test_ordinary_work_is_allowed(managed: Managed) -> None:
    run = managed.dockerd.docker("run", "--rm", "--network", "none", managed.image, "echo", "ok")
    assert run.stdout.strip() == "ok"
    assert managed.dockerd.docker("ps", "-a").returncode == 0
    assert managed.dockerd.docker("images").returncode == 0


def test_plugin_changes_are_denied_so_it_cannot_be_switched_off(managed: Managed) -> None:
    res = managed.dockerd.docker("plugin", "disable", managed.name, check=False)
    assert res.returncode != 0 and DENIED in res.stderr, res.stderr
    assert managed.dockerd.docker("plugin", "ls").returncode == 0  # reading is allowed


def test_the_audit_log_is_written_to_the_host_state_folder(managed: Managed) -> None:
    audit = managed.state / "audit.log"
    managed.dockerd.docker("run", "--rm", "--privileged", managed.image, "true", check=False)

    def privileged_denials() -> list[dict[str, object]]:
        if not audit.exists():
            return []
        lines = [json.loads(x) for x in audit.read_text().splitlines() if x]
        return [x for x in lines if x.get("action") == "container.create"
                and x.get("decision") == "deny"]  # fmt: skip

    assert wait_until(lambda: bool(privileged_denials()), 10), "no denial in the audit log"
    assert privileged_denials()[-1]["policies"] == ["no-privileged"]


def test_dockerd_also_takes_the_name_without_its_tag(managed: Managed) -> None:
    """dockerd resolves ``--authorization-plugin=REPO/NAME`` as a reference (``:latest``
    added) and names the plugin with its tag in the denial. Runs last: it restarts dockerd."""
    untagged = managed.name.removesuffix(":latest")
    managed.dockerd.restart(extra_args=(f"--authorization-plugin={untagged}",))
    res = managed.dockerd.docker("run", "--rm", "--privileged", managed.image, "true", check=False)
    assert f"{DENIED} {managed.name}: " in res.stderr, res.stderr
    assert managed.dockerd.docker("ps").returncode == 0
