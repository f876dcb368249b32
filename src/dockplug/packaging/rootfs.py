"""The plugin root filesystem: a cached Debian (debootstrap) base with python3 (plus the extra
Debian packages a driver declares), copied fresh for each build, or another base (an image, a
tarball, a Dockerfile: bases.py), with dockplug and its dependencies installed under
``/opt/dockplug/site``. Each package set has its own cached base
(``bookworm-python3`` for none, ``bookworm-python3+fuse3+openssh-client+sshfs`` for sshfs's).

The host's Python installs the dependencies (``pip install --target``), so the compiled wheels
(pydantic_core, httptools, uvloop) are built for the host's Python minor version; the rootfs's
python3 must therefore be the same minor version, which is checked.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

from rich.console import Console

from dockplug.errors import ConfigError
from dockplug.packaging.bases import (
    DEBOOTSTRAP,
    Base,
    check_base,
    populate,
    python_version,
    refuse_escaping_paths,
)
from dockplug.packaging.config import PLUGIN_SOCKET_DIR, SITE_DIR

SUITE = "bookworm"
DEFAULT_CACHE = Path("/var/cache/dockplug/rootfs/bookworm-python3")
_MARKER = ".dockplug-base"
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
# not needed to run a plugin; ~140 MB of the ~260 MB debootstrap leaves
_TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
         "var/cache/apt", "var/lib/apt/lists")  # fmt: skip


def _packages(packages: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sorted(set(packages) - {"python3"}))
    for name in out:
        if not PACKAGE_NAME.fullmatch(name):
            raise ConfigError(f"{name!r} is not a Debian package name; fix the driver's packages")
    return out


def cache_dir(packages: Iterable[str] = ()) -> Path:
    """Where the debootstrap base with python3 and PACKAGES is cached (``DOCKPLUG_ROOTFS_CACHE``
    overrides the base without extra packages; a set of packages adds ``+pkg+pkg`` to its name)."""
    env = os.environ.get("DOCKPLUG_ROOTFS_CACHE")
    base = Path(env) if env else DEFAULT_CACHE
    extra = _packages(packages)
    return base.with_name("+".join((base.name, *extra))) if extra else base


def _include(packages: tuple[str, ...]) -> str:
    return "--include=" + ",".join(("python3", *packages))


def _marker_text(packages: tuple[str, ...]) -> str:
    """What the marker of a complete base holds (unchanged for python3 alone, so existing
    caches stay valid)."""
    return f"debootstrap --variant=minbase {_include(packages)} {SUITE}\n"


def debian_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses here (sources.list or sources.list.d/*.sources)."""
    candidates: list[tuple[str, list[str]]] = []
    lists = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in lists:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb":
                    rest = [p for p in parts[1:] if not p.startswith("[")]
                    if len(rest) >= 2:
                        candidates.append((rest[0], [rest[1]]))
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in re.split(r"\n\s*\n", path.read_text()):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.lstrip().startswith("#"):
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.strip()
                if "deb" in fields.get("types", "").split():
                    for uri in fields.get("uris", "").split():
                        candidates.append((uri, fields.get("suites", "").split()))
    for uri, suites in candidates:
        if any(s == SUITE or s == "stable" for s in suites) and "security" not in uri:
            return uri.rstrip("/")
    for uri, _suites in candidates:
        if "debian" in uri and "security" not in uri:
            return uri.rstrip("/")
    raise ConfigError(
        f"no Debian mirror found in {etc}/sources.list or {etc}/sources.list.d/*.sources; "
        "fix: add a 'deb' source for bookworm, or set DOCKPLUG_ROOTFS_CACHE to a ready rootfs"
    )


@contextlib.contextmanager
def _step(console: Console, text: str) -> Iterator[None]:
    t0 = time.monotonic()
    with console.status(text):
        yield
    console.print(f"[green]✓[/green] {text} ({time.monotonic() - t0:.1f}s)")


def _is_complete(cache: Path, packages: tuple[str, ...]) -> bool:
    try:
        marker = (cache / _MARKER).read_text()
    except OSError:
        return False
    return marker == _marker_text(packages) and (cache / "usr/bin/python3").exists()


def ensure_base(
    console: Console, cache: Path | None = None, packages: Iterable[str] = ()
) -> tuple[Path, bool]:
    """The cached base rootfs with python3 and PACKAGES, made with debootstrap if absent (or
    made for another package set). Returns (path, made_now)."""
    extra = _packages(packages)
    cache = cache or cache_dir(extra)
    if _is_complete(cache, extra):
        return cache, False
    if shutil.which("debootstrap") is None:
        raise ConfigError("debootstrap is not installed; fix: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise ConfigError("building the Debian base rootfs needs root (debootstrap); fix: sudo")
    mirror = debian_mirror()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache.parent))
    try:
        cmd = ["debootstrap", "--variant=minbase", _include(extra), SUITE, str(tmp), mirror]
        what = " + ".join(("python3", *extra))
        with _step(console, f"debootstrap {SUITE} + {what} from {mirror} (about a minute)"):
            res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-10:])
            raise ConfigError(f"debootstrap failed ({res.returncode}):\n{tail}")
        for rel in _TRIM:
            shutil.rmtree(tmp / rel, ignore_errors=True)
        (tmp / _MARKER).write_text(_marker_text(extra))
        if cache.exists():
            shutil.rmtree(cache)
        tmp.rename(cache)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return cache, True


def _requirements() -> list[str]:
    reqs = metadata.requires("dockplug") or []
    return [r for r in reqs if "extra ==" not in r]


def install_dockplug(rootfs: Path, console: Console) -> None:
    """dockplug (the running copy) plus its dependencies into ROOTFS/opt/dockplug/site."""
    import dockplug

    site = rootfs / SITE_DIR.lstrip("/")
    site.mkdir(parents=True, exist_ok=True)
    with _step(console, "installing dockplug's dependencies (pip install --target)"):
        res = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-warn-script-location", "--no-compile", "--target", str(site),
             *_requirements()],
            capture_output=True, text=True,
        )  # fmt: skip
    if res.returncode != 0:
        tail = "\n".join(res.stderr.strip().splitlines()[-10:])
        raise ConfigError(f"pip install into the rootfs failed:\n{tail}")
    src = Path(dockplug.__file__).parent
    shutil.copytree(src, site / "dockplug", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


_PROJECT_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".*_cache"
)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project_requirements(dist_info: Path) -> list[str]:
    """The project's requirements, dockplug's replaced by the running dockplug: checked against
    its version and its extras' requirements added (dockplug is on no index)."""
    from packaging.requirements import Requirement

    import dockplug

    meta = (dist_info / "METADATA").read_text(errors="replace")
    out: list[str] = []
    for line in re.findall(r"^Requires-Dist: (.+)$", meta, re.M):
        req = Requirement(line.strip())
        if _canonical(req.name) != "dockplug":
            out.append(line.strip())
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if not req.specifier.contains(dockplug.__version__, prereleases=True):
            raise ConfigError(
                f"the project needs {line.strip()} but dockplug build runs dockplug "
                f"{dockplug.__version__}, which is what the rootfs gets; fix: build with a "
                f"dockplug that matches, or relax the requirement in pyproject.toml"
            )
        for extra in sorted(req.extras):
            for dep in metadata.requires("dockplug") or []:
                r = Requirement(dep)
                if r.marker is not None and r.marker.evaluate({"extra": extra}):
                    r.marker = None
                    out.append(str(r))
    return out


def install_project(rootfs: Path, project: Path, console: Console) -> None:
    """The user's project (``pip install --target``, its own dependencies included) into
    ROOTFS/opt/dockplug/site, next to dockplug. It is installed from a clean copy, so the
    project folder gets no build/ or egg-info; packages already there (dockplug's) are kept.
    The project goes in alone (``--no-deps``), then its requirements but dockplug: a project
    may well list dockplug, which pip would look for on an index that does not have it."""
    site = rootfs / SITE_DIR.lstrip("/")
    before = set(site.glob("*.dist-info"))
    with tempfile.TemporaryDirectory(prefix="dockplug-project-") as tmp:
        copy = Path(tmp) / project.resolve().name
        shutil.copytree(project, copy, ignore=_PROJECT_IGNORE, symlinks=True)
        with _step(console, f"installing the project {project} (pip install --target)"):
            _pip_target(site, [str(copy), "--no-deps"], project)
    made = sorted(set(site.glob("*.dist-info")) - before)
    if not made:  # pragma: no cover - pip always writes one
        raise ConfigError(f"pip install of {project} left no .dist-info in {site}")
    reqs = _project_requirements(made[0])
    if reqs:
        with _step(console, f"installing the project's requirements: {', '.join(reqs)}"):
            _pip_target(site, reqs, project)


def _pip_target(site: Path, args: list[str], project: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-warn-script-location", "--no-compile", "--target", str(site), *args],
        capture_output=True, text=True,
    )  # fmt: skip
    if res.returncode != 0:
        tail = "\n".join(res.stderr.strip().splitlines()[-10:])
        raise ConfigError(
            f"pip install of {project} into the rootfs failed:\n{tail}\nfix: check that "
            f"'pip install {project}' works here (dockplug itself may be listed or not)"
        )


def make_rootfs(
    dest: Path,
    console: Console,
    cache: Path | None = None,
    packages: Iterable[str] = (),
    project: Path | None = None,
    base: Base = DEBOOTSTRAP,
) -> bool:
    """A fresh rootfs at dest: a copy of BASE (the cached debootstrap base with python3 and
    PACKAGES, or an image, tarball or Dockerfile checked to hold them) plus dockplug (and the
    user's PROJECT, if given). Returns True if the debootstrap base had to be made (cold)."""
    cold = False
    if base.kind == "debootstrap":
        cold = _copy_debootstrap(dest, console, cache, packages)
    else:
        t0 = time.monotonic()
        populate(base, dest, console)  # shows its own progress (a bar: no status spinner here)
        console.print(f"[green]✓[/green] read the base {base} ({time.monotonic() - t0:.1f}s)")
        refuse_escaping_paths(dest, [SITE_DIR, PLUGIN_SOCKET_DIR, "usr/bin"])
        check_base(dest, base, packages, console)
    install_dockplug(dest, console)
    if project is not None:
        install_project(dest, project, console)
    (dest / PLUGIN_SOCKET_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return cold


def _copy_debootstrap(
    dest: Path, console: Console, cache: Path | None, packages: Iterable[str]
) -> bool:
    base, cold = ensure_base(console, cache, packages)
    have = python_version(base)
    want = sys.version_info[:2]
    if have != want:
        raise ConfigError(
            f"the rootfs's python3 is {have[0]}.{have[1]} but this Python is "
            f"{want[0]}.{want[1]}; compiled dependencies would not load; fix: run dockplug "
            f"build with Python {have[0]}.{have[1]} (e.g. a venv made with it)"
        )
    with _step(console, f"copying the base rootfs from {base}"):
        res = subprocess.run(
            ["cp", "-a", "--reflink=auto", f"{base}/.", str(dest)],
            capture_output=True,
            text=True,
        )
    if res.returncode != 0:
        raise ConfigError(f"copying {base} failed: {res.stderr.strip()}")
    (dest / _MARKER).unlink(missing_ok=True)
    return cold
