"""Where a plugin's rootfs starts from (``dockplug build --base``): the cached Debian
debootstrap (the default), a local image, a rootfs tarball, or a Dockerfile built by dockerd.
The same readers serve ``dockplug build --image/--dockerfile/--rootfs`` for a plugin in any
language (:mod:`~dockplug.packaging.anyplugin`).

Every base other than debootstrap is taken as it is and checked, never changed by a package
manager: for dockplug's own (Python) drivers it must hold a python3 of this Python's minor
version (dockplug's compiled dependencies are installed for it) and the programs the driver
needs (sshfs, fusermount3, ssh for the sshfs driver); :func:`check_base` is that check, which
a plugin in another language never goes through. Images are read through the Engine API
(``DOCKER_HOST`` honoured), so the Docker host may be another machine; tarballs and folders are
unpacked refusing anything that would land or point outside the rootfs.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from dockplug.drivers.registry import BUILTINS
from dockplug.errors import ConfigError

Kind = Literal["debootstrap", "image", "tar", "dockerfile"]
KINDS: tuple[Kind, ...] = ("debootstrap", "image", "tar", "dockerfile")
BASE_HELP = "debootstrap (default), image:REF, tar:PATH or dockerfile:PATH"
MIN_PYTHON = (3, 11)
_BIN_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
#: files a container export adds that are not part of the image
_EXPORT_ONLY = (".dockerenv",)


@dataclass(frozen=True)
class Base:
    kind: Kind
    value: str = ""  # the image reference, tarball path or Dockerfile path

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}" if self.value else self.kind


DEBOOTSTRAP = Base("debootstrap")


def parse_base(text: str) -> Base:
    """``debootstrap``, ``image:REF``, ``tar:PATH`` or ``dockerfile:PATH`` as a Base."""
    kind, sep, value = text.partition(":")
    if kind == "debootstrap" and not value:
        return DEBOOTSTRAP
    if kind not in KINDS or kind == "debootstrap" or not sep or not value:
        raise ConfigError(
            f"--base {text!r} is not one of {BASE_HELP}; fix: e.g. --base image:debian-py:latest"
            ", --base tar:rootfs.tar.gz or --base dockerfile:./Dockerfile"
        )
    if kind == "tar" and not Path(value).is_file():
        raise ConfigError(f"--base {text}: no file {value}; fix: give the rootfs tarball's path")
    if kind == "dockerfile" and not _dockerfile(Path(value)).is_file():
        raise ConfigError(
            f"--base {text}: no Dockerfile at {value}; fix: give the Dockerfile's path (its "
            "folder is the build context) or a folder holding a Dockerfile"
        )
    return Base(kind, value)


def _dockerfile(path: Path) -> Path:
    return path / "Dockerfile" if path.is_dir() else path


# --- progress -------------------------------------------------------------------------------


def byte_progress(console: Console) -> Progress:
    """A transient bar for a long byte-counted step (export, import, image read)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


class CountingReader(io.RawIOBase):
    """A read-only file that advances a progress task by the bytes read."""

    def __init__(self, f: Any, bar: Progress, task: Any) -> None:
        self.f, self.bar, self.task = f, bar, task

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n: int = self.f.readinto(b)
        self.bar.advance(self.task, n)
        return n


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks (the docker SDK's export stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


# --- safe unpacking -------------------------------------------------------------------------


class UnsafeMember(tarfile.FilterError):
    """A tar member that would land or point outside the rootfs."""


def _escapes(path: str) -> bool:
    norm = os.path.normpath(path)
    return norm == ".." or norm.startswith("../")


#: longer names could push realpath() past PATH_MAX, where it stops resolving symlinks
_MAX_NAME = 1024


def _resolves_inside(dest: str, rel: str) -> bool:
    """Whether DEST/REL, with every symlink followed the way the host kernel will follow it
    while unpacking (absolute ones lead to the host's root), stays inside DEST."""
    root = os.path.realpath(dest)
    real = os.path.realpath(os.path.join(dest, rel))
    return real == root or real.startswith(root + os.sep)


def refuse_escaping_paths(root: Path, rels: Iterable[str]) -> None:
    """dockplug writes into these folders of a base taken as it is (the site-packages dir, the
    socket dir, usr/bin): none may be a symlink that leads out of the rootfs on the host,
    where the build runs (``/opt -> /srv`` in an image is fine for the plugin, fatal here)."""
    bad = [rel for rel in rels if not _resolves_inside(str(root), rel.lstrip("/"))]
    if bad:
        raise ConfigError(
            f"the base's {', '.join('/' + r.lstrip('/') for r in bad)} leads out of the rootfs "
            "through a symlink; dockplug installs there. fix: a base where it is a folder"
        )


def rootfs_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """MEMBER if it stays inside DEST, as a rootfs needs it: modes (setuid too), owners,
    symlinks and device nodes kept. Refused: absolute or ``..`` names, hard links to anything
    outside, relative symlinks climbing out, and writing through a symlink that leads out.
    Absolute symlinks are kept: they are resolved inside the rootfs when the plugin runs."""
    name = member.name
    where = f"member {name!r}"
    if name.startswith("/"):
        raise UnsafeMember(f"{where}: absolute path; fix: make the tarball with tar -C ROOTFS .")
    if _escapes(name):
        raise UnsafeMember(f"{where}: climbs out of the rootfs with '..'")
    if len(name) > _MAX_NAME or len(member.linkname) > _MAX_NAME:
        raise UnsafeMember(f"{where}: a name or link target longer than {_MAX_NAME} bytes")
    if not _resolves_inside(dest, os.path.dirname(name)):
        raise UnsafeMember(f"{where}: would be written through a symlink that leads out")
    if member.islnk():
        link = member.linkname
        if link.startswith("/") or _escapes(link) or not _resolves_inside(dest, link):
            raise UnsafeMember(f"{where}: hard link to {link!r}, outside the rootfs")
    target = member.linkname
    relative = member.issym() and not target.startswith("/")
    if relative and _escapes(os.path.join(os.path.dirname(name), target)):
        raise UnsafeMember(f"{where}: symlink to {target!r} climbs out of the rootfs")
    checked = tarfile.tar_filter(member, dest)  # realpath: no writing through a symlink out
    return checked.replace(mode=member.mode, deep=False)


def unpack_rootfs(fileobj: Any, dest: Path, console: Console, what: str, total: int | None) -> None:
    """Extract the (optionally compressed) tar stream FILEOBJ (a binary file with readinto)
    into DEST, with a progress bar over TOTAL bytes read (None: unknown)."""
    if os.geteuid() != 0:
        raise ConfigError(
            f"unpacking {what} keeps file owners and device nodes, which needs root; fix: sudo"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with byte_progress(console) as bar:
        task = bar.add_task(f"unpacking {what}", total=total)
        counted = io.BufferedReader(CountingReader(fileobj, bar, task), 1 << 20)
        try:
            with tarfile.open(fileobj=counted, mode="r|*") as tar:
                tar.extractall(dest, numeric_owner=True, filter=rootfs_member)
        except tarfile.FilterError as exc:
            raise ConfigError(f"{what}: refused {exc}") from exc
        except (tarfile.TarError, EOFError) as exc:
            raise ConfigError(f"{what}: not a readable tar archive ({exc})") from exc
    for rel in _EXPORT_ONLY:
        (dest / rel).unlink(missing_ok=True)


# --- the bases ------------------------------------------------------------------------------


def _connect() -> Any:
    from dockplug.packaging import engine

    return engine.connect()


def from_tar(path: Path, dest: Path, console: Console) -> None:
    with open(path, "rb", buffering=0) as raw:
        unpack_rootfs(raw, dest, console, str(path), path.stat().st_size)


def image_config(image: Any) -> dict[str, Any]:
    """The image's runtime config (Entrypoint, Cmd, Env, WorkingDir), which ``docker export``
    drops: a plugin packaged from the image takes its defaults from it."""
    return dict(image.attrs.get("Config") or {})


def from_image(
    ref: str, dest: Path, console: Console, client: Any = None, flag: str | None = None
) -> dict[str, Any]:
    """DEST = the filesystem of the local image REF, read through the Engine API (a container
    is created, never started, and exported, then removed). Returns the image's runtime config.
    FLAG names REF in errors (default ``--base image:REF``)."""
    import docker.errors

    flag = flag or f"--base image:{ref}"
    client = client or _connect()
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound as exc:
        raise ConfigError(
            f"{flag}: no such image on the Docker host; fix: docker load / docker "
            "import / docker build it there first (docker images lists them)"
        ) from exc
    except docker.errors.APIError as exc:
        raise ConfigError(f"{flag}: {exc}") from exc
    name = f"dockplug-base-{uuid.uuid4().hex[:12]}"
    # never run: a command is only needed because images without CMD cannot be created
    container = client.containers.create(image.id, entrypoint=["/dockplug-export"], name=name)
    try:
        reader = _ChunkReader(container.export(chunk_size=1 << 20))
        unpack_rootfs(reader, dest, console, f"image {ref}", int(image.attrs.get("Size") or 0))
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    return image_config(image)


def from_dockerfile(
    path: Path, dest: Path, console: Console, client: Any = None, flag: str | None = None
) -> dict[str, Any]:
    """DEST = the filesystem of the image dockerd builds from the Dockerfile PATH (its folder is
    the context), whose temporary tag is removed after. No pull is forced, so ``FROM`` a local
    image works with no registry. Returns the image's runtime config (as from_image)."""
    import docker.errors

    flag = flag or f"--base dockerfile:{path}"
    client = client or _connect()
    dockerfile = _dockerfile(path).resolve()
    tag = f"dockplug-base-build:{uuid.uuid4().hex[:12]}"
    console.print(f"building {dockerfile} (context {dockerfile.parent})", markup=False)
    try:
        stream = client.api.build(
            path=str(dockerfile.parent),
            dockerfile=dockerfile.name,
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        for item in stream:
            if item.get("error") or item.get("errorDetail"):
                detail = item.get("errorDetail") or {}
                msg = str(item.get("error") or detail.get("message"))
                fix = ""
                if "registry" in msg or "pull access" in msg or "no such host" in msg:
                    fix = "; fix: FROM an image already on the Docker host (docker images)"
                raise ConfigError(f"{flag}: docker build failed: {msg}{fix}")
            text = str(item.get("stream") or "").rstrip()
            if text:
                console.print(f"  {text}", markup=False, highlight=False)
    except docker.errors.APIError as exc:
        raise ConfigError(f"{flag}: docker build failed: {exc}") from exc
    try:
        return from_image(tag, dest, console, client, flag)
    finally:
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(tag, noprune=False)


def from_dir(path: Path, dest: Path, console: Console) -> None:
    """DEST = a copy of the folder PATH (a rootfs), streamed through tar and the same filter as
    a tarball, with a progress bar over its size: owners, modes and device nodes kept, nothing
    that points outside followed."""
    if not path.is_dir():
        raise ConfigError(f"--rootfs {path}: not a folder; fix: give the plugin's root folder")
    total = sum(
        os.lstat(os.path.join(root, f)).st_size
        for root, _dirs, files in os.walk(path)
        for f in files
    )
    proc = subprocess.Popen(
        ["tar", "-C", str(path), "--numeric-owner", "-c", "."],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        unpack_rootfs(proc.stdout, dest, console, f"rootfs {path}", total)
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        code = proc.wait()
    if code != 0:
        raise ConfigError(f"--rootfs {path}: reading it with tar failed: {err}")


def populate(base: Base, dest: Path, console: Console) -> None:
    """Fill DEST with the filesystem of BASE (not debootstrap: rootfs.py copies its cache)."""
    if base.kind == "tar":
        from_tar(Path(base.value), dest, console)
    elif base.kind == "image":
        from_image(base.value, dest, console)
    elif base.kind == "dockerfile":
        from_dockerfile(Path(base.value), dest, console)
    else:  # pragma: no cover - the caller handles debootstrap
        raise ValueError(base.kind)


# --- what a base must hold ------------------------------------------------------------------


def _lexists(root: Path, rel: str) -> bool:
    return os.path.lexists(root / rel)


def _python_in_chroot(root: Path) -> tuple[tuple[int, int] | None, str]:
    """The version ROOT's python3 reports when run by its own loader in a chroot (root only),
    or (None, why it did not run)."""
    res = subprocess.run(
        ["chroot", str(root), "/usr/bin/python3", "-c",
         "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    m = re.fullmatch(r"(\d+)\.(\d+)", res.stdout.strip())
    if res.returncode == 0 and m:
        return (int(m[1]), int(m[2])), ""
    return None, (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1]


def _installed_packages(root: Path) -> set[str] | None:
    """Debian packages installed in ROOT (None: no dpkg database)."""
    try:
        text = (root / "var/lib/dpkg/status").read_text(errors="replace")
    except OSError:
        return None
    found = set()
    for stanza in text.split("\n\n"):
        pkg = re.search(r"^Package: (\S+)", stanza, re.M)
        status = re.search(r"^Status: (.*)$", stanza, re.M)
        if pkg and status and status[1].strip().endswith(" installed"):
            found.add(pkg[1])
    return found


def _has_program(root: Path, program: str) -> bool:
    return any(_lexists(root, f"{d}/{program}") for d in _BIN_DIRS)


#: what a Debian package of a driver provides, to find it in a base that has no dpkg database
_PROGRAMS = {pkg: prog for d in BUILTINS.values() for pkg, prog in d.managed.packages.items()}


def python_version(rootfs: Path) -> tuple[int, int]:
    """The minor version of ``/usr/bin/python3`` inside rootfs (from its symlink or libdir,
    ``/usr/local/lib`` too: python:* images)."""
    link = rootfs / "usr/bin/python3"
    with contextlib.suppress(OSError):
        m = re.fullmatch(r"python(\d+)\.(\d+)", os.readlink(link).rsplit("/", 1)[-1])
        if m:
            return int(m[1]), int(m[2])
    found = sorted(
        (int(m[1]), int(m[2]))
        for lib in ("usr/lib", "usr/local/lib")
        for p in (rootfs / lib).glob("python3.*")
        if (m := re.fullmatch(r"python(\d+)\.(\d+)", p.name))
    )
    if not found:
        raise ConfigError(f"{rootfs}: no python3 found; fix: remove the cache to rebuild it")
    return found[-1]


def check_base(
    root: Path,
    base: Base,
    packages: Iterable[str],
    console: Console,
    run_python: bool | None = None,
) -> None:
    """Refuse a base that lacks what the plugin runs with, in one message naming everything
    missing and the fix. A python3 only in /usr/local/bin (python:* images) gets a
    /usr/bin/python3 link, as the plugin's entrypoint is /usr/bin/python3. RUN_PYTHON: ask the
    base's python3 its version in a chroot (default: when root), else read it from the files."""
    want = sys.version_info[:2]
    missing: list[str] = []
    if not _lexists(root, "usr/bin/python3") and _lexists(root, "usr/local/bin/python3"):
        (root / "usr/bin").mkdir(parents=True, exist_ok=True)
        (root / "usr/bin/python3").symlink_to("/usr/local/bin/python3")
        console.print("linked /usr/bin/python3 to the base's /usr/local/bin/python3")
    need_py = f"python3 {want[0]}.{want[1]} (this Python's version)"
    if not _lexists(root, "usr/bin/python3"):
        missing.append(f"{need_py}: there is no python3")
    else:
        have: tuple[int, int] | None
        if run_python is None:
            run_python = os.geteuid() == 0 and shutil.which("chroot") is not None
        if run_python:
            have, why = _python_in_chroot(root)
            if have is None:
                missing.append(f"{need_py}: its /usr/bin/python3 does not run ({why})")
        else:
            try:
                have = python_version(root)
            except ConfigError:
                have = None
                missing.append(f"{need_py}: its python3's version is unknown")
        if have is not None and have < MIN_PYTHON:
            missing.append(f"{need_py}: it has python3 {have[0]}.{have[1]}, too old for dockplug")
        elif have is not None and have != want:
            missing.append(
                f"{need_py}: it has python3 {have[0]}.{have[1]}, whose compiled modules differ "
                f"(or run dockplug build with a Python {have[0]}.{have[1]})"
            )
    installed = _installed_packages(root)
    for pkg in sorted(set(packages) - {"python3"}):
        program = _PROGRAMS.get(pkg, pkg)
        if (installed is None or pkg not in installed) and not _has_program(root, program):
            missing.append(f"{pkg} (no {program} program)" if program != pkg else pkg)
    if missing:
        debs = " ".join(["python3", *sorted(set(packages) - {"python3"})])
        raise ConfigError(
            f"--base {base} lacks what the plugin needs:\n"
            + "\n".join(f"  - {m}" for m in missing)
            + f"\nfix: add them to the base (on Debian: apt-get install {debs}; in a Dockerfile "
            "as a RUN step), or build with the default --base debootstrap"
        )
