"""``dockplug doctor``: why a managed plugin will not start, one line per finding with the fix.

Checks a bundle folder (``config.json`` + ``rootfs/``) or an installed plugin (through the Engine
API, plus its rootfs where this process can read it). The checks are here; what they read is
in :mod:`~dockplug.packaging.rootpaths`, :mod:`~dockplug.packaging.elf`,
:mod:`~dockplug.packaging.libraries` and :mod:`~dockplug.packaging.dockerd_log`. One module
(a little over 500 lines) on purpose: it is the one table of what enable trips over, each check
turning one dockerd failure into a finding that names the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from dockplug.facts import UNIX_PATH_MAX, managed_rootfs, managed_socket
from dockplug.packaging import engine
from dockplug.packaging.config import (
    PLUGIN_SOCKET_DIR,
    PluginConfig,
    format_errors,
    socket_problem,
)
from dockplug.packaging.dockerd_log import LOG_LINES, plugin_log_lines
from dockplug.packaging.doctor_devices import MOUNT_DEVICES, check_devices
from dockplug.packaging.doctor_engine import check_engine_mount
from dockplug.packaging.doctor_etcd import check_etcd, plugin_path_on_host
from dockplug.packaging.elf import (
    ELF_MACHINES,
    HOST_MACHINES,
    PACKAGING_EXTRA,
    ElfToolsMissing,
    read_dynamic,
    read_elf,
)
from dockplug.packaging.findings import Finding, _get

#: re-exported: the doctor's checks as callers and tests know them
__all__ = ["Finding", "check_devices", "check_engine_mount", "check_etcd", "plugin_path_on_host"]
from dockplug.packaging.libraries import loader_missing, missing_libraries
from dockplug.packaging.rootpaths import DEFAULT_PATH, find_in_root, inside, resolve_in_root


def check_libraries(
    rootfs: Path, binary: Path, label: str, env_library_path: str = ""
) -> list[Finding]:
    """One finding per DT_NEEDED library of BINARY (a host path inside ROOTFS) and of the
    libraries it pulls in that the dynamic loader would not find inside ROOTFS."""
    try:
        missing = missing_libraries(rootfs, binary, label, env_library_path)
    except ElfToolsMissing:
        return [
            Finding(
                "libraries-skipped",
                "info",
                f"shared libraries of {label} not checked (pyelftools is not installed)",
                PACKAGING_EXTRA,
            )
        ]
    return [
        Finding(
            "library-missing",
            "error",
            f"{m.who} needs the shared library {m.name}, which the loader would not "
            "find in the rootfs (searched RPATH/RUNPATH, ld.so.conf and "
            f"{', '.join(m.standard)})",
            f"install the package that provides {m.name} into the rootfs",
        )
        for m in missing
    ]


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
    missing = loader_missing(rootfs, inside(rootfs, binary), elf.interpreter, lib_path)
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


# -- a plugin in any language -----------------------------------------------------------------

#: what an ELF program may hold that says it needs a device or capability: (DT_NEEDED prefixes,
#: byte strings in the file, capabilities, devices, what it is). A Go program links no library
#: but embeds the paths and module names it uses (rclone: "fusermount", "/dev/fuse").
_Need = tuple[tuple[str, ...], tuple[bytes, ...], tuple[str, ...], tuple[str, ...], str]
BINARY_NEEDS: tuple[_Need, ...] = (
    (("libfuse",), (b"fusermount", b"/dev/fuse"), ("CAP_SYS_ADMIN",), ("/dev/fuse",), "FUSE"),
    ((), (b"/dev/loop-control",), ("CAP_SYS_ADMIN",), ("/dev/loop-control",), "loop devices"),
    (("libnl-", "libmnl"), (b"vishvananda/netlink", b"mdlayher/netlink"), ("CAP_NET_ADMIN",),
     (), "netlink (network interfaces and routes)"),
)  # fmt: skip
#: where programs that serve a plugin put their socket when told nothing (argv words, name)
DEFAULT_SOCKETS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("rclone", "serve", "docker"), "rclone.sock"),
)
_SOCKET_IN_ARGV = re.compile(re.escape(PLUGIN_SOCKET_DIR) + r"/([^\s,;\"'=:]+)")


def socket_where(socket: str) -> str:
    """Where the plugin's socket must appear, inside and on the host (plugin-protocol.md §1.4,
    §1.8): dockerd dials it ~0.5, 3.5, 6.5 and 9.5 s after start, then gives up."""
    return (
        f"the program must create {PLUGIN_SOCKET_DIR}/{socket} inside the plugin; dockerd "
        f"dials {PLUGIN_SOCKET_DIR}/<plugin-id>/{socket} on the host ~0.5, 3.5, 6.5 and 9.5 s "
        "after start, then gives up"
    )


def _argv(config: Any, args: Any = None) -> list[str]:
    argv = args if args is not None else _get(config, "args", "value")
    return [str(w) for w in [*(_get(config, "entrypoint") or []), *(argv or [])]]


def check_socket_argv(config: Any, args: Any = None) -> list[Finding]:
    """The socket the program is told to make (a /run/docker/plugins/NAME in its arguments, or
    a known program's default) against interface.socket: dockerd only dials the declared one,
    so a mismatch is an enable that waits ~12 s and fails with 'no such file or directory'."""
    socket = _get(config, "interface", "socket")
    if not isinstance(socket, str) or socket_problem(socket) is not None:
        return []  # check_socket reports it
    words = _argv(config, args)
    named = [m[1] for w in words for m in _SOCKET_IN_ARGV.finditer(w)]
    told = "its arguments name"
    if not named:
        names = [Path(w).name for w in words]
        for prefix, default in DEFAULT_SOCKETS:
            n = len(prefix)
            if any(names[i : i + n] == list(prefix) for i in range(len(names))):
                flagged = any(w.startswith("--socket") for w in words)
                if not flagged:
                    named, told = [default], f"'{' '.join(prefix)}' listens by default on"
    if not named or socket in named:
        return []
    other = named[0]
    return [
        Finding(
            "socket-mismatch",
            "error",
            f"config.json declares interface.socket {socket!r}, but {told} "
            f"{PLUGIN_SOCKET_DIR}/{other}; {socket_where(socket)}",
            f'set interface.socket to "{other}", or make the program listen on '
            f"{PLUGIN_SOCKET_DIR}/{socket}",
        )
    ]


def binary_needs(
    path: Path, strings: bool = True
) -> list[tuple[tuple[str, ...], tuple[str, ...], str, bool]]:
    """(capabilities, devices, what, certain) the ELF program at PATH shows it needs: certain
    from its DT_NEEDED libraries, likely from the strings it holds (STRINGS: look at them)."""
    import mmap

    needed: list[str] = []
    with contextlib.suppress(ElfToolsMissing):
        dyn = read_dynamic(path)
        needed = dyn.needed if dyn else []
    found = []
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for libs, texts, caps, devices, what in BINARY_NEEDS:
                lib = next((n for n in needed for p in libs if n.startswith(p)), None)
                text = None
                if strings and not lib:
                    text = next((s for s in texts if data.find(s) >= 0), None)
                if lib:
                    found.append((caps, devices, f"{what}: it links {lib}", True))
                elif text:
                    found.append((caps, devices, f"{what}: it holds {text.decode()!r}", False))
    except (OSError, ValueError):
        return []
    return found


def check_program_needs(
    rootfs: Path, config: Any, reported: list[Finding], host_level: str | None = "warning"
) -> list[Finding]:
    """Devices and capabilities the entrypoint's program shows it needs (FUSE, loop devices,
    netlink) that config.json does not declare, beyond what REPORTED already says: a plugin in
    any language, whose program name says nothing (a Go binary linking nothing)."""
    entry = _get(config, "entrypoint")
    if not isinstance(entry, list) or not entry or not isinstance(entry[0], str):
        return []
    path_var = DEFAULT_PATH
    for e in _get(config, "env") or []:
        if _get(e, "name") == "PATH" and isinstance(_get(e, "value"), str):
            path_var = _get(e, "value")
    found = find_in_root(rootfs, entry[0], path_var)
    if found is None or not found.is_file() or read_elf(found) is None:
        return []
    # a multi-call binary (busybox: sh -> busybox) holds every applet's strings: libraries only
    applet = found.name != PurePosixPath(entry[0]).name
    linux = _get(config, "linux") or {}
    declared = {_get(d, "path") for d in (_get(linux, "devices") or [])}
    have_caps = {str(c).upper() for c in _get(linux, "capabilities") or []}
    said = " ".join(f.message for f in reported)
    findings: list[Finding] = []
    for caps, devices, why, certain in binary_needs(found, strings=not applet):
        who = f"entrypoint {entry[0]} uses {why}"
        level = "error" if certain else "warning"
        if not certain:
            who = f"entrypoint {entry[0]} probably uses {why}"
        for dev in devices:
            if dev in said or dev in declared or _get(linux, "allowAllDevices"):
                continue
            findings.append(
                Finding(
                    "fuse-device" if dev == "/dev/fuse" else "device-missing",
                    level,
                    f"{who}, and needs the device {dev}, which linux.devices does not declare",
                    f'add {{"name": "{Path(dev).name}", "path": "{dev}"}} to linux.devices',
                )
            )
            if host_level and not os.path.exists(dev):
                load = MOUNT_DEVICES.get(dev)
                findings.append(
                    Finding(
                        "host-device-missing",
                        host_level,
                        f"this host has no {dev}, which {who} needs",
                        (f"{load} on the host, or " if load else "")
                        + "enable it on a host that has the device",
                    )
                )
        for cap in caps:
            if cap in have_caps or f"needs {cap}" in said:
                continue
            findings.append(
                Finding(
                    "capability-missing",
                    level,
                    f"{who}, and needs {cap}, which linux.capabilities lacks ('operation not "
                    "permitted')",
                    f'add "{cap}" to linux.capabilities',
                )
            )
    return findings


def socket_never_created(plugin: Any, error: str) -> Finding | None:
    """After a failed enable: the one-line reason when dockerd gave up dialing the socket (the
    process ran but made no socket where dockerd looks), None for other failures."""
    socket = ((plugin.attrs.get("Config") or {}).get("Interface") or {}).get("Socket")
    if not isinstance(socket, str) or not socket:
        return None
    host = str(engine.plugin_socket(plugin))
    if socket not in error or not any(w in error for w in ("dial", "connect", "timeout")):
        return None
    return Finding(
        "socket-never-created",
        "error",
        f"{plugin.name} started but never created its socket: expected "
        f"{PLUGIN_SOCKET_DIR}/{socket} inside the plugin, which is {host} on the host "
        "(dockerd dialed it until ~9.5 s after start)",
        f"make the program listen on {PLUGIN_SOCKET_DIR}/{socket}, or set interface.socket to "
        "the name it does create (its log lines below say what it did)",
    )


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


# -- the cluster store (etcd) ---------------------------------------------------------------


#: the settable Env of an etcd setting -> its ``dockplug serve`` flag (registry ``env=``)
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
    devices = check_devices(config)
    findings += devices
    findings += check_socket_argv(config)
    if rootfs.is_dir():
        findings += check_program_needs(rootfs, config, devices)
    return findings


def _settings_linux(config: Any, settings: Any) -> dict[str, Any]:
    """config's linux section with the devices as set (docker plugin set NAME.path=...)."""
    linux = dict(_get(config, "linux") or {})
    if settings.get("Devices"):
        linux["devices"] = settings["Devices"]
    return linux


def diagnose_installed(
    name: str, client: Any = None, log_path: str | Path | None = None, log_lines: int = LOG_LINES
) -> list[Finding]:
    """Findings for the installed plugin NAME, through the Engine API, followed by the last
    LOG_LINES lines dockerd logged for it (from LOG_PATH, $DOCKPLUG_DOCKERD_LOG or journalctl).
    When no log is found, a note saying where to look is added if something is wrong."""
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
    root: str | None = None
    own: dict[str, str] | None = None
    try:
        info = client.info()
        root = str(info.get("DockerRootDir", "/var/lib/docker"))
        own = {"ID": str(info.get("ID", "")), "DockerRootDir": root}
    except Exception:
        pass
    rootfs = Path(managed_rootfs(root, plugin.id)) if root else None
    if rootfs is not None and engine.is_local(client) and rootfs.is_dir():
        findings += check_entrypoint(rootfs, config)
    devices = check_devices(
        config,
        settings.get("Args"),
        settings.get("Devices"),
        "error" if engine.is_local(client) else None,
    )
    findings += devices
    findings += check_socket_argv(config, settings.get("Args"))
    if rootfs is not None and engine.is_local(client) and rootfs.is_dir():
        findings += check_program_needs(
            rootfs, {**config, "linux": _settings_linux(config, settings)}, devices, "error"
        )
    local = engine.is_local(client)
    readable = rootfs if rootfs is not None and local and rootfs.is_dir() else None
    findings += check_etcd(plugin.name, config, settings, readable, probe=local)
    if local:
        findings += check_engine_mount(
            plugin.name, config, settings, own, engine.unix_socket(client)
        )
    if log_lines > 0:
        lines, note = log_findings(plugin.id, log_path, log_lines)
        if note is not None and any(f.level == "error" for f in findings):
            findings.append(note)
        findings += lines
    return findings
