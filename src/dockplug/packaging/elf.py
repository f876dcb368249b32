"""What the kernel and the dynamic loader read from an ELF file before the plugin runs: its
machine (the wrong one is enable's 'exec format error'), its loader (PT_INTERP; missing, it is
'no such file or directory' although the file exists) and its dynamic section (DT_NEEDED,
DT_RPATH, DT_RUNPATH). The headers are parsed here; the dynamic section needs pyelftools (the
``packaging`` extra)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
PACKAGING_EXTRA = "pip install dockplug[packaging]"


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
