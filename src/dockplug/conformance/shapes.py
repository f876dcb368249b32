"""Reply-shape rules shared by the volume checks: key casing, timestamps, host mounts."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

VOLUME_KEYS = ("Name", "Mountpoint", "CreatedAt", "Status")

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def casing_problems(obj: dict[str, Any], expected: tuple[str, ...], where: str) -> list[str]:
    """Keys that match a protocol key only case-insensitively (Go decodes them, but the protocol
    is PascalCase, §1.5)."""
    wanted = {k.lower(): k for k in expected}
    return [
        f"{where}: key {key!r} should be {wanted[key.lower()]!r}"
        for key in obj
        if key.lower() in wanted and key != wanted[key.lower()]
    ]


def volume_problems(vol: Any, name: str | None, where: str) -> list[str]:
    """What is wrong with one ``{"Name", "Mountpoint", "CreatedAt", "Status"}`` entry."""
    if not isinstance(vol, dict):
        return [f"{where}: not an object: {vol!r:.80}"]
    problems = casing_problems(vol, VOLUME_KEYS, where)
    lowered = {k.lower(): v for k, v in vol.items()}
    got = lowered.get("name")
    if not isinstance(got, str):
        problems.append(f"{where}: Name is {got!r:.60}, not a string")
    elif name is not None and got != name:
        problems.append(f"{where}: Name {got!r} does not echo the requested {name!r}")
    mountpoint = lowered.get("mountpoint")
    if mountpoint is not None and not isinstance(mountpoint, str):
        problems.append(f"{where}: Mountpoint {mountpoint!r:.60} is not a string")
    if "createdat" in lowered:
        created = lowered["createdat"]
        if created == "":
            problems.append(f'{where}: CreatedAt is "" (dockerd fails to decode it; omit it)')
        elif created is not None and not (isinstance(created, str) and _RFC3339.match(created)):
            problems.append(f"{where}: CreatedAt {created!r:.60} is not RFC 3339")
    status = lowered.get("status")
    if status is not None and not isinstance(status, dict):
        problems.append(f"{where}: Status {status!r:.60} is not an object")
    return problems


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points(mountinfo: Path = Path("/proc/self/mountinfo")) -> set[str]:
    """Every mount point this process sees (empty where /proc is not available)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return set()
    return {_unescape(line.split()[4]) for line in lines if len(line.split()) > 4}


def is_mount(path: str) -> bool:
    return os.path.realpath(path) in mount_points() or os.path.ismount(path)
