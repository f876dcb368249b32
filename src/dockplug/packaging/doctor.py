"""``dockplug doctor``: why a managed plugin will not start, one line per finding with the fix.

Checks a bundle folder (``config.json`` + ``rootfs/``) or an installed plugin (through the Engine
API, plus its rootfs under ``<data-root>/plugins/<id>/rootfs`` where this process can read it).
"""

from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from dockplug.packaging.config import (
    PLUGIN_SOCKET_DIR,
    UNIX_PATH_MAX,
    PluginConfig,
    format_errors,
    socket_problem,
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: os.uname().machine -> ELF e_machine values that run there
HOST_MACHINES: dict[str, set[int]] = {
    "x86_64": {62},
    "aarch64": {183},
    "arm64": {183},
    "i686": {3},
    "i386": {3},
    "armv7l": {40},
    "armv6l": {40},
    "ppc64le": {21},
    "s390x": {22},
    "riscv64": {243},
}
ELF_MACHINES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 21: "ppc64", 22: "s390x",
                243: "riscv64", 8: "mips"}  # fmt: skip
PT_INTERP = 3


@dataclass(frozen=True)
class Finding:
    check: str  # a short id, e.g. "entrypoint-missing"
    level: str  # "error" or "warning"
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.level}: [{self.check}] {self.message}; fix: {self.fix}"


def _get(data: Any, *keys: str) -> Any:
    """Case-insensitive lookup, as dockerd decodes config.json."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = next((v for k, v in data.items() if str(k).lower() == key.lower()), None)
    return data


# -- paths inside the rootfs ------------------------------------------------------------------


def resolve_in_root(root: Path, path: str, max_links: int = 40) -> Path | None:
    """Resolve PATH (absolute, inside ROOT) following symlinks as if ROOT were '/'.
    Returns the host path of the final file, or None if it does not exist."""
    parts = list(PurePosixPath(path).parts[1:])
    current = PurePosixPath("/")
    links = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        host = root / str(candidate).lstrip("/")
        try:
            st = os.lstat(host)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > max_links:
                return None
            target = os.readlink(host)
            tparts = list(PurePosixPath(target).parts)
            if target.startswith("/"):
                current = PurePosixPath("/")
                tparts = tparts[1:]
            parts = tparts + parts
            continue
        current = candidate
    return root / str(current).lstrip("/")


def find_in_root(root: Path, cmd: str, path_var: str = DEFAULT_PATH) -> Path | None:
    if cmd.startswith("/"):
        return resolve_in_root(root, cmd)
    for d in path_var.split(":"):
        if d.startswith("/"):
            found = resolve_in_root(root, f"{d.rstrip('/')}/{cmd}")
            if found is not None and found.is_file():
                return found
    return None


# -- ELF -------------------------------------------------------------------------------------


@dataclass
class ElfInfo:
    machine: int
    interpreter: str | None


def read_elf(path: Path) -> ElfInfo | None:
    """e_machine and PT_INTERP of an ELF file, or None if it is not ELF."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF":
                return None
            bits64 = head[4] == 2
            end = "<" if head[5] == 1 else ">"
            (machine,) = struct.unpack_from(end + "H", head, 18)
            if bits64:
                (phoff,) = struct.unpack_from(end + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
            else:
                (phoff,) = struct.unpack_from(end + "I", head, 28)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 42)
            interp = None
            for i in range(min(phnum, 256)):
                f.seek(phoff + i * phentsize)
                ph = f.read(phentsize)
                if len(ph) < (56 if bits64 else 32):
                    break
                (ptype,) = struct.unpack_from(end + "I", ph, 0)
                if ptype != PT_INTERP:
                    continue
                if bits64:
                    (off,) = struct.unpack_from(end + "Q", ph, 8)
                    (size,) = struct.unpack_from(end + "Q", ph, 32)
                else:
                    (off,) = struct.unpack_from(end + "I", ph, 4)
                    (size,) = struct.unpack_from(end + "I", ph, 16)
                f.seek(off)
                interp = f.read(min(size, 4096)).split(b"\0", 1)[0].decode(errors="replace")
                break
            return ElfInfo(machine, interp)
    except (OSError, struct.error):
        return None


# -- checks ----------------------------------------------------------------------------------


def check_socket(socket: Any) -> list[Finding]:
    if not isinstance(socket, str):
        return [
            Finding(
                "socket-missing",
                "error",
                "interface.socket is not set",
                "set interface.socket to a file name such as 'plugin.sock'",
            )
        ]
    problem = socket_problem(socket)
    if problem is None:
        host = f"{PLUGIN_SOCKET_DIR}/{'0' * 64}/{socket}"
        if len(host.encode()) > UNIX_PATH_MAX:  # pragma: no cover - same rule as socket_problem
            problem = (f"{host} is over {UNIX_PATH_MAX} bytes", "use a shorter socket name")
    if problem is None:
        return []
    if socket.startswith("/") or "/" in socket:
        check = "socket-absolute"
    elif not socket:
        check = "socket-missing"
    else:
        check = "socket-too-long"
    return [Finding(check, "error", f"interface.socket {problem[0]}", problem[1])]


def check_entrypoint(rootfs: Path, config: Any) -> list[Finding]:
    entry = _get(config, "entrypoint")
    if not isinstance(entry, list) or not entry or not isinstance(entry[0], str):
        return [
            Finding(
                "entrypoint-missing",
                "error",
                "config.json has no entrypoint",
                'set "entrypoint": ["/path/in/rootfs", ...]',
            )
        ]
    cmd = entry[0]
    path_var = DEFAULT_PATH
    for e in _get(config, "env") or []:
        if _get(e, "name") == "PATH" and isinstance(_get(e, "value"), str):
            path_var = _get(e, "value")
    found = find_in_root(rootfs, cmd, path_var)
    if found is None or not found.exists():
        where = cmd if cmd.startswith("/") else f"{cmd} (searched {path_var})"
        return [
            Finding(
                "entrypoint-missing",
                "error",
                f"entrypoint {where} does not exist in the rootfs; enable would fail "
                "with 'no such file or directory'",
                "install it into rootfs/ or point entrypoint[0] at an existing file",
            )
        ]
    if not found.is_file():
        return [
            Finding(
                "entrypoint-missing",
                "error",
                f"entrypoint {cmd} is not a regular file",
                "point entrypoint[0] at the program to run",
            )
        ]
    findings: list[Finding] = []
    mode = found.stat().st_mode
    if not mode & 0o111:
        findings.append(
            Finding(
                "entrypoint-not-executable",
                "error",
                f"entrypoint {cmd} is not executable (mode {mode & 0o7777:o})",
                f"chmod +x rootfs{cmd if cmd.startswith('/') else '/' + cmd}",
            )
        )
    elf = read_elf(found)
    if elf is not None:
        host = os.uname().machine
        ok = HOST_MACHINES.get(host)
        if ok is not None and elf.machine not in ok:
            arch = ELF_MACHINES.get(elf.machine, f"e_machine {elf.machine}")
            findings.append(
                Finding(
                    "elf-arch",
                    "error",
                    f"entrypoint {cmd} is built for {arch}, this host is {host} "
                    "('exec format error')",
                    f"build the entrypoint (and rootfs) for {host}",
                )
            )
        if elf.interpreter and resolve_in_root(rootfs, elf.interpreter) is None:
            findings.append(
                Finding(
                    "elf-interpreter-missing",
                    "error",
                    f"entrypoint {cmd} needs the loader {elf.interpreter}, which "
                    "is not in the rootfs (enable fails with 'no such file or "
                    "directory' although the file exists)",
                    "add the C library of the rootfs's distribution, or build "
                    "the entrypoint statically",
                )
            )
        return findings
    try:
        with open(found, "rb") as f:
            first = f.readline(256)
    except OSError:
        first = b""
    if first.startswith(b"#!"):
        words = first[2:].decode(errors="replace").split()
        if not words:
            findings.append(
                Finding(
                    "shebang-missing",
                    "error",
                    f"{cmd} has an empty '#!' line",
                    "write the interpreter path after '#!'",
                )
            )
            return findings
        interp = words[0]
        target = interp
        if PurePosixPath(interp).name == "env" and len(words) > 1:
            target = words[1]
        if find_in_root(rootfs, target, path_var) is None or (
            interp != target and resolve_in_root(rootfs, interp) is None
        ):
            missing = interp if resolve_in_root(rootfs, interp) is None else target
            findings.append(
                Finding(
                    "shebang-missing",
                    "error",
                    f"{cmd} is a script for {missing}, which is not in the rootfs",
                    f"install {PurePosixPath(missing).name} into the rootfs or fix the '#!' line",
                )
            )
    elif not findings:
        findings.append(
            Finding(
                "entrypoint-unknown",
                "warning",
                f"entrypoint {cmd} is neither ELF nor a '#!' script",
                "make sure the kernel can execute it",
            )
        )
    return findings


def check_devices(config: Any, args: Any = None) -> list[Finding]:
    linux = _get(config, "linux") or {}
    devices = [_get(d, "path") for d in (_get(linux, "devices") or [])]
    words = list(_get(config, "entrypoint") or [])
    argv = args if args is not None else _get(config, "args", "value")
    words += list(argv or [])
    needs_fuse = any("sshfs" in str(w) for w in words)
    if needs_fuse and "/dev/fuse" not in devices and not _get(linux, "allowAllDevices"):
        return [
            Finding(
                "fuse-device",
                "error",
                "the plugin runs sshfs but declares no /dev/fuse device",
                'add {"name": "fuse", "path": "/dev/fuse"} to linux.devices and '
                "CAP_SYS_ADMIN to linux.capabilities",
            )
        ]
    return []


def check_config_schema(config: Any) -> list[Finding]:
    try:
        PluginConfig.model_validate(config)
    except ValidationError as exc:
        lines = format_errors(exc, "config.json")
        out = []
        for err, line in zip(exc.errors(), lines, strict=True):
            loc = [str(p).lower() for p in err["loc"]]
            if loc[:2] == ["interface", "socket"] or loc[:1] == ["entrypoint"]:
                continue  # reported by the targeted checks
            msg, _, fix = line.partition("; fix: ")
            out.append(Finding("config", "error", msg, fix or "see plugin-protocol.md §10.3"))
        return out
    return []


def diagnose_bundle(bundle: Path) -> list[Finding]:
    """Everything wrong with the bundle folder BUNDLE (empty list: nothing found)."""
    findings: list[Finding] = []
    cfg_path = bundle / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        return [
            Finding(
                "config",
                "error",
                f"{cfg_path} does not exist",
                "a bundle is a folder with config.json and rootfs/ (dockplug build)",
            )
        ]
    except ValueError as exc:
        return [
            Finding(
                "config", "error", f"{cfg_path} is not valid JSON: {exc}", "fix the JSON syntax"
            )
        ]
    findings += check_config_schema(config)
    findings += check_socket(_get(config, "interface", "socket"))
    rootfs = bundle / "rootfs"
    if not rootfs.is_dir():
        findings.append(
            Finding(
                "rootfs-missing",
                "error",
                f"{rootfs} does not exist",
                "put the plugin's root filesystem in rootfs/",
            )
        )
    else:
        findings += check_entrypoint(rootfs, config)
        if not (rootfs / PLUGIN_SOCKET_DIR.lstrip("/")).is_dir():
            findings.append(
                Finding(
                    "plugins-dir",
                    "warning",
                    f"rootfs has no {PLUGIN_SOCKET_DIR}",
                    f"mkdir -p rootfs{PLUGIN_SOCKET_DIR}",
                )
            )
    findings += check_devices(config)
    return findings


def diagnose_installed(name: str, client: Any = None) -> list[Finding]:
    """Findings for the installed plugin NAME, through the Engine API."""
    from dockplug.packaging import engine

    client = client or engine.connect()
    plugin = engine.get_plugin(client, name)
    attrs = plugin.attrs
    config = attrs.get("Config") or {}
    settings = attrs.get("Settings") or {}
    findings: list[Finding] = []
    socket = _get(config, "interface", "socket")
    findings += check_socket(socket)
    if not attrs.get("Enabled"):
        findings.append(
            Finding(
                "disabled",
                "warning",
                f"{plugin.name} is disabled",
                f"dockplug enable {plugin.name}",
            )
        )
    elif isinstance(socket, str) and engine.is_local(client):
        sock = Path(PLUGIN_SOCKET_DIR) / plugin.id / socket
        if not sock.exists():
            findings.append(
                Finding(
                    "socket-absent",
                    "error",
                    f"{plugin.name} is enabled but {sock} does not exist",
                    "the plugin must listen on "
                    f"{PLUGIN_SOCKET_DIR}/{socket} inside; check dockerd's log "
                    f"for plugin={plugin.id}",
                )
            )
    try:
        root = engine.data_root(client)
    except Exception:
        root = None
    rootfs = Path(root) / "plugins" / plugin.id / "rootfs" if root else None
    if rootfs is not None and engine.is_local(client) and rootfs.is_dir():
        findings += check_entrypoint(rootfs, config)
    findings += check_devices(config, settings.get("Args"))
    return findings
