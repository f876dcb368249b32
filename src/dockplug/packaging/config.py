"""The managed (v2) plugin ``config.json``: pydantic models, validation, and the config of the
built-in drivers.

dockerd decodes config.json case-insensitively and silently ignores unknown keys, accepts any
interface type string, and only fails late (at enable, or when a volume is first used) on the
classic mistakes. These models catch them before the bundle is built, with errors that name the
field and the fix (plugin-protocol.md §10, §12 P8).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from dockplug.drivers.registry import builtin
from dockplug.errors import ConfigError
from dockplug.facts import (
    DEFAULT_BUSY_POLL_US,
    MANAGED_SOCKET_PREFIX,
    PLUGIN_DIR,
    SOCKET_NAME_MAX,
    UNIX_PATH_MAX,
)

#: Where dockerd bind-mounts the plugin's socket folder, inside and outside the plugin.
PLUGIN_SOCKET_DIR = str(PLUGIN_DIR)
PROTOCOL_SCHEMES = ("", "moby.plugins.http/v1")
#: Where ``config_for_driver`` puts dockplug and its dependencies inside the rootfs.
SITE_DIR = "/opt/dockplug/site"

_TYPE_RE = re.compile(r"^docker\.[a-z]+/1\.0$")


def socket_problem(socket: str) -> tuple[str, str] | None:
    """(problem, fix) for an ``interface.socket`` value dockerd cannot use, or None."""
    base = socket.rsplit("/", 1)[-1] or "plugin.sock"
    if not socket:
        return "is empty", "give a bare file name such as 'plugin.sock'"
    if socket.startswith("/"):
        return (
            f"{socket!r} is an absolute path; dockerd looks for it under "
            f"{PLUGIN_SOCKET_DIR}/<plugin-id>/",
            f"give only the file name, e.g. {base!r}, and have the plugin listen on "
            f"{PLUGIN_SOCKET_DIR}/{base}",
        )
    if "/" in socket:
        return (
            f"{socket!r} contains '/'",
            f"give only the file name, e.g. {base!r}, created in {PLUGIN_SOCKET_DIR}/",
        )
    size = len(socket.encode())
    if size > SOCKET_NAME_MAX:
        return (
            f"{socket!r} is {size} bytes; {PLUGIN_SOCKET_DIR}/<64-hex-id>/{socket} would be "
            f"{MANAGED_SOCKET_PREFIX + size} bytes, over the {UNIX_PATH_MAX}-byte unix socket "
            "limit",
            f"use a name of at most {SOCKET_NAME_MAX} bytes, e.g. 'plugin.sock'",
        )
    return None


# Field checks shared by config.json's models and a project's [tool.dockplug] table; each
# returns the value or raises ValueError with the problem and the fix.


def check_socket(v: str) -> str:
    problem = socket_problem(v)
    if problem:
        raise ValueError(f"{problem[0]}; fix: {problem[1]}")
    return v


def check_destination(v: str) -> str:
    if not v.startswith("/"):
        raise ValueError(f"{v!r} is not an absolute path; fix: use e.g. '/mnt/{v or 'data'}'")
    return v


def check_absolute_or_empty(v: str | None) -> str | None:
    if v and not v.startswith("/"):
        raise ValueError(f"{v!r} is not an absolute path; fix: use e.g. '/{v}'")
    return v


def check_device(v: str) -> str:
    if not v.startswith("/dev/"):
        raise ValueError(f"{v!r} is not a device path; fix: use a path like '/dev/fuse'")
    return v


def check_capabilities(v: list[str]) -> list[str]:
    for cap in v:
        if not re.fullmatch(r"CAP_[A-Z_]+", cap):
            raise ValueError(
                f"{cap!r} is not a capability name; fix: write it like "
                f"'CAP_{cap.upper().removeprefix('CAP_')}'"
            )
    return v


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False
    )

    @model_validator(mode="before")
    @classmethod
    def _fold_case(cls, data: Any) -> Any:
        """Match keys case-insensitively, as Go's encoding/json (and so dockerd) does."""
        if not isinstance(data, dict):
            return data
        known = {}
        for name, field in cls.model_fields.items():
            alias = field.alias or name
            known[alias.lower()] = alias
            known[name.lower()] = alias
        return {known.get(str(k).lower(), k): v for k, v in data.items()}


class Env(_Model):
    name: str = Field(min_length=1)
    description: str = ""
    settable: list[Literal["value"]] = []
    value: str | None = None


class Args(_Model):
    name: str = "args"
    description: str = ""
    settable: list[Literal["value"]] = []
    value: list[str] = []


class Mount(_Model):
    name: str = ""
    description: str = ""
    settable: list[Literal["source"]] = []
    source: str
    destination: str
    type: str = "bind"
    options: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _source_given(cls, data: Any) -> Any:
        if isinstance(data, dict) and not any(
            str(k).lower() == "source" and v is not None for k, v in data.items()
        ):
            raise ValueError(
                "source is missing or null (dockerd fails enable with 'mount source is not "
                "specified'); fix: set 'source' to a host path, and add 'source' to 'settable' "
                "if users should choose it"
            )
        return data

    @field_validator("destination")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return check_destination(v)


class Device(_Model):
    name: str = ""
    description: str = ""
    settable: list[Literal["path"]] = []
    path: str

    @field_validator("path")
    @classmethod
    def _dev(cls, v: str) -> str:
        return check_device(v)


class Linux(_Model):
    capabilities: list[str] = []
    allow_all_devices: bool = False
    devices: list[Device] = []

    @field_validator("capabilities")
    @classmethod
    def _caps(cls, v: list[str]) -> list[str]:
        return check_capabilities(v)


class Interface(_Model):
    types: list[str] = Field(min_length=1)
    socket: str
    protocolscheme: str = ""

    @field_validator("types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        for t in v:
            if not _TYPE_RE.fullmatch(t):
                cap = t.split("/", 1)[0].lower().removeprefix("docker.") or "volumedriver"
                raise ValueError(
                    f"{t!r} is not of the form docker.<lowercase>/1.0 (dockerd matches type "
                    f"strings exactly); fix: use 'docker.{cap}/1.0'"
                )
        return v

    @field_validator("socket")
    @classmethod
    def _socket(cls, v: str) -> str:
        return check_socket(v)

    @field_validator("protocolscheme")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if v not in PROTOCOL_SCHEMES:
            raise ValueError(
                f"{v!r} is not supported (adapters refuse it with 'plugin protocol not "
                "supported'); fix: use '' or 'moby.plugins.http/v1'"
            )
        return v


class Network(_Model):
    type: str = ""


class User(BaseModel):
    model_config = ConfigDict(extra="forbid")
    UID: int = 0
    GID: int = 0


class PluginConfig(_Model):
    """config.json of a managed plugin (documented lowerCamel keys)."""

    description: str = ""
    documentation: str = ""
    entrypoint: list[str] = Field(min_length=1)
    workdir: str = ""
    user: User | None = None
    env: list[Env] = []
    args: Args = Args()
    interface: Interface
    network: Network = Network()
    mounts: list[Mount] = []
    propagated_mount: str = ""
    ipc_host: bool = False
    pid_host: bool = False
    linux: Linux = Linux()

    @field_validator("propagated_mount", "workdir")
    @classmethod
    def _abs_or_empty(cls, v: str) -> str | None:
        return check_absolute_or_empty(v)

    @field_validator("env")
    @classmethod
    def _unique_env(cls, v: list[Env]) -> list[Env]:
        seen: set[str] = set()
        for e in v:
            if e.name in seen:
                raise ValueError(f"{e.name!r} is declared twice; fix: keep one entry")
            seen.add(e.name)
        return v

    def to_json(self) -> str:
        data = self.model_dump(by_alias=True, exclude_none=False)
        if data.get("user") is None:
            data.pop("user", None)
        return json.dumps(data, indent=2) + "\n"


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def format_errors(exc: ValidationError, source: str = "config.json") -> list[str]:
    """One line per error: ``source: field.path: message``."""
    lines = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = (
                "unknown key (dockerd would silently ignore it); fix: check the spelling "
                "against plugin-protocol.md §10.3"
            )
        elif err["type"] == "missing":
            msg = "required; fix: add it"
        lines.append(f"{source}: {_loc(tuple(err['loc']))}: {msg}")
    return lines


def validate_config(data: Any, source: str = "config.json") -> PluginConfig:
    """Validate a decoded config.json; raises ConfigError naming each bad field and its fix."""
    try:
        return PluginConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(format_errors(exc, source))) from exc


def load_config(path: Path) -> PluginConfig:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: not found; a plugin bundle needs config.json") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    return validate_config(data, str(path))


def driver_packages(name: str) -> tuple[str, ...]:
    """The Debian packages the rootfs of driver NAME needs besides python3 (sorted, unique)."""
    return tuple(sorted(builtin(name).managed.packages))


def make_config(
    *,
    description: str,
    socket: str,
    args: list[str],
    types: list[str] | None = None,
    mounts: list[Mount] | None = None,
    propagated_mount: str = "",
    network: str = "",
    capabilities: list[str] | None = None,
    devices: list[str] | None = None,
    allow_all_devices: bool = False,
) -> PluginConfig:
    """The config of a plugin whose process is ``python3 -m dockplug ARGS`` with dockplug (and
    whatever else) installed under ``SITE_DIR``: shared by the built-in drivers and projects."""
    cfg = PluginConfig(
        description=description,
        entrypoint=["/usr/bin/python3", "-m", "dockplug"],
        workdir="/",
        env=[
            Env(name="PYTHONPATH", description="where dockplug is installed", value=SITE_DIR),
            Env(name="PYTHONUNBUFFERED", description="log lines as they come", value="1"),
            Env(
                name="DOCKPLUG_DEBUG",
                description="1: log request bodies (secrets masked)",
                value="0",
                settable=["value"],
            ),
            Env(
                name="DOCKPLUG_METRICS",
                description="HOST:PORT or unix:PATH for /metrics and /health (empty: off)",
                value="",
                settable=["value"],
            ),
            Env(
                name="DOCKPLUG_LOG_FORMAT",
                description="text, or json: one JSON object per log line",
                value="text",
                settable=["value"],
            ),
            Env(
                name="DOCKPLUG_BUSY_POLL_US",
                description="µs of polling after a reply before sleeping (0: off)",
                value=str(DEFAULT_BUSY_POLL_US),
                settable=["value"],
            ),
        ],
        args=Args(
            name="args",
            description="arguments of 'dockplug' inside the plugin",
            value=args,
            settable=["value"],
        ),
        interface=Interface(types=types or ["docker.volumedriver/1.0"], socket=socket),
        network=Network(type=network),
        mounts=mounts or [],
        propagated_mount=propagated_mount,
        linux=Linux(
            capabilities=capabilities or [],
            allow_all_devices=allow_all_devices,
            devices=[Device(name=Path(d).name, path=d, settable=["path"]) for d in devices or []],
        ),
    )
    return validate_config(json.loads(cfg.to_json()))


def config_for_driver(name: str) -> PluginConfig:
    """The managed-plugin config of a built-in dockplug driver (its registry entry)."""
    managed = builtin(name).managed
    state = managed.state_mount
    mounts = []
    if state is not None:
        mounts.append(
            Mount(
                name="state",
                description=state.description,
                source=state.source,
                destination=state.destination,
                type="bind",
                options=["rbind", "rw"],
                settable=["source"],
            )
        )
    for extra in managed.mounts:
        mounts.append(
            Mount(
                name=extra.name,
                description=extra.description,
                source=extra.source,
                destination=extra.destination,
                type="bind",
                options=list(extra.options),
                settable=["source"],
            )
        )
    if managed.runtime_devices:
        mounts.append(host_dev_mount(managed.runtime_devices))
    cfg = make_config(
        description=managed.description,
        socket=managed.socket,
        args=list(managed.args),
        network=managed.network,
        mounts=mounts,
        propagated_mount=managed.propagated_mount,
        capabilities=list(managed.capabilities),
        devices=list(managed.devices),
        types=list(managed.types) or None,
        allow_all_devices=bool(managed.runtime_devices),
    )
    # settings with an environment variable: `docker plugin set NAME ETCD_ENDPOINTS=...`
    for setting in builtin(name).settings:
        if setting.env:
            cfg.env.append(
                Env(name=setting.env, description=setting.help, value="", settable=["value"])
            )
    return validate_config(json.loads(cfg.to_json()))


def host_dev_mount(runtime_devices: tuple[str, ...] = ()) -> Mount:
    """The host's /dev on /dev, for device nodes that appear after enable (a loop device per
    size-limited volume): dockerd resolves linux.devices once, and runc makes no /dev of its
    own when /dev is a bind mount. rslave: the host's changes come in, none go out."""
    what = ", ".join(runtime_devices) or "device nodes"
    return Mount(
        name="dev",
        description=f"the host's /dev: {what} appear there while the plugin runs",
        source="/dev",
        destination="/dev",
        type="bind",
        options=["rbind", "rslave"],
    )
