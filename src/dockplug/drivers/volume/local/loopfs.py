"""Size limits for local volumes: an ext4 image file, loop-mounted on the volume's folder.

Works on any host filesystem (project quotas need XFS/ext4 mounted with prjquota, which most
hosts are not); the volume's Status says which mechanism holds its limit.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dockplug.errors import PluginError

MIN_SIZE = 8 * 2**20  # ext4 needs room for its journal and metadata


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


def _run(args: list[str], what: str) -> None:
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()
        raise PluginError(f"{what} failed: {detail[-1] if detail else f'exit {res.returncode}'}")


def make_image(image: Path, size: int) -> None:
    if size < MIN_SIZE:
        raise PluginError(f"size must be at least {MIN_SIZE // 2**20}M for an ext4 image")
    image.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # made under a temporary name and renamed when complete, so an image file found later is
    # always a whole file system (a crash mid-mkfs leaves only a NAME.new to throw away)
    partial = unfinished(image)
    try:
        with open(partial, "wb") as fh:
            fh.truncate(size)
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard", str(partial)], "mkfs.ext4")
        with open(partial, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, image)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def unfinished(image: Path) -> Path:
    """Where ``make_image`` builds ``image`` (a name of the same length)."""
    return image.with_suffix(".new")


def mount_image(image: Path, target: Path) -> None:
    _run(["mount", "-o", "loop,nodev,nosuid", str(image), str(target)], f"mounting {image.name}")


def unmount(target: Path) -> None:
    if is_mounted(target):
        _run(["umount", str(target)], f"unmounting {target}")


def usage(target: Path) -> dict[str, int]:
    st = os.statvfs(target)
    return {
        "UsedBytes": (st.f_blocks - st.f_bfree) * st.f_frsize,
        "LimitBytes": st.f_blocks * st.f_frsize,
    }
