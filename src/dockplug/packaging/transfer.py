"""Move a managed plugin without a registry: ``export`` (config + rootfs + settings in one
tar.gz), ``import`` (create it again, settings re-applied) and ``rename`` (both, on one host).

The archive holds ``config.json`` (the authored lowerCamel form, rebuilt from the Engine API
inspect through the packaging config models), ``rootfs/`` (read from the plugin's rootfs in
dockerd's data root, :func:`~dockplug.facts.managed_rootfs`, so dockerd must run on this
machine) and ``settings.json``
(the plugin's name, enabled state and Settings: env, args, mounts, devices).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from dockplug.errors import ConfigError
from dockplug.facts import managed_rootfs
from dockplug.packaging import engine, verbs
from dockplug.packaging.bases import CountingReader, UnsafeMember, byte_progress, rootfs_member
from dockplug.packaging.config import PluginConfig, validate_config
from dockplug.packaging.engine import EngineError

SETTINGS_FILE = "settings.json"
FORMAT = 1
#: keys of the Engine API Config that are dockerd's, not the author's
_ENGINE_ONLY = {"rootfs", "dockerversion"}


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


def authored_config(api_config: dict[str, Any], source: str = "plugin") -> PluginConfig:
    """The Engine API ``Config`` of an installed plugin as an authored config.json model."""
    data = {k: v for k, v in _drop_none(api_config).items() if str(k).lower() not in _ENGINE_ONLY}
    if not data.get("User") and "User" in data:
        data.pop("User")  # dockerd reports {} when the author set none
    return validate_config(data, f"{source}: Config from the Engine API")


def settable_args(args: list[str]) -> bool:
    """Whether ``plugin set args=...`` can give exactly ARGS: dockerd splits the value on single
    spaces, so an argument holding a space, or no argument at all, cannot be set."""
    return bool(args) and " ".join(args).split(" ") == args


def settings_pairs(
    config: PluginConfig, wanted: dict[str, Any], current: dict[str, Any]
) -> list[str]:
    """``KEY=VALUE`` pairs for ``plugin set`` that turn CURRENT Settings into WANTED ones (args
    that cannot be set, see :func:`settable_args`, are left out: :func:`create_with_settings`
    writes them into config.json instead)."""
    pairs: list[str] = []
    have = dict(e.split("=", 1) for e in current.get("Env") or [] if "=" in e)
    for entry in wanted.get("Env") or []:
        key, sep, value = str(entry).partition("=")
        if sep and have.get(key) != value:
            pairs.append(f"{key}={value}")
    want_args = [str(a) for a in wanted.get("Args") or []]
    if want_args != list(current.get("Args") or []) and settable_args(want_args):
        pairs.append(f"{config.args.name}={' '.join(want_args)}")
    for kind, declared, field in (
        ("Mounts", [(m.name, m.destination) for m in config.mounts], "Source"),
        ("Devices", [(d.name, d.path) for d in config.linux.devices], "Path"),
    ):
        now = list(current.get(kind) or [])
        for i, item in enumerate(wanted.get(kind) or []):
            if i >= len(declared) or i >= len(now):
                break
            value = item.get(field)
            if value is not None and value != now[i].get(field) and declared[i][0]:
                pairs.append(f"{declared[i][0]}.{field.lower()}={value}")
    return pairs


@dataclass
class Source:
    """What an export reads: the installed plugin's rootfs and its authored config/settings."""

    name: str
    id: str
    enabled: bool
    rootfs: Path
    config: PluginConfig
    meta: dict[str, Any]  # the settings.json document


def _source(name: str, client: Any) -> Source:
    plugin = engine.get_plugin(client, name)
    if not engine.is_local(client):
        raise EngineError(
            f"exporting {plugin.name} reads its rootfs from dockerd's data root, and dockerd is "
            "not on this machine; fix: run dockplug export on the Docker host"
        )
    rootfs = Path(managed_rootfs(engine.data_root(client), plugin.id))
    if not rootfs.is_dir():
        raise EngineError(
            f"{rootfs} (the rootfs of {plugin.name}) is not readable here; fix: run as root on "
            "the Docker host (data root from docker info)"
        )
    config = authored_config(plugin.attrs.get("Config") or {}, plugin.name)
    settings = plugin.attrs.get("Settings") or {}
    meta = {
        "format": FORMAT,
        "name": plugin.name,
        "id": plugin.id,
        "enabled": bool(plugin.enabled),
        "settings": {k: settings.get(k) or [] for k in ("Env", "Args", "Mounts", "Devices")},
    }
    return Source(plugin.name, plugin.id, bool(plugin.enabled), rootfs, config, meta)


def _walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry under ROOT (parents first), not descending into other file systems."""
    dev = root.lstat().st_dev
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            path = Path(entry.path)
            st = entry.stat(follow_symlinks=False)
            yield path, st
            if entry.is_dir(follow_symlinks=False) and st.st_dev == dev:
                stack.append(path)


@dataclass
class ExportResult:
    name: str
    path: Path
    size: int  # bytes of the archive
    rootfs_size: int
    seconds: float


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def export(
    name: str,
    output: Path,
    *,
    client: Any = None,
    console: Console | None = None,
    compresslevel: int = 1,
) -> ExportResult:
    """Write NAME's config.json, rootfs/ and settings.json into the tar.gz OUTPUT. Level 1: a
    rootfs is mostly compiled code, which level 6 packs only ~10 % smaller in 2.5x the time
    (a 193 MB local-driver rootfs: 73 MB in 2.7 s against 66 MB in 6.7 s)."""
    console = console or Console(stderr=True)
    client = client or engine.connect()
    t0 = time.monotonic()
    src = _source(name, client)
    entries = list(_walk(src.rootfs))
    total = sum(st.st_size for _p, st in entries if stat.S_ISREG(st.st_mode))
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    # 0600: settings.json carries the plugin's env settings, which often hold credentials
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with (
            open(fd, "wb") as out,
            tarfile.open(fileobj=out, mode="w:gz", compresslevel=compresslevel) as tar,
            byte_progress(console) as bar,
        ):
            _add_bytes(tar, "config.json", src.config.to_json().encode())
            _add_bytes(tar, SETTINGS_FILE, (json.dumps(src.meta, indent=2) + "\n").encode())
            tar.add(src.rootfs, "rootfs", recursive=False)
            task = bar.add_task(f"exporting {src.name} rootfs", total=total)
            for path, st in entries:
                tar.add(path, "rootfs/" + str(path.relative_to(src.rootfs)), recursive=False)
                if stat.S_ISREG(st.st_mode):
                    bar.advance(task, st.st_size)
        partial.replace(output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return ExportResult(src.name, output, output.stat().st_size, total, time.monotonic() - t0)


def _member_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    """Only config.json, settings.json and rootfs/...; nothing may land or point outside PATH,
    but the rootfs keeps its modes (setuid bits included), as docker's does."""
    top = member.name.lstrip("./").split("/", 1)[0]
    if top not in ("config.json", SETTINGS_FILE, "rootfs"):
        return None
    if top != "rootfs" and not member.isreg():  # read and rewritten on the host: no links
        raise UnsafeMember(f"member {member.name!r}: must be a regular file")
    return rootfs_member(member, path)


def unpack(archive: Path, dest: Path, console: Console | None = None) -> dict[str, Any]:
    """Extract ARCHIVE into DEST (config.json + rootfs/, a bundle); return its settings.json."""
    console = console or Console(stderr=True)
    try:
        with (
            open(archive, "rb", buffering=0) as raw,
            byte_progress(console) as bar,
        ):
            task = bar.add_task(f"unpacking {archive.name}", total=archive.stat().st_size)
            counted = io.BufferedReader(CountingReader(raw, bar, task), 1 << 20)
            with tarfile.open(fileobj=counted, mode="r|gz") as tar:
                tar.extractall(dest, numeric_owner=True, filter=_member_filter)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError) and exc.filename == str(archive):
            raise
        raise ConfigError(
            f"{archive}: not a plugin archive from dockplug export ({exc}); fix: export it "
            "again with dockplug export NAME -o FILE.tar.gz"
        ) from exc
    meta_path = dest / SETTINGS_FILE
    missing = [p for p in ("config.json", "rootfs", SETTINGS_FILE) if not (dest / p).exists()]
    if missing:
        raise ConfigError(
            f"{archive}: not a plugin archive from dockplug export (no {', '.join(missing)})"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{archive}: {SETTINGS_FILE} is not valid JSON: {exc}") from exc
    meta_path.unlink()  # the bundle is config.json + rootfs/ only
    if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
        raise ConfigError(f"{archive}: {SETTINGS_FILE} has no settings object")
    return meta


@dataclass
class ImportResult:
    name: str
    id: str
    settings: list[str]  # the KEY=VALUE pairs re-applied
    enabled: verbs.EnableResult | None
    create_seconds: float
    seconds: float


def create_with_settings(
    name: str,
    bundle: Path,
    meta: dict[str, Any],
    *,
    enable_after: bool,
    client: Any,
    console: Console,
) -> ImportResult:
    """``create`` NAME from BUNDLE, re-apply META's settings, enable if asked; on failure the
    half-made plugin is removed again. Args ``plugin set`` cannot express (an argument with a
    space, as an upgraded plugin or a config default may hold) go into config.json instead."""
    import docker.errors

    t0 = time.monotonic()
    config = validate_config(json.loads((bundle / "config.json").read_text()))
    want_args = [str(a) for a in (meta.get("settings") or {}).get("Args") or []]
    if want_args != config.args.value and not settable_args(want_args):
        # plugin set would split them on spaces: the plugin starts with them instead
        config.args.value = want_args
        (bundle / "config.json").write_text(config.to_json())
        console.print(
            f"args {want_args!r} cannot be set through dockerd (it splits on spaces); they "
            "become the default args of the new plugin's config",
            markup=False,
        )
    with console.status(f"creating {name} (dockerd packs the rootfs)"):
        verbs.create(name, bundle, client)
    create_seconds = time.monotonic() - t0
    plugin = engine.get_plugin(client, name)
    try:
        pairs = settings_pairs(
            config, meta.get("settings") or {}, plugin.attrs.get("Settings") or {}
        )
        if pairs:
            engine.set_options(plugin.name, pairs, client)
        enabled = verbs.enable(plugin.name, client=client) if enable_after else None
    except BaseException:
        with contextlib.suppress(docker.errors.APIError, EngineError):
            plugin.remove(force=True)
        raise
    return ImportResult(
        plugin.name, plugin.id, pairs, enabled, create_seconds, time.monotonic() - t0
    )


def _workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="dockplug-transfer-"))


def import_(
    archive: Path,
    name: str | None = None,
    *,
    enable_after: bool = False,
    client: Any = None,
    console: Console | None = None,
) -> ImportResult:
    """Create a plugin from an archive of :func:`export` (named as exported unless NAME)."""
    console = console or Console(stderr=True)
    client = client or engine.connect()
    t0 = time.monotonic()
    work = _workdir()
    try:
        meta = unpack(archive, work / "bundle", console)
        target = name or str(meta.get("name") or "")
        if not target:
            raise ConfigError(f"{archive}: no plugin name recorded; fix: pass --name NEW")
        res = create_with_settings(
            target,
            work / "bundle",
            meta,
            enable_after=enable_after,
            client=client,
            console=console,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res.seconds = time.monotonic() - t0
    return res


def _copy_rootfs(src: Path, dest: Path, console: Console) -> None:
    with console.status(f"copying {src}"):
        proc = subprocess.run(
            ["cp", "-a", "--one-file-system", str(src), str(dest)],
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise ConfigError(f"copying {src}: {proc.stderr.strip()}")


@dataclass
class RenameResult:
    old: str
    new: str
    settings: list[str]
    enabled: bool
    seconds: float


def rename(
    old: str, new: str, *, client: Any = None, console: Console | None = None
) -> RenameResult:
    """Re-create OLD as NEW (same rootfs, config and settings; enabled again if OLD was), then
    remove OLD. An enabled OLD is disabled first, which dockerd refuses while it is in use."""
    import docker.errors

    console = console or Console(stderr=True)
    client = client or engine.connect()
    t0 = time.monotonic()
    plugin = engine.get_plugin(client, old)
    clash = None
    with contextlib.suppress(EngineError):
        clash = engine.get_plugin(client, new)
    if clash is not None:
        raise EngineError(
            f"a plugin {clash.name} exists already; fix: choose another NEW or dockplug rm it"
        )
    was_enabled = bool(plugin.enabled)
    if was_enabled:
        try:
            plugin.disable()
        except docker.errors.APIError as exc:
            text = engine.explain(exc)
            if "in use" in text:
                raise EngineError(
                    f"{plugin.name} is enabled and in use ({text}); rename re-creates the "
                    "plugin, so it must be disabled first; fix: remove what uses it (docker "
                    f"volume ls -f driver={plugin.name}), dockplug disable {plugin.name}, then "
                    "rename it"
                ) from exc
            raise EngineError(f"disabling {plugin.name} to rename it: {text}") from exc
    work = _workdir()
    try:
        src = _source(plugin.name, client)
        bundle = work / "bundle"
        bundle.mkdir()
        (bundle / "config.json").write_text(src.config.to_json())
        _copy_rootfs(src.rootfs, bundle / "rootfs", console)
        res = create_with_settings(
            new, bundle, src.meta, enable_after=was_enabled, client=client, console=console
        )
    except BaseException:
        if was_enabled:  # leave OLD as it was
            with contextlib.suppress(Exception):
                verbs.enable(plugin.name, client=client)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    engine.remove(plugin.name, force=False, client=client)
    return RenameResult(plugin.name, res.name, res.settings, was_enabled, time.monotonic() - t0)
