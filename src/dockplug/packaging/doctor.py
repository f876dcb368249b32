"""``dockplug doctor``: why a managed plugin will not start, one line per finding with the fix.

Checks a bundle folder (``config.json`` + ``rootfs/``) or an installed plugin (through the Engine
API, plus its rootfs under ``<data-root>/plugins/<id>/rootfs`` where this process can read it).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import stat
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from dockplug.facts import UNIX_PATH_MAX, managed_rootfs, managed_socket
from dockplug.packaging.config import (
    PLUGIN_SOCKET_DIR,
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
    level: str  # "error", "warning" or "info"
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


# -- shared libraries ------------------------------------------------------------------------

#: e_machine -> Debian multiarch triplets searched under /lib and /usr/lib
MULTIARCH: dict[int, tuple[str, ...]] = {
    62: ("x86_64-linux-gnu",),
    183: ("aarch64-linux-gnu",),
    3: ("i386-linux-gnu",),
    40: ("arm-linux-gnueabihf", "arm-linux-gnueabi"),
    21: ("powerpc64le-linux-gnu",),
    22: ("s390x-linux-gnu",),
    243: ("riscv64-linux-gnu",),
}
STANDARD_LIB_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64")
MAX_LIBRARIES = 256  # objects visited per binary; a real program needs far fewer
PACKAGING_EXTRA = "pip install dockplug[packaging]"


@dataclass
class DynamicInfo:
    needed: list[str]
    rpath: list[str]
    runpath: list[str]


class ElfToolsMissing(Exception):
    """pyelftools (the ``packaging`` extra) is not installed."""


def read_dynamic(path: Path) -> DynamicInfo | None:
    """DT_NEEDED, DT_RPATH and DT_RUNPATH of an ELF file (None if not ELF or unreadable);
    a static binary has empty lists. Raises ElfToolsMissing without pyelftools."""
    try:
        from elftools.elf.dynamic import DynamicSegment
        from elftools.elf.elffile import ELFFile
    except ImportError as exc:
        raise ElfToolsMissing(str(exc)) from exc
    info = DynamicInfo([], [], [])
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return None
            f.seek(0)
            elf = ELFFile(f)
            for seg in elf.iter_segments():
                if not isinstance(seg, DynamicSegment):
                    continue
                tag: Any  # pyelftools sets needed/rpath/runpath per tag kind
                for tag in seg.iter_tags():
                    kind = tag.entry.d_tag
                    if kind == "DT_NEEDED":
                        info.needed.append(str(tag.needed))
                    elif kind == "DT_RPATH":
                        info.rpath += str(tag.rpath).split(":")
                    elif kind == "DT_RUNPATH":
                        info.runpath += str(tag.runpath).split(":")
                break
    except Exception:  # malformed ELF: the arch/interpreter checks say what they can
        return None
    return info


def _ld_so_conf(rootfs: Path, conf: str = "/etc/ld.so.conf", depth: int = 0) -> list[str]:
    """Directories listed in the rootfs's ld.so.conf, following ``include`` lines."""
    host = resolve_in_root(rootfs, conf)
    if host is None or depth > 8:
        return []
    try:
        text = host.read_text(errors="replace")
    except OSError:
        return []
    dirs: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("hwcap "):
            continue
        if line.startswith("include "):
            for pattern in line.split()[1:]:
                if not pattern.startswith("/"):
                    pattern = f"{PurePosixPath(conf).parent}/{pattern}"
                for match in sorted(glob.glob(str(rootfs) + pattern)):
                    inner = "/" + os.path.relpath(match, rootfs)
                    dirs += _ld_so_conf(rootfs, inner, depth + 1)
            continue
        dirs += [d for d in re.split(r"[:,\s]+", line) if d.startswith("/")]
    return dirs


def _expand(entries: list[str], origin: str) -> list[str]:
    out: list[str] = []
    for entry in entries:
        if not entry:
            continue
        entry = entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
        if "$LIB" in entry or "${LIB}" in entry:
            out += [entry.replace("${LIB}", x).replace("$LIB", x) for x in ("lib64", "lib")]
        elif "$" not in entry and entry.startswith("/"):
            out.append(entry)
    return out


def _inside(rootfs: Path, host: Path) -> str:
    return "/" + os.path.relpath(host, rootfs)


def check_libraries(
    rootfs: Path, binary: Path, label: str, env_library_path: str = ""
) -> list[Finding]:
    """One finding per DT_NEEDED library of BINARY (a host path inside ROOTFS) and of the
    libraries it pulls in that the dynamic loader would not find inside ROOTFS."""
    try:
        top = read_dynamic(binary)
    except ElfToolsMissing:
        return [
            Finding(
                "libraries-skipped",
                "info",
                f"shared libraries of {label} not checked (pyelftools is not installed)",
                PACKAGING_EXTRA,
            )
        ]
    elf = read_elf(binary)
    if top is None or elf is None or not top.needed:
        return []
    machine = elf.machine
    standard = list(STANDARD_LIB_DIRS)
    for triplet in MULTIARCH.get(machine, ()):
        standard += [f"/lib/{triplet}", f"/usr/lib/{triplet}"]
    system = _ld_so_conf(rootfs) + standard
    env_dirs = [d for d in env_library_path.split(":") if d.startswith("/")]
    exe_rpath = (
        _expand(top.rpath, str(PurePosixPath(_inside(rootfs, binary)).parent))
        if not top.runpath
        else []
    )

    def lookup(name: str, dirs: list[str]) -> Path | None:
        if "/" in name:
            return resolve_in_root(rootfs, name if name.startswith("/") else "/" + name)
        for d in dirs:
            found = resolve_in_root(rootfs, f"{d.rstrip('/')}/{name}")
            if found is None or not found.is_file():
                continue
            lib = read_elf(found)
            if lib is None or lib.machine == machine:  # the loader skips other arches
                return found
        return None

    findings: list[Finding] = []
    seen: set[str] = set()
    queue: list[tuple[Path, DynamicInfo, str]] = [(binary, top, label)]
    visited = 0
    while queue and visited < MAX_LIBRARIES:
        obj, info, who = queue.pop(0)
        visited += 1
        origin = str(PurePosixPath(_inside(rootfs, obj)).parent)
        if info.runpath:
            dirs = env_dirs + _expand(info.runpath, origin)
        else:
            own = _expand(info.rpath, origin) if obj != binary else []
            dirs = own + exe_rpath + env_dirs
        dirs += system
        for name in info.needed:
            if name in seen:
                continue
            seen.add(name)
            found = lookup(name, dirs)
            if found is None:
                findings.append(
                    Finding(
                        "library-missing",
                        "error",
                        f"{who} needs the shared library {name}, which the loader would not "
                        "find in the rootfs (searched RPATH/RUNPATH, ld.so.conf and "
                        f"{', '.join(standard)})",
                        f"install the package that provides {name} into the rootfs",
                    )
                )
                continue
            try:
                sub = read_dynamic(found)
            except ElfToolsMissing:  # pragma: no cover - imported above
                sub = None
            if sub is not None and sub.needed:
                queue.append((found, sub, f"{name} (needed by {label})"))
    return findings


def loader_missing(
    rootfs: Path, inside: str, interpreter: str, lib_path: str = ""
) -> list[str] | None:
    """The libraries ROOTFS's own loader INTERPRETER reports "not found" for the program at
    INSIDE (a path in the rootfs), run chrooted in ROOTFS with LD_TRACE_LOADED_OBJECTS, as ldd
    does (``--list`` stops at the first missing one; the program itself never runs). None when
    it cannot be asked (not root, the loader does not run here)."""
    if os.geteuid() != 0:
        return None
    env = {"LD_TRACE_LOADED_OBJECTS": "1", "PATH": DEFAULT_PATH}
    if lib_path:
        env["LD_LIBRARY_PATH"] = lib_path

    def enter() -> None:  # in the child only: the env must not reach a host chroot binary
        os.chroot(rootfs)
        os.chdir("/")

    try:
        res = subprocess.run(
            [interpreter, inside],
            capture_output=True, text=True, timeout=30, env=env, preexec_fn=enter,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    missing = re.findall(r"^\s*(\S+) => not found", res.stdout, re.M)
    if res.returncode != 0 and not missing:
        return None  # e.g. a loader of another architecture: the ELF checks cover it
    return missing


def check_with_loader(
    rootfs: Path, binary: Path, label: str, lib_path: str, reported: list[Finding]
) -> list[Finding]:
    """A second opinion on BINARY's libraries (root only): what the rootfs's loader itself
    cannot find, beyond the libraries already REPORTED by :func:`check_libraries` (it also
    answers when pyelftools is not installed)."""
    elf = read_elf(binary)
    if elf is None or not elf.interpreter:
        return []
    if elf.machine not in HOST_MACHINES.get(os.uname().machine, set()):
        return []
    if resolve_in_root(rootfs, elf.interpreter) is None:
        return []
    missing = loader_missing(rootfs, _inside(rootfs, binary), elf.interpreter, lib_path)
    known = " ".join(f.message for f in reported if f.check == "library-missing")
    return [
        Finding(
            "library-not-found",
            "error",
            f"{label}: the rootfs's own loader {elf.interpreter} (run in a chroot, as ldd "
            f"does) reports {name} => not found",
            f"install the package that provides {name} into the rootfs",
        )
        for name in missing or []
        if f"the shared library {name}," not in known
    ]


# -- dockerd's log -----------------------------------------------------------------------------

LOG_ENV = "DOCKPLUG_DOCKERD_LOG"
LOG_LINES = 20
JOURNAL_CMD = ("journalctl", "-u", "docker", "--no-pager", "-n", "200")
LOG_HINT = (
    "dockerd's log (journalctl -u docker, /var/log/docker.log, or where dockerd's stderr goes)"
)


def plugin_log_lines(
    plugin_id: str, log_path: str | Path | None = None, lines: int = LOG_LINES
) -> tuple[list[str] | None, str]:
    """The last LINES lines dockerd logged with ``plugin=<PLUGIN_ID>`` (a managed plugin's
    stdout at info level, its stderr at error level) and where they came from: LOG_PATH, else
    $DOCKPLUG_DOCKERD_LOG, else ``journalctl -u docker``. (None, hint) if no log was found."""
    pattern = re.compile(rf"\bplugin={re.escape(plugin_id)}\b")
    path = log_path or os.environ.get(LOG_ENV)
    text: str | None = None
    source = ""
    if path:
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - 4 * 1024 * 1024))  # the tail is enough
                text = f.read().decode(errors="replace")
            source = str(path)
        except OSError as exc:
            return None, f"cannot read {path} ({exc.strerror}); look in {LOG_HINT}"
    elif shutil.which(JOURNAL_CMD[0]):
        try:
            res = subprocess.run(JOURNAL_CMD, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            res = None
        body = [] if res is None else [ln for ln in res.stdout.splitlines() if ln.strip()]
        if res is not None and res.returncode == 0 and body and body != ["-- No entries --"]:
            text = res.stdout
            source = " ".join(JOURNAL_CMD)
    if text is None:
        return None, f"no dockerd log found (set {LOG_ENV}); look in {LOG_HINT}"
    found = [ln.strip() for ln in text.splitlines() if pattern.search(ln)]
    return found[-lines:] if lines > 0 else [], source


def log_findings(
    plugin_id: str, log_path: str | Path | None = None, lines: int = LOG_LINES
) -> tuple[list[Finding], Finding | None]:
    """(one info finding per log line of the plugin, the note to show when no log was found)."""
    found, source = plugin_log_lines(plugin_id, log_path, lines)
    if found is None:
        note = Finding(
            "dockerd-log",
            "info",
            f"dockerd's log lines for plugin={plugin_id} not shown: {source}",
            f"grep plugin={plugin_id} in dockerd's log",
        )
        return [], note
    return [
        Finding(
            "dockerd-log",
            "info",
            f"{source}: {line}",
            "the plugin's own output (stdout at level=info, stderr at level=error)",
        )
        for line in found
    ], None


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
        host = str(managed_socket("0" * 64, socket))
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
    lib_path = ""
    for e in _get(config, "env") or []:
        if _get(e, "name") == "PATH" and isinstance(_get(e, "value"), str):
            path_var = _get(e, "value")
        if _get(e, "name") == "LD_LIBRARY_PATH" and isinstance(_get(e, "value"), str):
            lib_path = _get(e, "value")
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
        libs = check_libraries(rootfs, found, f"entrypoint {cmd}", lib_path)
        libs += check_with_loader(rootfs, found, f"entrypoint {cmd}", lib_path, libs)
        findings += libs
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
        interp_host = resolve_in_root(rootfs, interp)
        target_host = find_in_root(rootfs, target, path_var)
        if target_host is None or (interp != target and interp_host is None):
            missing = interp if resolve_in_root(rootfs, interp) is None else target
            findings.append(
                Finding(
                    "shebang-missing",
                    "error",
                    f"{cmd} is a script for {missing}, which is not in the rootfs",
                    f"install {PurePosixPath(missing).name} into the rootfs or fix the '#!' line",
                )
            )
        else:
            # the interpreter (and the program env runs) must find their libraries too
            for word, host_path in dict.fromkeys([(interp, interp_host), (target, target_host)]):
                if host_path is not None and host_path.is_file() and read_elf(host_path):
                    who = f"interpreter {word} of {cmd}"
                    libs = check_libraries(rootfs, host_path, who, lib_path)
                    libs += check_with_loader(rootfs, host_path, who, lib_path, libs)
                    findings += libs
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


#: devices used only to mount (so the plugin needs CAP_SYS_ADMIN) and how a host gets them
MOUNT_DEVICES = {"/dev/fuse": "modprobe fuse", "/dev/loop-control": "modprobe loop"}
#: programs a plugin may run that need a device and capability: (capabilities, devices, why)
PROGRAM_NEEDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "sshfs": (("CAP_SYS_ADMIN",), ("/dev/fuse",), "a FUSE mount"),
}


def _needs(config: Any, argv: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(capability -> why, device path -> why) the plugin needs, from what it runs: a
    built-in dockplug driver (its registry entry), a program known to need devices, or a
    declared mount device."""
    from dockplug.drivers.registry import BUILTINS

    caps: dict[str, str] = {}
    devices: dict[str, str] = {}
    words = [str(w) for w in [*(_get(config, "entrypoint") or []), *argv]]
    if len(argv) >= 2 and argv[0] == "serve" and argv[1] in BUILTINS:
        managed = BUILTINS[argv[1]].managed
        why = f"the dockplug {argv[1]} driver"
        for cap in managed.capabilities:
            caps.setdefault(cap, why)
        for dev in managed.devices:
            devices.setdefault(dev, why)
    for program, (need_caps, need_devices, what) in PROGRAM_NEEDS.items():
        if any(program in Path(w).name for w in words):
            for dev in need_devices:
                devices.setdefault(dev, f"{program} ({what})")
            for cap in need_caps:
                caps.setdefault(cap, f"{program} ({what})")
    for d in _get(config, "linux", "devices") or []:
        path = _get(d, "path")
        if path in MOUNT_DEVICES:
            caps.setdefault("CAP_SYS_ADMIN", f"mounting with {path}")
    return caps, devices


def check_devices(
    config: Any,
    args: Any = None,
    settings_devices: Any = None,
    host_level: str | None = "warning",
) -> list[Finding]:
    """Devices and capabilities: what the plugin needs against linux.devices and
    linux.capabilities, and each device present on this host (HOST_LEVEL: how bad its absence
    is; an error for a plugin installed here, a warning for a bundle that may go elsewhere,
    None for a plugin on another host)."""
    linux = _get(config, "linux") or {}
    declared = [_get(d, "path") for d in (_get(linux, "devices") or [])]
    argv = args if args is not None else _get(config, "args", "value")
    need_caps, need_devs = _needs(config, [str(a) for a in argv or []])
    findings: list[Finding] = []
    for dev, why in need_devs.items():
        if dev in declared or _gives_host_dev(config):
            continue
        name = Path(dev).name
        findings.append(
            Finding(
                "fuse-device" if dev == "/dev/fuse" else "device-missing",
                "error",
                f"{why} needs the device {dev}, which linux.devices does not declare",
                f'add {{"name": "{name}", "path": "{dev}"}} to linux.devices'
                + (" and CAP_SYS_ADMIN to linux.capabilities" if dev == "/dev/fuse" else ""),
            )
        )
    have_caps = {str(c).upper() for c in _get(linux, "capabilities") or []}
    for cap, why in need_caps.items():
        if cap not in have_caps:
            findings.append(
                Finding(
                    "capability-missing",
                    "error",
                    f"{why} needs {cap}, which linux.capabilities lacks (the mount fails with "
                    "'operation not permitted')",
                    f'add "{cap}" to linux.capabilities',
                )
            )
    paths = [_get(d, "path") for d in settings_devices] if settings_devices else declared
    for path in paths:
        if host_level and isinstance(path, str) and path and not os.path.exists(path):
            load = MOUNT_DEVICES.get(path)
            findings.append(
                Finding(
                    "host-device-missing",
                    host_level,
                    f"this host has no {path}, which the plugin's linux.devices asks for "
                    "(enable fails with 'no such file or directory')",
                    (f"{load} on the host, or " if load else "")
                    + "enable it on a host that has the device",
                )
            )
    return findings + check_runtime_devices(config, [str(a) for a in argv or []])


def _gives_host_dev(config: Any) -> bool:
    """Whether every host device node, made before or after enable, reaches the plugin: the
    host's /dev bind-mounted on /dev (runc then makes no /dev of its own) and allowAllDevices
    (the device cgroup lets any node through). allowAllDevices alone makes no node."""
    binds_dev = any(
        _get(m, "destination") == "/dev" and _get(m, "source") == "/dev"
        for m in _get(config, "mounts") or []
    )
    return binds_dev and bool(_get(config, "linux", "allowAllDevices"))


def check_runtime_devices(config: Any, argv: list[str]) -> list[Finding]:
    """Device nodes a built-in driver opens that the kernel makes while it runs (a /dev/loopN
    per size-limited volume): dockerd copies linux.devices into the plugin once, at enable, so
    only the host's /dev and allowAllDevices give them (-o size= failed with 'failed to setup
    loop device' on a bundle with /dev/loop-control alone)."""
    from dockplug.drivers.registry import BUILTINS

    if not (len(argv) >= 2 and argv[0] == "serve" and argv[1] in BUILTINS):
        return []
    nodes = BUILTINS[argv[1]].managed.runtime_devices
    if not nodes or _gives_host_dev(config):
        return []
    return [
        Finding(
            "runtime-devices",
            "error",
            f"the dockplug {argv[1]} driver opens {', '.join(nodes)}, device nodes the kernel "
            "makes after enable, but the plugin gets only the devices linux.devices lists at "
            "enable (losetup fails with 'failed to setup loop device')",
            'set linux.allowAllDevices to true and add {"source": "/dev", "destination": '
            '"/dev", "type": "bind", "options": ["rbind", "rslave"]} to mounts (dockplug build '
            "does both)",
        )
    ]


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


def diagnose_installed(
    name: str, client: Any = None, log_path: str | Path | None = None, log_lines: int = LOG_LINES
) -> list[Finding]:
    """Findings for the installed plugin NAME, through the Engine API, followed by the last
    LOG_LINES lines dockerd logged for it (from LOG_PATH, $DOCKPLUG_DOCKERD_LOG or journalctl).
    When no log is found, a note saying where to look is added if something is wrong."""
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
        sock = engine.plugin_socket(plugin)
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
    rootfs = Path(managed_rootfs(root, plugin.id)) if root else None
    if rootfs is not None and engine.is_local(client) and rootfs.is_dir():
        findings += check_entrypoint(rootfs, config)
    findings += check_devices(
        config,
        settings.get("Args"),
        settings.get("Devices"),
        "error" if engine.is_local(client) else None,
    )
    if log_lines > 0:
        lines, note = log_findings(plugin.id, log_path, log_lines)
        if note is not None and any(f.level == "error" for f in findings):
            findings.append(note)
        findings += lines
    return findings
