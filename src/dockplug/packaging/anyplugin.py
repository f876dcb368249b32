"""``dockplug build --image REF|--dockerfile PATH|--rootfs DIR``: a managed-plugin bundle for a
plugin in any language, the road of ``docker build``, ``docker create``, ``docker export | tar
-x``, ``docker rm``, ``docker rmi``, a hand-written config.json and ``docker plugin create`` in
one step.

The rootfs is the filesystem of a never-started container of the image (the container and any
tag made for a Dockerfile removed after), or a copy of a folder, unpacked through the same tar
filter as a tarball base. config.json is the one given (``--config``, beside the Dockerfile, or
the bundle folder's), or is generated from flags naming what a plugin declares, with the
entrypoint defaulting to the image's Entrypoint+Cmd, which ``docker export`` drops. Either way
it is validated before anything is created. Nothing here asks for python3: that is
:func:`~dockplug.packaging.bases.check_base`, for dockplug's own drivers only.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from rich.console import Console

from dockplug.errors import ConfigError
from dockplug.packaging.bases import (
    _dockerfile,
    from_dir,
    from_dockerfile,
    from_image,
    image_config,
    refuse_escaping_paths,
)
from dockplug.packaging.bundle import BuildResult, _clear, default_output, tree_size
from dockplug.packaging.config import (
    PLUGIN_SOCKET_DIR,
    Env,
    Mount,
    PluginConfig,
    format_errors,
    load_config,
    validate_config,
)

SourceKind = Literal["image", "dockerfile", "rootfs"]

#: ``--type`` words and the interface types dockerd matches exactly (plugin-protocol.md §2)
TYPES = {
    "volume": "docker.volumedriver/1.0",
    "network": "docker.networkdriver/1.0",
    "ipam": "docker.ipamdriver/1.0",
    "authz": "docker.authz/1.0",
    "log": "docker.logdriver/1.0",
}
#: config.json fields and the flag that declares each, so an error names what the user typed
FIELD_FLAGS = {
    "interface.socket": "--socket",
    "interface.types": "--type",
    "entrypoint": "--entrypoint",
    "linux.capabilities": "--cap",
    "linux.devices": "--device",
    "mounts": "--mount",
    "env": "--env",
    "network": "--network",
    "propagatedMount": "--propagated-mount",
    "workdir": "the image's WorkingDir",
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: a placeholder entrypoint, to validate the other flags before a Dockerfile is built
_LATER = ["/entrypoint-of-the-image"]


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    value: str

    @property
    def flag(self) -> str:
        return f"--{self.kind} {self.value}"


@dataclass
class Declared:
    """What the flags declare for a generated config.json (empty: not given)."""

    types: list[str] = field(default_factory=list)
    socket: str | None = None
    entrypoint: str | None = None
    capabilities: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    network: str = ""
    propagated_mount: str = ""
    description: str = ""

    def given(self) -> list[str]:
        """The flags given, by name (they generate config.json, so they clash with a file)."""
        names = {
            "--type": self.types, "--socket": self.socket, "--entrypoint": self.entrypoint,
            "--cap": self.capabilities, "--device": self.devices, "--mount": self.mounts,
            "--env": self.env, "--network": self.network,
            "--propagated-mount": self.propagated_mount, "--description": self.description,
        }  # fmt: skip
        return [flag for flag, value in names.items() if value]


def source_of(image: str | None, dockerfile: str | None, rootfs: str | None) -> Source:
    """The one source of the rootfs among --image, --dockerfile and --rootfs."""
    pairs: tuple[tuple[SourceKind, str | None], ...] = (
        ("image", image),
        ("dockerfile", dockerfile),
        ("rootfs", rootfs),
    )
    given = [Source(kind, value) for kind, value in pairs if value]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one of --image REF, --dockerfile PATH or --rootfs DIR"
            + (f" (got {', '.join(s.flag for s in given)})" if given else "")
        )
    src = given[0]
    if src.kind == "dockerfile" and not _dockerfile(Path(src.value)).is_file():
        raise ConfigError(
            f"--dockerfile {src.value}: no Dockerfile there; fix: give the Dockerfile's path "
            "(its folder is the build context) or a folder holding a Dockerfile"
        )
    if src.kind == "rootfs" and not Path(src.value).is_dir():
        raise ConfigError(f"--rootfs {src.value}: not a folder; fix: give the plugin's rootfs")
    return src


def _rootfs_dir(src: Source) -> Path:
    """The folder to copy for --rootfs DIR: DIR/rootfs when DIR is a bundle, else DIR."""
    path = Path(src.value)
    if (path / "config.json").is_file() and (path / "rootfs").is_dir():
        return path / "rootfs"
    return path


def config_file(src: Source, config: Path | None) -> Path | None:
    """The config.json to take: --config, else the one beside the Dockerfile, else the bundle
    folder's (``--rootfs myplugin`` or ``--rootfs myplugin/rootfs``, the seed's layout)."""
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"--config {config}: no such file; fix: give config.json's path")
        return config
    if src.kind == "dockerfile":
        beside = _dockerfile(Path(src.value)).parent / "config.json"
        return beside if beside.is_file() else None
    if src.kind == "rootfs":
        rootfs = _rootfs_dir(src)
        beside = rootfs.parent / "config.json"
        if rootfs.name == "rootfs" and beside.is_file():
            return beside
    return None


# --- flags to config.json --------------------------------------------------------------------


def parse_entrypoint(text: str) -> list[str]:
    """A JSON array (``'["rclone", "serve", "docker"]'``) or shell words."""
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--entrypoint {text!r}: not a JSON array ({exc})") from exc
        if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
            raise ConfigError(f"--entrypoint {text!r}: a JSON array of strings, please")
        words = list(value)
    else:
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise ConfigError(f"--entrypoint {text!r}: {exc}; fix: balance the quotes") from exc
    if not words:
        raise ConfigError("--entrypoint is empty; fix: give the program and its arguments")
    return words


def parse_env(text: str) -> Env:
    """``NAME=VALUE`` or ``NAME=VALUE:settable`` (users may change it with dockplug set)."""
    name, sep, value = text.partition("=")
    if not sep or not _ENV_NAME.fullmatch(name):
        raise ConfigError(
            f"--env {text!r} is not NAME=VALUE[:settable]; fix: e.g. --env RCLONE_VERBOSE=1"
            ":settable"
        )
    settable = value.endswith(":settable")
    value = value.removesuffix(":settable")
    return Env(name=name, value=value, settable=["value"] if settable else [])


def parse_mount(text: str, index: int) -> Mount:
    """``[NAME=]SOURCE:DESTINATION``: a bind mount whose source users may change."""
    name, sep, rest = text.partition("=")
    if not sep or ":" in name or "/" in name:
        name, rest = "", text
    source, sep, destination = rest.partition(":")
    if not sep or not source.startswith("/") or not destination:
        raise ConfigError(
            f"--mount {text!r} is not [NAME=]SOURCE:DESTINATION with an absolute host SOURCE; "
            "fix: e.g. --mount data=/srv/plugin-data:/data"
        )
    return Mount(
        name=name or Path(destination).name or f"mount{index}",
        description=f"bind mount of a host folder at {destination}",
        source=source,
        destination=destination,
        type="bind",
        options=["rbind", "rw"],
        settable=["source"],
    )


def image_entrypoint(cfg: dict[str, Any]) -> list[str]:
    """What a container of the image runs: Entrypoint + Cmd (as ``docker run`` does)."""
    return [str(w) for w in (cfg.get("Entrypoint") or [])] + [
        str(w) for w in (cfg.get("Cmd") or [])
    ]


def _flag_errors(exc: ValidationError, prefix: str = "") -> str:
    """format_errors' lines, each led by the flag that set the field (PREFIX: where in
    config.json the model that failed sits)."""
    out = []
    for line in format_errors(exc, "config.json"):
        if prefix:
            line = line.replace("config.json: ", f"config.json: {prefix}.", 1)
        where = line.removeprefix("config.json: ").split(":", 1)[0]
        top = where.split("[", 1)[0]
        flag = FIELD_FLAGS.get(top) or FIELD_FLAGS.get(top.split(".", 1)[0])
        out.append(f"{flag} ({line})" if flag else line)
    return "\n".join(out)


def generate_config(decl: Declared, image: dict[str, Any] | None, what: str) -> PluginConfig:
    """config.json from the flags, the image's runtime config (IMAGE) filling the entrypoint,
    environment and working folder; validated with config.json's rules."""
    missing = [
        flag for flag, value in (("--type", decl.types), ("--socket", decl.socket)) if not value
    ]
    if missing:
        raise ConfigError(
            f"no config.json for {what} and no {' or '.join(missing)} to generate one; fix: "
            "give --config config.json, or declare the plugin, e.g. --type volume --socket "
            "myplugin.sock (the socket the program creates in /run/docker/plugins/)"
        )
    unknown = [t for t in decl.types if t not in TYPES]
    if unknown:
        raise ConfigError(
            f"--type {unknown[0]!r} is not a plugin type; fix: one of {', '.join(TYPES)}"
        )
    if decl.entrypoint:
        entry = parse_entrypoint(decl.entrypoint)
    elif image:
        entry = image_entrypoint(image)
        if not entry:
            raise ConfigError(
                f"{what} has neither Entrypoint nor Cmd; fix: --entrypoint 'PROGRAM ARGS...'"
            )
    elif image is not None:  # {}: a Dockerfile not built yet
        entry = _LATER
    else:
        raise ConfigError(
            f"{what} has no image to take the entrypoint from; fix: --entrypoint 'PROGRAM "
            "ARGS...' (the program's path inside the rootfs)"
        )
    image = image or {}
    env: dict[str, Env] = {}
    for pair in image.get("Env") or []:
        name, _, value = str(pair).partition("=")
        if name:
            env[name] = Env(name=name, description="from the image", value=value)
    for text in decl.env:
        e = parse_env(text)
        env[e.name] = e
    mounts = []
    for i, text in enumerate(decl.mounts):
        try:
            mounts.append(parse_mount(text, i).model_dump(by_alias=True))
        except ValidationError as exc:  # a destination that is not absolute
            raise ConfigError(_flag_errors(exc, f"mounts[{i}]")) from exc
    data = {
        "description": decl.description or f"{what.split(' ', 1)[-1]} (packaged by dockplug)",
        "entrypoint": entry,
        "workdir": str(image.get("WorkingDir") or "/"),
        "env": [e.model_dump(by_alias=True) for e in env.values()],
        "args": {"name": "args", "description": "arguments after the entrypoint",
                 "value": [], "settable": ["value"]},
        "interface": {"types": [TYPES[t] for t in dict.fromkeys(decl.types)],
                      "socket": decl.socket or ""},
        "network": {"type": decl.network},
        "mounts": mounts,
        "propagatedMount": decl.propagated_mount,
        "linux": {
            "capabilities": [c.upper() for c in dict.fromkeys(decl.capabilities)],
            "devices": [{"name": Path(d).name, "path": d, "settable": ["path"]}
                        for d in dict.fromkeys(decl.devices)],
        },
    }  # fmt: skip
    try:
        return PluginConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_flag_errors(exc)) from exc


def _inspect(ref: str, client: Any) -> dict[str, Any]:
    import docker.errors

    try:
        return image_config(client.images.get(ref))
    except docker.errors.ImageNotFound as exc:
        raise ConfigError(
            f"--image {ref}: no such image on the Docker host; fix: docker build / docker "
            "import / docker load it there first (docker images lists them)"
        ) from exc
    except docker.errors.APIError as exc:
        raise ConfigError(f"--image {ref}: {exc}") from exc


# --- the build -------------------------------------------------------------------------------


@dataclass
class AnyBuild:
    result: BuildResult
    config: PluginConfig
    config_from: str  # the file it came from, or "flags"


def build_any(
    src: Source,
    name: str,
    output: Path | None = None,
    *,
    config: Path | None = None,
    declared: Declared | None = None,
    console: Console | None = None,
    client: Any = None,
) -> AnyBuild:
    """Write OUTPUT (default build/NAME) = config.json + rootfs/ for the plugin in SRC."""
    console = console or Console(stderr=True)
    declared = declared or Declared()
    t0 = time.monotonic()
    cfg_path = config_file(src, config)
    if cfg_path is not None and declared.given():
        raise ConfigError(
            f"{', '.join(declared.given())} generate config.json, but {cfg_path} is taken as "
            "it is; fix: edit that file, or drop the flags (or move the file) to generate one"
        )
    # validate everything known before anything is created (a container, a tag, a folder)
    image_cfg: dict[str, Any] | None = None
    if cfg_path is not None:
        cfg = load_config(cfg_path)
        where = str(cfg_path)
    else:
        if src.kind == "image":
            client = client or _connect()
            image_cfg = _inspect(src.value, client)
        elif src.kind == "dockerfile" and not declared.entrypoint:
            image_cfg = {}  # the image does not exist yet: the entrypoint comes after the build
        cfg = generate_config(declared, image_cfg, src.flag)
        where = "flags"
    out = output or default_output(name)
    _clear(out)
    out.mkdir(parents=True)
    rootfs = out / "rootfs"
    try:
        if src.kind == "rootfs":
            from_dir(_rootfs_dir(src), rootfs, console)
        else:
            client = client or _connect()
            if src.kind == "image":
                built = from_image(src.value, rootfs, console, client, f"--image {src.value}")
            else:
                built = from_dockerfile(Path(src.value), rootfs, console, client, src.flag)
            if cfg.entrypoint == _LATER:
                cfg = generate_config(declared, built, f"the image built from {src.flag}")
        console.print(f"[green]✓[/green] rootfs from {src.flag} ({time.monotonic() - t0:.1f}s)")
        refuse_escaping_paths(rootfs, [PLUGIN_SOCKET_DIR])
        (rootfs / PLUGIN_SOCKET_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
        text = cfg.to_json()
        validate_config(json.loads(text), str(out / "config.json"))
        (out / "config.json").write_text(text)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    result = BuildResult(out, tree_size(out), time.monotonic() - t0, False)
    return AnyBuild(result, cfg, where)


def _connect() -> Any:
    from dockplug.packaging import engine

    return engine.connect()
