"""Which Docker Engine the dockerd fixtures run: bookworm's 20.10, or a current one from
Debian's archive (28.5 from sid), unpacked beside it.

Users run Docker 24 to 28 far more often than 20.10, and the engines differ on the wire
(``Host: plugin.moby.localhost``, ``IPv6Data: []``, extra Get and GetDefaultAddressSpaces
calls...), so the integration suite runs against each. ``DOCKPLUG_ENGINE`` (``20.10`` or
``28``; ``scripts/test --engine 28`` sets it) picks the engine. The newer one is downloaded
with a private apt list and unpacked into ``/var/cache/dockplug/engines/<series>/`` once
(nothing is installed, the system is not changed); it runs with bookworm's ``runc`` and
``docker-init`` because sid's need glibc 2.38 (test-environment.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dockplug.errors import ConfigError
from dockplug.testing import debian

ENV = "DOCKPLUG_ENGINE"
#: Packages whose binaries a current dockerd needs; runc and tini come from bookworm.
PACKAGES = ("docker.io", "containerd")


@dataclass(frozen=True)
class Series:
    """One engine series the suite can run against."""

    name: str
    #: The Debian suite its packages come from (None: bookworm's, installed with apt-get).
    suite: str | None
    #: What ``dockerd --version`` must start with.
    version_prefix: str


SERIES = {
    "20.10": Series("20.10", None, "20.10."),
    "28": Series("28", "sid", "28."),
}
DEFAULT = "20.10"


def selected() -> Series:
    """The series ``DOCKPLUG_ENGINE`` names (20.10 when unset); a ConfigError names the fix."""
    name = os.environ.get(ENV, "").strip() or DEFAULT
    if name.endswith(".x"):
        name = name[:-2]
    found = SERIES.get(name) or SERIES.get(name.split(".")[0])
    if found is None:
        raise ConfigError(
            f"{ENV}={name!r} is not an engine the suite knows; fix: set it to one of "
            f"{', '.join(SERIES)}"
        )
    return found


def series_of(version: str) -> str:
    """The series a dockerd version belongs to: '20.10.24' -> '20.10', '28.5.2' -> '28'
    (20.10 was the last year.month release; from 23 on the major number is the series)."""
    parts = version.split(".")
    return ".".join(parts[:2]) if parts[0] == "20" else parts[0]


def cache_dir() -> Path:
    """Where unpacked engines are kept between runs."""
    return debian.cache_dir() / "engines"


@dataclass(frozen=True)
class Engine:
    """How to start one engine: the dockerd binary, a PATH prefix, extra arguments."""

    series: Series
    dockerd: Path
    #: Folder put first on dockerd's PATH (containerd, its shim, runc); None: the system's.
    bin_dir: Path | None = None
    #: Arguments this build needs beyond the fixtures' own (the config file apart).
    extra_args: tuple[str, ...] = ()
    #: The daemon.json it reads (None: dockerd's default, /etc/docker/daemon.json).
    config_file: Path | None = None

    def args(self, config_file: Path | None = None) -> tuple[str, ...]:
        """The arguments to start it with: its own, then one ``--config-file``: CONFIG_FILE
        when given (a dockerd with a daemon.json of its own), else the engine's."""
        config = config_file or self.config_file
        return (*self.extra_args, *((f"--config-file={config}",) if config else ()))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.bin_dir is not None:
            env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        return env


def fetch(series: Series, cache: Path | None = None) -> Path:
    """Downloads SERIES' packages and unpacks them into ``CACHE/<series>/root`` (once; later
    calls, and later runs, find the tree). Returns that root."""
    assert series.suite is not None
    folder = (cache or cache_dir()) / series.name
    return debian.unpack(series.suite, PACKAGES, folder, "usr/sbin/dockerd")


def prepare(series: Series, cache: Path | None = None) -> Engine:
    """The Engine to run for SERIES, fetching it first when it is not bookworm's."""
    if series.suite is None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise ConfigError("dockerd not installed (apt-get install docker.io)")
        return Engine(series, Path(dockerd))
    root = fetch(series, cache)
    bin_dir = root.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    runc = shutil.which("runc")
    init = Path("/usr/bin/docker-init")
    if runc is None or not init.exists():
        raise ConfigError(
            f"dockerd {series.name} runs with bookworm's runc and tini (sid's need glibc 2.38); "
            "fix: apt-get install runc tini (both come with docker.io)"
        )
    links = {
        "containerd": root / "usr/bin/containerd",
        "containerd-shim-runc-v2": root / "usr/bin/containerd-shim-runc-v2",
        "runc": Path(runc),
    }
    for name, target in links.items():
        link = bin_dir / name
        if not link.is_symlink() or link.readlink() != target:
            link.unlink(missing_ok=True)
            link.symlink_to(target)
    # an empty config keeps it from reading the host's /etc/docker/daemon.json
    config = root.parent / "daemon.json"
    if not config.exists():
        config.write_text("{}\n")
    # the unpacked docker-init is a dangling link to sid's tini: use bookworm's
    args = (f"--init-path={init}", "--ip6tables=false")
    return Engine(series, root / "usr/sbin/dockerd", bin_dir, args, config)


def version(engine: Engine) -> str | None:
    """'28.5.2' from ``dockerd --version``, or None when it does not run."""
    try:
        out = subprocess.run(
            [str(engine.dockerd), "--version"],
            capture_output=True,
            text=True,
            timeout=20,
            env=engine.env(),
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    parts = out.split()
    return parts[2].rstrip(",").split("+")[0] if len(parts) > 2 else None


def unavailable_reason(series: Series) -> str | None:
    """Why SERIES cannot run here, or None when it can (fetching it if need be)."""
    try:
        engine = prepare(series)
    except (ConfigError, OSError, subprocess.SubprocessError) as exc:
        return f"dockerd {series.name} cannot be prepared: {exc}"
    found = version(engine)
    if found is None or not found.startswith(series.version_prefix):
        return f"{engine.dockerd} is dockerd {found}, not {series.name}"
    return None


def main() -> None:
    """``python -m dockplug.testing.engines [SERIES]``: fetch and print the dockerd to run
    (scripts/dockerd.sh uses it, so the shell and the fixtures share one recipe)."""
    import sys

    if len(sys.argv) > 1:
        os.environ[ENV] = sys.argv[1]
    engine = prepare(selected())
    print(engine.dockerd)
    print(engine.bin_dir or "")
    print(" ".join(engine.args()))


if __name__ == "__main__":
    main()
