"""Legacy plugin discovery, exactly as dockerd does it (plugin-protocol.md §1.2-1.3).

The server side writes ``.spec``/``.json`` files; the client side (``dockplug call``/``ls``/
``check``) finds plugins by name in dockerd's order: sockets first, then spec directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockplug.errors import ConfigError
from dockplug.facts import PLUGIN_DIR, SPEC_DIRS
from dockplug.state.durable import atomic_write

__all__ = ["SOCKET_DIR", "SPEC_DIRS"]  # re-exported: where discovery looks
SOCKET_DIR = PLUGIN_DIR


@dataclass(frozen=True)
class TLSOptions:
    """dockerd's view of a ``.json`` file's ``TLSConfig`` (go-connections tlsconfig.Options)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure_skip_verify: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"InsecureSkipVerify": self.insecure_skip_verify}
        if self.ca_file:
            out["CAFile"] = self.ca_file
        if self.cert_file:
            out["CertFile"] = self.cert_file
        if self.key_file:
            out["KeyFile"] = self.key_file
        return out


def check_plugin_name(name: str) -> None:
    """A legacy plugin's name becomes a file name (NAME.sock, NAME.spec): nothing else."""
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise ConfigError(f"--name {name!r}: a plugin name is a plain file name, e.g. my-volumes")


@dataclass(frozen=True)
class HostPaths:
    """Where the paths a managed plugin returns are on the host, as dockerd maps them
    (``Plugin.ScopedPath``): under the propagated mount, to the plugin's propagated-mount
    folder; anything else, inside its rootfs."""

    rootfs: str
    propagated_mount: str = ""  # inside the plugin, e.g. /mnt/volumes
    propagated_host: str = ""  # on the host, <data-root>/plugins/<id>/propagated-mount

    def of(self, path: str) -> str:
        inner = self.propagated_mount.rstrip("/")
        if inner and (path == inner or path.startswith(inner + "/")):
            return os.path.join(self.propagated_host, path[len(inner) :].lstrip("/"))
        return os.path.join(self.rootfs, path.lstrip("/"))


@dataclass(frozen=True)
class PluginAddress:
    """Where a plugin answers: ``unix:///path``, ``tcp://h:p``, ``http://`` or ``https://``."""

    name: str
    url: str
    source: str
    tls: TLSOptions | None = field(default=None)

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


def read_spec(path: Path, name: str) -> PluginAddress:
    url = path.read_text().strip()
    if "://" not in url:
        raise ConfigError(f"{path}: {url!r} has no scheme (dockerd says 'Unknown protocol')")
    # dockerd uses TLS without verification for spec files; mirror it
    tls = TLSOptions(insecure_skip_verify=True) if url.startswith("https://") else None
    return PluginAddress(name, url, str(path), tls)


def read_json(path: Path, name: str) -> PluginAddress:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with an 'Addr' key")
    addr = data.get("Addr") or data.get("addr")
    if not isinstance(addr, str) or "://" not in addr:
        raise ConfigError(f"{path}: 'Addr' must be a URL such as https://127.0.0.1:8443")
    tls = None
    raw = data.get("TLSConfig")
    if isinstance(raw, dict):
        ca = raw.get("CAFile", "")
        tls = TLSOptions(
            ca_file=ca,
            cert_file=raw.get("CertFile", ""),
            key_file=raw.get("KeyFile", ""),
            insecure_skip_verify=bool(raw.get("InsecureSkipVerify")) or not ca,
        )
    return PluginAddress(name, addr, str(path), tls)


def candidates(
    name: str, socket_dir: Path = SOCKET_DIR, spec_dirs: tuple[Path, ...] = SPEC_DIRS
) -> list[Path]:
    """The paths dockerd tries for ``name``, in its order."""
    paths = [socket_dir / f"{name}.sock", socket_dir / name / f"{name}.sock"]
    for d in spec_dirs:
        paths += [d / f"{name}.spec", d / name / f"{name}.spec"]
        paths += [d / f"{name}.json", d / name / f"{name}.json"]
    return paths


def find(
    name: str, socket_dir: Path = SOCKET_DIR, spec_dirs: tuple[Path, ...] = SPEC_DIRS
) -> PluginAddress:
    """The address dockerd would use for the legacy plugin ``name``."""
    for path in candidates(name, socket_dir, spec_dirs):
        if path.suffix == ".sock":
            if _is_socket(path):
                return PluginAddress(name, f"unix://{path}", str(path))
        elif path.is_file():
            return read_spec(path, name) if path.suffix == ".spec" else read_json(path, name)
    raise ConfigError(
        f"no plugin named {name!r}: looked for {socket_dir}/{name}.sock and "
        f"{name}.spec/.json in {', '.join(map(str, spec_dirs))}"
    )


def scan(
    socket_dir: Path = SOCKET_DIR, spec_dirs: tuple[Path, ...] = SPEC_DIRS
) -> list[PluginAddress]:
    """Every legacy plugin dockerd's ``Scan()`` would see (first hit per name wins)."""
    found: dict[str, PluginAddress] = {}
    entries: list[tuple[str, Path]] = []
    if socket_dir.is_dir():
        for p in sorted(socket_dir.iterdir()):
            if p.suffix == ".sock":
                entries.append((p.stem, p))
            elif p.is_dir():
                entries.append((p.name, p / f"{p.name}.sock"))
    for d in spec_dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.suffix in (".spec", ".json"):
                entries.append((p.stem, p))
            elif p.is_dir():
                for ext in (".spec", ".json"):
                    entries.append((p.name, p / f"{p.name}{ext}"))
    for name, path in entries:
        if name in found:
            continue
        with contextlib.suppress(ConfigError, OSError):
            if path.suffix == ".sock":
                if _is_socket(path):
                    found[name] = PluginAddress(name, f"unix://{path}", str(path))
            elif path.is_file():
                reader = read_spec if path.suffix == ".spec" else read_json
                found[name] = reader(path, name)
    return list(found.values())


def _atomic_write(path: Path, text: str) -> None:
    """dockerd may read a spec file at any moment: it sees the old one or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, mode=0o644)


def write_spec(spec_dir: Path, name: str, url: str) -> Path:
    """Announce a plain-HTTP plugin (``unix://`` or ``tcp://``) with a ``.spec`` file."""
    path = spec_dir / f"{name}.spec"
    _atomic_write(path, url + "\n")
    return path


def write_json(spec_dir: Path, name: str, url: str, tls: TLSOptions | None) -> Path:
    """Announce a plugin with a ``.json`` file: the only way to give dockerd TLS settings."""
    path = spec_dir / f"{name}.json"
    body: dict[str, Any] = {"Name": name, "Addr": url}
    if tls is not None:
        body["TLSConfig"] = tls.to_json()
    _atomic_write(path, json.dumps(body, indent=2) + "\n")
    return path
