"""Size limits for local volumes: an ext4 image file, loop-mounted on the volume's folder.

Works on any host filesystem (project quotas need XFS/ext4 mounted with prjquota, which most
hosts are not); the volume's Status says which mechanism holds its limit.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dockplug.drivers.volume.mountinfo import is_mounted, mount_points
from dockplug.errors import PluginError

__all__ = ["is_mounted", "mount_points"]  # re-exported for the local driver

MIN_SIZE = 8 * 2**20  # ext4 needs room for its journal and metadata


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
