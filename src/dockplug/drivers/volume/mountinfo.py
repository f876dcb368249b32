"""Which mounts this process sees: volume drivers decide from /proc/self/mountinfo, never
from a stat (a stat on a FUSE mount whose server hangs blocks the caller)."""

from __future__ import annotations

import os
from pathlib import Path


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> set[str]:
    """Every mount point this process sees (from /proc/self/mountinfo)."""
    points = set()
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 4:
                points.add(_unescape(parts[4]))
    return points


def is_mounted(path: str | Path) -> bool:
    return os.path.realpath(path) in mount_points()
