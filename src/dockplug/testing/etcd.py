"""Real etcd servers for tests: one member on 127.0.0.1, free ports, a throwaway data dir.

Two versions, because the cluster drivers must work on both and they differ (3.5 has no v2 API
at all): 3.4 is bookworm's ``etcd-server`` package (``apt-get install etcd-server``); 3.5 is
trixie's, unpacked into a cache folder (:func:`fetch_trixie_etcd`) with a private apt list, so
nothing is installed and the system is not changed. ``DOCKPLUG_ETCD_34`` / ``DOCKPLUG_ETCD_35``
name other binaries; ``DOCKPLUG_ETCD_FETCH=0`` forbids the download.

The server runs with a short heartbeat and election timeout so that it starts, restarts and
expires leases quickly (etcd's shortest lease is then its 1 s floor). :meth:`EtcdServer.pause`
(SIGSTOP) leaves its sockets open and silent, the failure a deadline must catch;
:meth:`EtcdServer.restart` keeps the data and the ports, the failure a client must survive.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dockplug.testing.pki import Certificates
from dockplug.testing.servers import free_port

BOOKWORM_ETCD = Path("/usr/bin/etcd")
TRIXIE_PACKAGE = "etcd-server"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HEARTBEAT_MS = 10
ELECTION_MS = 100


def cache_dir() -> Path:
    """Where unpacked packages are kept between test runs."""
    if os.environ.get("DOCKPLUG_CACHE"):
        return Path(os.environ["DOCKPLUG_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/dockplug")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dockplug"


def binary_version(binary: Path) -> str | None:
    """'3.4.23' from ``etcd --version``, or None when it does not run."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"etcd Version: (\S+)", out)
    return match.group(1) if match else None


def debian_mirror() -> str:
    """The Debian mirror apt already uses here (test-environment.md: use that one)."""
    with contextlib.suppress(OSError):
        for line in SOURCES.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if "security" not in uri:
                        return uri
    return DEFAULT_MIRROR


def fetch_trixie_etcd(cache: Path | None = None) -> Path:
    """Downloads trixie's etcd-server .deb with a private apt list and unpacks it into CACHE
    (once; later calls find it): ``apt-get -o Dir::...=X update; apt-get download; dpkg-deb -x``.
    Returns the etcd binary. Raises RuntimeError saying why not."""
    x = (cache or cache_dir()) / "etcd-trixie"
    binary = x / "root/usr/bin/etcd"
    if binary.exists():
        return binary
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is needed to unpack trixie's etcd-server (Debian only)")
    for sub in ("lists/partial", "cache/archives/partial", "etc"):
        (x / sub).mkdir(parents=True, exist_ok=True)
    with open(x / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be fetching it now
        if binary.exists():
            return binary
        signed = f"[signed-by={DEBIAN_KEYRING}] " if DEBIAN_KEYRING.exists() else ""
        (x / "etc/sources.list").write_text(f"deb {signed}{debian_mirror()} trixie main\n")
        opts = [
            f"-o=Dir::Etc::sourcelist={x}/etc/sources.list",
            "-o=Dir::Etc::sourceparts=/nonexistent",
            f"-o=Dir::State::Lists={x}/lists",
            f"-o=Dir::Cache={x}/cache",
            "-o=Debug::NoLocking=1",
        ]
        steps = [
            (["apt-get", *opts, "-qq", "update"], x),
            (["apt-get", *opts, "-qq", "download", TRIXIE_PACKAGE], x),
        ]
        for args, cwd in steps:
            done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(args[:1] + args[-2:])} failed: {done.stderr[-500:]}")
        debs = sorted(x.glob(f"{TRIXIE_PACKAGE}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {TRIXIE_PACKAGE} left no .deb in {x}")
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(x / "root")], check=True)
        shutil.rmtree(x / "lists", ignore_errors=True)  # 20 MB of package lists: not needed
        debs[-1].unlink()
    return binary


def find_etcd(series: str) -> tuple[Path | None, str]:
    """The etcd binary of SERIES ('3.4' or '3.5') and, when there is none, why not."""
    override = os.environ.get(f"DOCKPLUG_ETCD_{series.replace('.', '')}")
    if override:
        path = Path(override)
    elif series == "3.4":
        path = BOOKWORM_ETCD
        if not path.exists():
            return None, "no etcd 3.4 (apt-get install etcd-server)"
    elif series == "3.5":
        if os.environ.get("DOCKPLUG_ETCD_FETCH") == "0":
            path = cache_dir() / "etcd-trixie/root/usr/bin/etcd"
        else:
            try:
                path = fetch_trixie_etcd()
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                return None, f"etcd 3.5 from trixie could not be unpacked: {exc}"
    else:
        raise ValueError(f"unknown etcd series {series!r} (3.4 or 3.5)")
    version = binary_version(path)
    if version is None:
        return None, f"{path} does not run (set DOCKPLUG_ETCD_{series.replace('.', '')})"
    if not version.startswith(series + "."):
        return None, f"{path} is etcd {version}, not {series}"
    return path, ""


@dataclass
class EtcdServer:
    """One etcd member. ``start()``, then ``endpoint``; ``stop()`` removes its data."""

    binary: Path
    tls: Certificates | None = None
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dp-etcd-")))
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def version(self) -> str:
        return binary_version(self.binary) or "?"

    @property
    def log(self) -> str:
        return (self.root / "etcd.log").read_text(errors="replace")

    def _args(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            str(self.binary),
            "--name=dp",
            f"--data-dir={self.root / 'data'}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=dp={peer}",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--logger=zap",
            "--log-level=warn",
        ]
        if self.tls:
            args += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        return args

    def start(self, timeout: float = 15.0) -> EtcdServer:
        log = open(self.root / "etcd.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(self._args(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"etcd did not start: {self.log[-2000:]}")
            time.sleep(0.02)
        return self

    def healthy(self) -> bool:
        """True when etcd's /health says so (within 1 s)."""
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1, context=context) as r:
                health = json.loads(r.read()).get("health")
        except (OSError, ValueError):
            return False
        return health in (True, "true")

    def _state(self) -> str:
        """The process state letter from /proc (T: stopped)."""
        assert self.proc is not None
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return "?"
        return stat.rsplit(")", 1)[1].split()[0]

    def _signal(self, sig: signal.Signals, stopped: bool) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        deadline = time.monotonic() + 5
        # the signal lands a moment later: a request sent before that would still be answered
        while (self._state() == "T") != stopped and time.monotonic() < deadline:
            time.sleep(0.001)

    def pause(self) -> None:
        """SIGSTOP (returns once it took effect): connections stay open and nothing answers."""
        self._signal(signal.SIGSTOP, stopped=True)

    def resume(self) -> None:
        self._signal(signal.SIGCONT, stopped=False)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def kill(self) -> None:
        """SIGKILL (a crash); the data stays for a ``start()``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def halt(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (a clean shutdown); the data stays for a ``start()``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, down: float = 0.0) -> None:
        """Stops etcd cleanly, waits DOWN seconds, starts it again on the same ports and data."""
        self.halt()
        time.sleep(down)
        self.start()

    def stop(self) -> None:
        """Stops etcd and removes its data."""
        self.halt()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def throwaway_etcd(series: str = "3.4", tls: Certificates | None = None) -> Iterator[EtcdServer]:
    """A started etcd of SERIES, stopped and removed on exit. Raises RuntimeError if none."""
    binary, reason = find_etcd(series)
    if binary is None:
        raise RuntimeError(reason)
    with EtcdServer(binary, tls=tls) as server:
        server.start()
        yield server


if __name__ == "__main__":  # python -m dockplug.testing.etcd: fetch 3.5 ahead of a test run
    for series in ("3.4", "3.5"):
        found, why = find_etcd(series)
        print(f"etcd {series}: {found or why}")
    sys.exit(0)
