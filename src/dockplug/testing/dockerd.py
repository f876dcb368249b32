"""A real, isolated dockerd for tests: its own data root, exec root, pid file and API socket.

Legacy plugin discovery always uses /run/docker/plugins whatever the exec root, so plugins under
test must use unique names. ``DOCKPLUG_DOCKER_HOST`` points the fixtures at a dockerd someone
else started (``.ci/run`` does that once for the whole run). ``DOCKPLUG_ENGINE`` picks which
engine a fresh one runs (:mod:`dockplug.testing.engines`: bookworm's 20.10, or 28.5 unpacked
from Debian's archive).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from dockplug.errors import ConfigError
from dockplug.testing import engines

BUSYBOX_IMAGE = "dockplug-test/busybox:latest"


def unavailable_reason() -> str | None:
    """Why a real dockerd cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root to run dockerd"
    try:
        series = engines.selected()
    except ConfigError as exc:
        return str(exc)
    if os.environ.get("DOCKPLUG_DOCKER_HOST"):
        return None
    if shutil.which("docker") is None:
        return "docker CLI not installed (apt-get install docker.io)"
    if series.suite is None and shutil.which("dockerd") is None:
        return "dockerd not installed (apt-get install docker.io)"
    return engines.unavailable_reason(series)


class Dockerd:
    """Starts (or attaches to) a dockerd and runs docker CLI commands against it."""

    def __init__(
        self,
        root: Path | None = None,
        host: str | None = None,
        engine: engines.Engine | None = None,
    ) -> None:
        self.external = host is not None
        #: The engine a fresh daemon runs; None for one someone else runs.
        self.engine = None if self.external else engine or engines.prepare(engines.selected())
        # a daemon someone else runs needs no directory of ours; don't leave an empty one behind
        self.root = (
            None if self.external else Path(root or tempfile.mkdtemp(prefix="dockplug-dockerd-"))
        )
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
        self.host = host or f"unix://{self.root}/docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path | None:
        """The file this dockerd logs to (None for a dockerd someone else runs)."""
        return None if self.root is None else self.root / "dockerd.log"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def start(self, timeout: float = 60.0, extra_args: tuple[str, ...] = ()) -> Dockerd:
        if self.root is not None:
            assert self.engine is not None
            log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - lives with the process
            self.proc = subprocess.Popen(
                [
                    str(self.engine.dockerd),
                    "--data-root", str(self.root / "data"),
                    "--exec-root", str(self.root / "exec"),
                    "--pidfile", str(self.root / "dockerd.pid"),
                    "-H", self.host,
                    "--bridge=none",
                    "--iptables=false",
                    *self.engine.args(),
                    *extra_args,
                ],
                env=self.engine.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            res = subprocess.run(
                ["docker", "version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}"],
                env=self.env,
                capture_output=True,
                text=True,
            )
            if res.returncode == 0:
                self.version, _, self.api_version = res.stdout.strip().partition(" ")
                return self
            if self.proc is not None and self.proc.poll() is not None:
                raise ConfigError(f"dockerd exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"dockerd did not answer within {timeout}s: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def restart(self, timeout: float = 60.0, extra_args: tuple[str, ...] = ()) -> Dockerd:
        """Stop this dockerd and start it again on the same data root with EXTRA_ARGS: dockerd
        looks up each --authorization-plugin at start, so a managed one must be created and
        enabled (in this data root, where dockerd restores it) by a start before."""
        self._terminate()
        return self.start(timeout, extra_args)

    def _terminate(self) -> None:
        if self.proc is None or self.root is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is None or self.root is None:
            return
        self._terminate()
        # dockerd leaves its mounts behind when killed; unmount before removing the tree
        with contextlib.suppress(OSError):
            mounts = Path("/proc/self/mountinfo").read_text().splitlines()
            for line in sorted(mounts, key=len, reverse=True):
                point = line.split()[4]
                if point.startswith(str(self.root)):
                    subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this dockerd; raises with its stderr on failure."""
        res = subprocess.run(
            ["docker", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}"
            )
        return res

    def busybox_image(self) -> str:
        """A tiny image built from Debian's busybox-static (there is no Docker Hub here)."""
        if self.docker("image", "inspect", BUSYBOX_IMAGE, check=False).returncode == 0:
            return BUSYBOX_IMAGE
        busybox = shutil.which("busybox")
        if busybox is None:
            raise ConfigError("busybox not installed (apt-get install busybox-static)")
        with tempfile.TemporaryDirectory(prefix="dockplug-bb-") as tmp:
            root = Path(tmp)
            for d in ("bin", "tmp", "etc", "data", "proc", "sys", "dev"):
                (root / d).mkdir()
            shutil.copy2(busybox, root / "bin/busybox")
            applets = subprocess.run(
                [busybox, "--list"], capture_output=True, text=True, check=True
            ).stdout.split()
            for applet in applets:
                if applet != "busybox":
                    (root / "bin" / applet).symlink_to("busybox")
            tar = subprocess.Popen(["tar", "-C", tmp, "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(
                ["docker", "import", "-", BUSYBOX_IMAGE],
                stdin=tar.stdout,
                env=self.env,
                check=True,
                capture_output=True,
            )
            tar.wait()
        return BUSYBOX_IMAGE
