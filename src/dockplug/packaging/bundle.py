"""``dockplug build``: a managed-plugin bundle (``config.json`` + ``rootfs/``) for a driver."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from dockplug.drivers.registry import BUILTINS
from dockplug.errors import ConfigError
from dockplug.packaging.bases import DEBOOTSTRAP, Base
from dockplug.packaging.config import (
    PluginConfig,
    config_for_driver,
    driver_packages,
    validate_config,
)
from dockplug.packaging.rootfs import make_rootfs


@dataclass
class BuildResult:
    path: Path
    size: int  # bytes on disk of the whole bundle
    seconds: float
    cold: bool  # the debootstrap base had to be made
    base: Base = DEBOOTSTRAP


def default_output(name: str) -> Path:
    """``build/NAME`` for a reference ``[registry/]repo/NAME[:TAG]``."""
    last = name.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    return Path("build") / (last or "plugin")


def tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _clear(output: Path) -> None:
    if not output.exists():
        return
    if not output.is_dir():
        raise ConfigError(f"{output} exists and is not a folder; fix: choose another --output")
    entries = {p.name for p in output.iterdir()}
    if entries and not entries <= {"config.json", "rootfs"}:
        raise ConfigError(
            f"{output} is not empty and is not a plugin bundle; fix: choose another --output"
        )
    shutil.rmtree(output)


def _write(
    out: Path,
    config: PluginConfig,
    console: Console,
    cache: Path | None,
    packages: tuple[str, ...],
    project: Path | None = None,
    base: Base = DEBOOTSTRAP,
) -> bool:
    _clear(out)
    out.mkdir(parents=True)
    try:
        cold = make_rootfs(out / "rootfs", console, cache, packages, project, base)
        text = config.to_json()
        validate_config(json.loads(text), str(out / "config.json"))
        (out / "config.json").write_text(text)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return cold


def build_project(
    path: Path,
    name: str,
    output: Path | None = None,
    *,
    cache: Path | None = None,
    console: Console | None = None,
    base: Base = DEBOOTSTRAP,
) -> BuildResult:
    """Write config.json and rootfs/ for the user's project in folder PATH (its pyproject.toml
    names the driver in ``[tool.dockplug]``) into OUTPUT (default build/NAME)."""
    from dockplug.packaging.project import load_project, project_config

    console = console or Console(stderr=True)
    t0 = time.monotonic()
    project = load_project(path)
    config = project_config(project)
    out = output or default_output(name)
    packages = tuple(sorted(set(project.settings.packages)))
    cold = _write(out, config, console, cache, packages, path, base)
    return BuildResult(out, tree_size(out), time.monotonic() - t0, cold, base)


def build(
    driver: str,
    name: str,
    output: Path | None = None,
    *,
    cache: Path | None = None,
    console: Console | None = None,
    base: Base = DEBOOTSTRAP,
) -> BuildResult:
    """Write config.json and rootfs/ for the built-in DRIVER (or, given a folder with a
    pyproject.toml, the user's project there) into OUTPUT (default build/NAME), the rootfs
    starting from BASE."""
    from dockplug.packaging.project import is_project

    if is_project(Path(driver)) and (driver not in BUILTINS or "/" in driver):
        return build_project(Path(driver), name, output, cache=cache, console=console, base=base)
    if driver not in BUILTINS and Path(driver).is_dir():
        from dockplug.packaging.project import load_project

        load_project(Path(driver))  # raises: no pyproject.toml, with an example
    console = console or Console(stderr=True)
    t0 = time.monotonic()
    config = config_for_driver(driver)
    out = output or default_output(name)
    cold = _write(out, config, console, cache, driver_packages(driver), base=base)
    return BuildResult(out, tree_size(out), time.monotonic() - t0, cold, base)
