"""Built-in drivers as managed (v2) plugins on a test dockerd: their bundles built once per
source tree (:func:`cached_build`), a plugin created from one (:func:`created_plugin`) or also
configured and enabled (:func:`enabled_builtin`), and gone afterwards.

What every managed-plugin test module does once (the build is ~45 s with the debootstrap base
cached, the upload up to 200 MB): ``dockplug build``, ``docker plugin create``, ``docker plugin
set`` (its ``state.source`` on a temporary host folder, plus the module's own settings),
``docker plugin enable``; and at the end dockerd's log lines about the plugin (so a failure
shows what the plugin said: dockerd prefixes a managed plugin's stdout with its id), the module's
own clean-up, ``docker plugin rm -f`` and the plugin's socket folder, which dockerd leaves in the
shared /run/docker/plugins.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from dockplug.packaging import engine, verbs
from dockplug.packaging.bundle import BuildResult, build, tree_size
from dockplug.testing.dockerd import Dockerd

#: Where bundles built for tests are kept between pytest runs (.ci/run's second pass, on
#: dockerd 28, uses the bundles its first pass built); DOCKPLUG_TEST_BUNDLES overrides it.
BUNDLE_CACHE = Path("/var/cache/dockplug/test-bundles")


@functools.cache
def _tree_digest() -> bytes:
    """Every file of the running dockplug, its requirements and the Python minor version (the
    compiled wheels are built for it): what a built-in driver's bundle is made of. Read once
    per process."""
    import dockplug

    digest = hashlib.sha256(f"{sys.version_info[:2]}\0".encode())
    for req in sorted(metadata.requires("dockplug") or []):
        digest.update(req.encode() + b"\0")
    package = Path(dockplug.__file__).parent
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.digest()


def _source_key(driver: str) -> str:
    return hashlib.sha256(driver.encode() + b"\0" + _tree_digest()).hexdigest()[:16]


def cached_build(driver: str) -> BuildResult:
    """``dockplug build DRIVER``, or the bundle an earlier build of the same source tree made.
    The cached bundle is read, never changed: ``docker plugin create`` copies it. Older
    bundles of the driver (another source tree) are removed when a new one is made."""
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap not installed (apt-get install debootstrap)")
    root = Path(os.environ.get("DOCKPLUG_TEST_BUNDLES") or BUNDLE_CACHE)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{driver}-{_source_key(driver)}"
    done = path.with_name(path.name + ".done")
    with open(root / f".{driver}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once build it once
        if done.exists() and (path / "config.json").exists():
            return BuildResult(path, tree_size(path), 0.0, False)
        for old in root.glob(f"{driver}-*"):
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{driver}-", dir=root))
        try:
            result = build(driver, f"dpt/{driver}", tmp / "bundle")
            (tmp / "bundle").rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        done.write_text(f"{result.seconds:.1f}s cold={result.cold}\n")
        return BuildResult(path, result.size, result.seconds, result.cold)


@contextmanager
def created_plugin(
    dockerd: Dockerd,
    client: Any,
    bundle: BuildResult,
    prefix: str = "dpt",
    after_remove: Callable[[str], None] = lambda plugin_id: None,
) -> Iterator[str]:
    """A plugin created (disabled) from BUNDLE under a new name, which is yielded; afterwards
    its volumes and the plugin are removed, ``after_remove(plugin_id)`` runs (mounts a killed
    plugin left), and its socket folder goes (a failed enable leaves dockerd's init fifos)."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}:latest"
    t0 = time.monotonic()
    verbs.create(name, bundle.path, client)
    plugin_id = client.plugins.get(name).id
    print(f"create took {time.monotonic() - t0:.1f}s; bundle {bundle.size / 1e6:.0f} MB, "
          f"built in {bundle.seconds:.1f}s (cold={bundle.cold})")  # fmt: skip
    try:
        yield name
    finally:
        for vol in client.volumes.list(filters={"driver": name}):
            vol.remove(force=True)
        dockerd.docker("plugin", "rm", "-f", name, check=False)
        after_remove(plugin_id)
        shutil.rmtree(Path("/run/docker/plugins") / plugin_id, ignore_errors=True)


@dataclass
class EnabledPlugin:
    name: str  # REPO/NAME:TAG, as dockerd names it
    id: str
    state: Path  # the host folder behind the plugin's /mnt/state
    client: Any  # a docker.DockerClient on the test dockerd


@contextmanager
def enabled_builtin(
    dockerd: Dockerd,
    driver: str,
    settings: Sequence[str] = (),
    before_remove: Callable[[EnabledPlugin], None] = lambda plugin: None,
) -> Iterator[EnabledPlugin]:
    """A plugin from DRIVER's bundle (:func:`cached_build`, :func:`created_plugin`) with
    ``state.source`` on a temporary folder and SETTINGS set, enabled; yields it. Afterwards
    dockerd's log lines about it are printed and ``before_remove(plugin)`` runs (containers or
    networks that use it) before the plugin goes."""
    from dockplug.engine_api import docker_client

    result = cached_build(driver)
    client = docker_client(dockerd.host, timeout=600)
    state = Path(tempfile.mkdtemp(prefix=f"dpt-{driver}state-"))
    try:
        with created_plugin(dockerd, client, result, f"dpt/{driver}") as name:
            plugin = EnabledPlugin(name, client.plugins.get(name).id, state, client)
            try:
                engine.set_options(name, [f"state.source={state}", *settings], client)
                enabled = verbs.enable(name, timeout=30, client=client)
                print(f"enable-to-socket {enabled.seconds:.2f}s")
                yield plugin
            finally:
                try:
                    _print_plugin_log(dockerd, plugin.id)
                finally:
                    before_remove(plugin)
    finally:
        client.close()
        shutil.rmtree(state, ignore_errors=True)


def _print_plugin_log(dockerd: Dockerd, plugin_id: str) -> None:
    if dockerd.log_path is None:
        return
    lines = [ln for ln in dockerd.log_path.read_text().splitlines() if plugin_id in ln]
    said = [ln for ln in lines if "level=error" in ln or "level=warn" in ln]
    print("plugin log (warnings, errors, last lines):", *said, *lines[-3:], sep="\n  ")
