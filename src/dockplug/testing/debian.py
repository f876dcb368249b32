"""Packages from a newer Debian suite, unpacked beside the system's, never installed.

The test suite runs current dockerd (sid) and etcd 3.5 (trixie) on bookworm: their .debs are
fetched with a private apt list (``apt-get -o Dir::...`` under the cache folder, the mirror
apt already uses, signatures checked with Debian's keyring) and unpacked with ``dpkg-deb -x``
(test-environment.md, "Packages from newer Debian suites"). The system's apt state and
packages are never touched; the unpacked tree is cached between runs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from dockplug.errors import ConfigError
from dockplug.packaging.rootfs import debian_mirror

DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def cache_dir() -> Path:
    """Where unpacked packages are kept between runs (``DOCKPLUG_CACHE`` overrides)."""
    if os.environ.get("DOCKPLUG_CACHE"):
        return Path(os.environ["DOCKPLUG_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/dockplug")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dockplug"


def unpack(suite: str, packages: Sequence[str], folder: Path, done: str) -> Path:
    """PACKAGES of SUITE unpacked into ``FOLDER/root`` (once: a root holding DONE, a path
    inside it, counts as finished; a half-made one is made again). Returns the root."""
    root = folder / "root"
    if (root / done).exists():
        return root
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ConfigError(f"{tool} is needed to unpack {', '.join(packages)} (Debian only)")
    for sub in ("lists/partial", "cache/archives/partial", "etc"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be fetching it now
        if (root / done).exists():
            return root
        signed = f"[signed-by={DEBIAN_KEYRING}] " if DEBIAN_KEYRING.exists() else ""
        (folder / "etc/sources.list").write_text(f"deb {signed}{debian_mirror()} {suite} main\n")
        opts = [
            f"-o=Dir::Etc::sourcelist={folder}/etc/sources.list",
            "-o=Dir::Etc::sourceparts=/nonexistent",
            f"-o=Dir::State::Lists={folder}/lists",
            f"-o=Dir::Cache={folder}/cache",
            "-o=Debug::NoLocking=1",
        ]
        for args in (
            ["apt-get", *opts, "-qq", "update"],
            ["apt-get", *opts, "-qq", "download", *packages],
        ):
            ran = subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=600)
            if ran.returncode != 0:
                raise ConfigError(f"{' '.join(args[:1] + args[-2:])} failed: {ran.stderr[-500:]}")
        partial = folder / "root.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        for package in packages:
            debs = sorted(folder.glob(f"{package}_*.deb"))
            if not debs:
                raise ConfigError(f"apt-get download {package} left no .deb in {folder}")
            subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(partial)], check=True)
        partial.rename(root)  # only a complete tree counts as cached
        shutil.rmtree(folder / "lists", ignore_errors=True)  # package lists: not needed again
        for deb in folder.glob("*.deb"):
            deb.unlink()
    return root
