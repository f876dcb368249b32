"""Which shared libraries a program in a rootfs needs that the dynamic loader would not find
there, by the loader's own search order (``ld.so(8)``: DT_RPATH unless DT_RUNPATH,
LD_LIBRARY_PATH, DT_RUNPATH, ld.so.conf, the default folders), and the rootfs's own loader's
opinion when it can be asked (root, same architecture)."""

from __future__ import annotations

import glob
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dockplug.packaging.elf import DynamicInfo, read_dynamic, read_elf
from dockplug.packaging.rootpaths import DEFAULT_PATH, inside, resolve_in_root

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


@dataclass(frozen=True)
class MissingLibrary:
    """NAME, needed by WHO, is nowhere the loader looks; STANDARD: the default folders it
    searched for this architecture (after RPATH/RUNPATH and ld.so.conf)."""

    name: str
    who: str
    standard: tuple[str, ...]


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


def missing_libraries(
    rootfs: Path, binary: Path, label: str, env_library_path: str = ""
) -> list[MissingLibrary]:
    """Each DT_NEEDED library of BINARY (a host path inside ROOTFS, LABEL in messages), and of
    the libraries it pulls in, that the dynamic loader would not find inside ROOTFS. Raises
    :class:`~dockplug.packaging.elf.ElfToolsMissing` without pyelftools."""
    top = read_dynamic(binary)
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
        _expand(top.rpath, str(PurePosixPath(inside(rootfs, binary)).parent))
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

    missing: list[MissingLibrary] = []
    seen: set[str] = set()
    queue: list[tuple[Path, DynamicInfo, str]] = [(binary, top, label)]
    visited = 0
    while queue and visited < MAX_LIBRARIES:
        obj, info, who = queue.pop(0)
        visited += 1
        origin = str(PurePosixPath(inside(rootfs, obj)).parent)
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
                missing.append(MissingLibrary(name, who, tuple(standard)))
                continue
            sub = read_dynamic(found)  # pyelftools is there: read_dynamic(binary) worked
            if sub is not None and sub.needed:
                queue.append((found, sub, f"{name} (needed by {label})"))
    return missing


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
