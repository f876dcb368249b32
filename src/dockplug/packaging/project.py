"""A user's own plugin project: a pip-installable folder whose ``pyproject.toml`` names the
driver class in a ``[tool.dockplug]`` table, built into a managed plugin by ``dockplug build DIR``.

The driver class is imported once on the host, in a subprocess with the project (and its
``src/``) on ``PYTHONPATH``, only to read which plugin interfaces it implements.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from dockplug.errors import ConfigError
from dockplug.packaging.config import (
    PLUGIN_SOCKET_DIR,
    Mount,
    PluginConfig,
    check_absolute_or_empty,
    check_capabilities,
    check_destination,
    check_device,
    check_socket,
    format_errors,
    make_config,
)
from dockplug.packaging.rootfs import PACKAGE_NAME

VOLUME_TYPE = "docker.volumedriver/1.0"
DEFAULT_PROPAGATED_MOUNT = "/mnt/volumes"
_TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_SETTING = re.compile(r"[A-Za-z_][\w-]*")

EXAMPLE = """\
[tool.dockplug]
driver = "mypkg.plugin:MyDriver"    # module:Class, importable once the project is installed
settings = {base = "/mnt/volumes"}  # optional: -c key=value for the driver's constructor"""


class ProjectMount(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = ""
    source: str
    destination: str
    settable: bool | list[Literal["source"]] = True
    description: str = ""

    @field_validator("destination")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return check_destination(v)


class ProjectSettings(BaseModel):
    """The ``[tool.dockplug]`` table."""

    model_config = ConfigDict(extra="forbid")
    driver: str
    socket: str = "plugin.sock"
    propagated_mount: str | None = None
    settings: dict[str, str | int | float | bool] = {}
    capabilities: list[str] = []
    devices: list[str] = []
    network: Literal["host", ""] = ""
    mounts: list[ProjectMount] = []
    packages: list[str] = []
    description: str = ""

    @field_validator("driver")
    @classmethod
    def _driver(cls, v: str) -> str:
        if not _TARGET.fullmatch(v):
            raise ValueError(
                f"{v!r} is not module:Class; fix: write it like 'mypkg.plugin:MyDriver' "
                "(the module as imported once the project is installed, not a file path)"
            )
        return v

    @field_validator("socket")
    @classmethod
    def _socket(cls, v: str) -> str:
        return check_socket(v)

    @field_validator("settings")
    @classmethod
    def _settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if not _SETTING.fullmatch(key):
                raise ValueError(
                    f"{key!r} is not a keyword argument name; fix: use the name of a parameter "
                    "of the driver's __init__, e.g. base"
                )
        return v

    @field_validator("capabilities")
    @classmethod
    def _caps(cls, v: list[str]) -> list[str]:
        return check_capabilities(v)

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str]) -> list[str]:
        return [check_device(path) for path in v]

    @field_validator("packages")
    @classmethod
    def _packages(cls, v: list[str]) -> list[str]:
        for name in v:
            if not PACKAGE_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a Debian package name; fix: e.g. 'sshfs'")
        return v

    @field_validator("propagated_mount")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return check_absolute_or_empty(v)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _errors(exc: ValidationError, source: str) -> str:
    keys = ", ".join(ProjectSettings.model_fields)
    lines = []
    for err in exc.errors():
        where = _loc(tuple(err["loc"]))
        where = f"tool.dockplug.{where}" if where else "tool.dockplug"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; fix: check the spelling (known keys: {keys})"
        elif err["type"] == "missing":
            msg = "required; fix: add it" + (
                " (module:Class of the driver)" if where.endswith(".driver") else ""
            )
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


@dataclass
class Project:
    path: Path
    name: str
    settings: ProjectSettings

    @property
    def module(self) -> str:
        return self.settings.driver.partition(":")[0]

    def import_paths(self) -> list[Path]:
        """Where the driver module is found before installing: ``src/`` (if any) and the root."""
        src = self.path / "src"
        return [src, self.path] if src.is_dir() else [self.path]


def parse_settings(table: Any, source: str = "pyproject.toml") -> ProjectSettings:
    try:
        return ProjectSettings.model_validate(table)
    except ValidationError as exc:
        raise ConfigError(_errors(exc, source)) from exc


def is_project(path: Path) -> bool:
    return path.is_dir() and (path / "pyproject.toml").is_file()


def load_project(path: Path) -> Project:
    """The project in folder PATH (its ``pyproject.toml`` and ``[tool.dockplug]`` table)."""
    pyproject = path / "pyproject.toml"
    if not path.is_dir():
        raise ConfigError(f"{path}: not a folder; fix: give the folder holding pyproject.toml")
    try:
        data = tomllib.loads(pyproject.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: no pyproject.toml; fix: make it a pip-installable project with a "
            f"[tool.dockplug] table, e.g.\n{EXAMPLE}"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{pyproject}: not valid TOML: {exc}") from exc
    table = data.get("tool", {}).get("dockplug")
    if table is None:
        raise ConfigError(
            f"{pyproject}: no [tool.dockplug] table naming the driver; fix: add\n{EXAMPLE}"
        )
    if not isinstance(table, dict):
        raise ConfigError(f"{pyproject}: tool.dockplug must be a table; fix: use\n{EXAMPLE}")
    settings = parse_settings(table, str(pyproject))
    name = str(data.get("project", {}).get("name") or path.resolve().name)
    return Project(path, name, settings)


_PROBE = """\
import importlib, json, sys
from dockplug.protocol.base import Driver, protocols_of
module, _, attr = sys.argv[1].partition(":")
cls = getattr(importlib.import_module(module), attr, None)
if not isinstance(cls, type) or not issubclass(cls, Driver):
    sys.exit(f"{attr} in {module} is not a dockplug driver class (a subclass of "
             "dockplug.VolumeDriver or another protocol base)")
print(json.dumps([p.managed_type for p in protocols_of(cls) if p.announce and p.managed_type]))
"""


def driver_types(project: Project) -> list[str]:
    """The managed interface types of the project's driver class, read by importing it in a
    subprocess with the project on PYTHONPATH (nothing is installed, the host stays clean)."""
    paths = [str(p.resolve()) for p in project.import_paths()]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, project.settings.driver],
        capture_output=True,
        text=True,
        env=env,
        cwd=project.path,
        timeout=120,
    )
    where = f"{project.path / 'pyproject.toml'}: tool.dockplug.driver {project.settings.driver!r}"
    if res.returncode != 0:
        tail = "\n".join(res.stderr.strip().splitlines()[-5:])
        raise ConfigError(
            f"{where}: importing it on the host failed:\n{tail}\nfix: check the module path "
            f"(searched {', '.join(paths)}) and install the project's own dependencies here"
        )
    types = [str(t) for t in json.loads(res.stdout.strip().splitlines()[-1])]
    if not types:
        raise ConfigError(
            f"{where}: the class implements no plugin interface dockerd knows; fix: subclass "
            "dockplug.VolumeDriver (or another protocol base)"
        )
    return types


def project_config(project: Project, types: list[str] | None = None) -> PluginConfig:
    """The managed-plugin config of PROJECT (types: its driver's interfaces, probed if None)."""
    s = project.settings
    types = types if types is not None else driver_types(project)
    propagated = s.propagated_mount
    if propagated is None:
        propagated = DEFAULT_PROPAGATED_MOUNT if VOLUME_TYPE in types else ""
    args = ["serve", s.driver, "--socket", f"{PLUGIN_SOCKET_DIR}/{s.socket}"]
    for key, value in s.settings.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["-c", f"{key}={text}"]
    source = f"{project.path / 'pyproject.toml'} [tool.dockplug]"
    try:
        mounts = [
            Mount(
                name=m.name or f"mount{i}",
                description=m.description,
                source=m.source,
                destination=m.destination,
                type="bind",
                options=["rbind", "rw"],
                settable=(
                    ["source"] if m.settable is True else [] if m.settable is False else m.settable
                ),
            )
            for i, m in enumerate(s.mounts)
        ]
        return make_config(
            description=s.description or f"{project.name} (dockplug {s.driver})",
            socket=s.socket,
            args=args,
            types=types,
            mounts=mounts,
            propagated_mount=propagated,
            network=s.network,
            capabilities=s.capabilities,
            devices=s.devices,
        )
    except ValidationError as exc:
        raise ConfigError("\n".join(format_errors(exc, source))) from exc
