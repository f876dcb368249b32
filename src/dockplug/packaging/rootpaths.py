"""Paths inside a plugin's rootfs seen from the host: dockerd runs the entrypoint chrooted in it
(runc), so symlinks, ``PATH`` lookups and the dynamic loader's search resolve as if the rootfs
were ``/``; an absolute symlink must not lead back into the host."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

#: runc's ``PATH`` when config.json's env sets none
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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


def inside(rootfs: Path, host: Path) -> str:
    """The path in ROOTFS (``/bin/plugin``) of HOST, a host path under ROOTFS."""
    return "/" + os.path.relpath(host, rootfs)
