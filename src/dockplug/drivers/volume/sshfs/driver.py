"""The ``sshfs`` volume driver: a remote folder over SSH as a volume, one FUSE mount per volume
shared by every container that uses it, secrets kept out of records, logs and replies.

Each volume gets its own mountpoint (``BASE/NAME``), mounted on the first Mount and unmounted on
the last Unmount (counts per mount ID, kept by :class:`StatefulVolumeDriver`). sshfs runs in the
foreground as a detached process, so a plugin restart leaves live mounts alone and start-up
adopts them; its stderr goes to a per-volume log that a failed mount quotes in ``Err``. ssh reads
only a config file written for the mount (``-F``): never the user's, never a command line with a
secret, never a prompt (BatchMode, or ``password_stdin`` with one password prompt).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dockplug.drivers.registry import setting_default
from dockplug.drivers.volume.base import StatefulVolumeDriver
from dockplug.drivers.volume.mountinfo import mount_points
from dockplug.drivers.volume.sshfs.mounting import (
    explain,
    fusermount_unmount,
    is_mounted,
    plan_mount,
    probe,
)
from dockplug.drivers.volume.sshfs.options import SSHFS_OPTIONS, validate
from dockplug.errors import InvalidOption, PluginError
from dockplug.observe import add_secret, log_event, redact
from dockplug.observe import metrics as obs_metrics
from dockplug.observe.metrics import Metrics
from dockplug.state import open_volume_store
from dockplug.state.secrets import FILE_NAME, SecretStore
from dockplug.state.volumes import VolumeRecord

DEFAULT_BASE_DIR: Path = setting_default("sshfs", "base_dir")
DEFAULT_STATE_DIR: Path = setting_default("sshfs", "state_dir")
DEFAULT_MOUNT_TIMEOUT: float = setting_default("sshfs", "mount_timeout")
INLINE_PREFIX = "volume/"  # secrets-store entries holding a volume's inline password

# -- the driver ------------------------------------------------------------------------------


class SshfsDriver(StatefulVolumeDriver):
    """Remote folders over SSH as volumes; one sshfs per volume, shared by its containers."""

    options = SSHFS_OPTIONS

    def __init__(
        self,
        base_dir: Path | str = DEFAULT_BASE_DIR,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        allow_inline_secrets: bool = False,
        mount_timeout: float = DEFAULT_MOUNT_TIMEOUT,
        remount_tries: int = 3,
        remount_backoff: float = 1.0,
        scope: str = "local",
        log: Callable[[str], None] = log_event,
        gc_interval: float = 0,
        docker_host: str | None = None,
    ) -> None:
        self.base_dir = Path(os.path.realpath(base_dir))
        self.state_dir = Path(os.path.realpath(state_dir))
        self.allow_inline_secrets = allow_inline_secrets
        self.mount_timeout = mount_timeout
        self.remount_tries = max(1, remount_tries)
        self.remount_backoff = remount_backoff
        self.base_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.run_dir = self.state_dir / "run"
        self.run_dir.mkdir(exist_ok=True, mode=0o700)
        self.known_hosts_dir = self.state_dir / "known_hosts"
        self.secrets = SecretStore(self.state_dir / FILE_NAME)
        self._status: dict[str, tuple[str, str]] = {}  # name -> (state, reason)
        self._reconnects: obs_metrics.Counter = obs_metrics.NO_METRICS.counter("", "")
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        super().__init__(
            open_volume_store(self.state_dir),
            scope=scope,
            log=lambda message: log(redact(message)),
            gc_interval=gc_interval,
            docker_host=docker_host,
        )

    # -- secrets -------------------------------------------------------------------------

    def _check_inline(self, opts: dict[str, Any], name: str) -> None:
        """Inline passwords are refused by default. When allowed, dockplug keeps the value only
        in its secrets store, but dockerd itself saves every Create option and prints it under
        Options in ``docker volume inspect``: the plugin cannot stop that, so it warns."""
        if "password" not in opts:
            return
        if not self.allow_inline_secrets:
            raise InvalidOption(
                "option password: this plugin refuses inline passwords (start it with "
                "--allow-inline-secrets to accept them); store it with `dockplug secret set "
                "NAME` and give -o secret=NAME, or give -o password_file=PATH"
            )
        self.log(
            f"warning: volume {name} was created with an inline password: dockerd keeps it in "
            "its own volume options and `docker volume inspect` shows it; use "
            "`dockplug secret set NAME` and -o secret=NAME instead"
        )

    def _password(self, rec: VolumeRecord) -> str | None:
        opts = rec.options
        if rec.extra.get("inline_password"):
            value = self.secrets.get(INLINE_PREFIX + rec.name)
            if value is None:
                raise PluginError(
                    f"volume {rec.name}: its password is missing from the secrets store "
                    f"{self.secrets.path}; create the volume again with -o password=..."
                )
            return value
        if "secret" in opts:
            value = self.secrets.get(opts["secret"])
            if value is None:
                raise PluginError(
                    f"volume {rec.name}: no secret {opts['secret']!r} in {self.secrets.path}; "
                    f"add it with `dockplug secret set {opts['secret']}`"
                )
            return value
        if "password_file" in opts:
            try:
                with open(opts["password_file"]) as fh:
                    value = fh.read().rstrip("\r\n")
            except OSError as exc:
                raise PluginError(
                    f"volume {rec.name}: cannot read password_file {opts['password_file']}: "
                    f"{exc.strerror or exc}"
                ) from None
            add_secret(value)
            return value
        return None

    # -- storage hooks -------------------------------------------------------------------

    def provision(self, name: str, opts: dict[str, Any]) -> VolumeRecord:
        validate(opts)
        self._check_inline(opts, name)
        for key in ("identity_file", "password_file", "known_hosts_file"):
            if key in opts and not os.path.isfile(opts[key]):
                raise InvalidOption(f"option {key}={opts[key]}: no such file on the plugin's host")
        if "secret" in opts and opts["secret"] not in self.secrets:
            raise InvalidOption(
                f"option secret={opts['secret']}: no such secret; add it first with "
                f"`dockplug secret set {opts['secret']}`"
            )
        extra: dict[str, Any] = {}
        if "host_key" in opts:
            self.known_hosts_dir.mkdir(exist_ok=True, mode=0o700)
            known = self.known_hosts_dir / name
            known.write_text(f"* {opts['host_key']}\n")
            extra["known_hosts"] = str(known)
        if "password" in opts:
            self.secrets.set(INLINE_PREFIX + name, opts["password"])
            extra["inline_password"] = True
        path = self.base_dir / name
        path.mkdir(exist_ok=True, mode=0o755)
        self._status[name] = ("unmounted", "")
        return VolumeRecord(
            name=name, mountpoint=str(path), options=self.options.public(opts), extra=extra
        )

    def recreate(self, rec: VolumeRecord, opts: dict[str, Any]) -> None:
        self._check_inline(opts, rec.name)
        if "password" in opts:
            key = INLINE_PREFIX + rec.name
            if self.secrets.get(key) != opts["password"]:
                self.secrets.set(key, opts["password"])
                self.log(f"{rec.name}: password replaced; used from the next mount")

    def before_remove(self, rec: VolumeRecord) -> None:
        path = Path(rec.mountpoint)
        if is_mounted(path):
            self._unmount(rec.name, path)

    def destroy(self, rec: VolumeRecord) -> None:
        if rec.extra.get("inline_password"):
            self.secrets.delete(INLINE_PREFIX + rec.name)
        if rec.extra.get("known_hosts"):
            Path(rec.extra["known_hosts"]).unlink(missing_ok=True)
        for leftover in (self._config_file(rec.name), self._log_file(rec.name)):
            leftover.unlink(missing_ok=True)
        self._status.pop(rec.name, None)
        path = Path(rec.mountpoint)
        if not is_mounted(path):  # never delete through a live remote mount
            with contextlib.suppress(OSError):
                path.rmdir()

    def attach(self, rec: VolumeRecord) -> None:
        try:
            self._mount(rec)
        except PluginError as exc:
            self._status[rec.name] = ("failed", str(exc))
            raise

    def detach(self, rec: VolumeRecord) -> None:
        self._unmount(rec.name, Path(rec.mountpoint))

    def is_available(self, rec: VolumeRecord) -> bool:
        return self._status.get(rec.name, ("",))[0] == "mounted"

    def describe(self, rec: VolumeRecord) -> dict[str, Any]:
        state, reason = self._status.get(rec.name, ("unmounted", ""))
        status: dict[str, Any] = {
            "Remote": rec.options["sshcmd"],
            "Port": rec.options.get("port", 22),
            "State": state,
        }
        if reason:
            status["Error"] = reason
        return status

    # -- mounting ------------------------------------------------------------------------

    def _config_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.ssh_config"

    def _log_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"

    def _mount(self, rec: VolumeRecord) -> None:
        path = Path(rec.mountpoint)
        if is_mounted(path):
            why = probe(path)
            if why is None:  # left mounted by an earlier run of the plugin: adopt it
                self._status[rec.name] = ("mounted", "")
                return
            self.log(f"{rec.name}: cleaning up a dead mount ({why})")
            fusermount_unmount(path, lazy=True)
        path.mkdir(parents=True, exist_ok=True, mode=0o755)
        password = self._password(rec)
        known = rec.extra.get("known_hosts")
        plan = plan_mount(
            rec.options,
            path,
            self._config_file(rec.name),
            Path(known) if known else None,
            password,
        )
        config = self._config_file(rec.name)
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(plan.ssh_config)
        log_fd = os.open(
            self._log_file(rec.name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600
        )
        began = time.monotonic()
        try:
            proc = subprocess.Popen(
                plan.argv,
                stdin=subprocess.PIPE if password is not None else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_fd,
                start_new_session=True,  # survives the plugin; no terminal to prompt on
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"},
            )
        except OSError as exc:
            raise PluginError(f"volume {rec.name}: cannot run sshfs: {exc}") from None
        finally:
            os.close(log_fd)
        if password is not None:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.write(password.encode() + b"\n")
            with contextlib.suppress(OSError):
                proc.stdin.close()
        # sshfs 3.x mounts first and connects afterwards, so the mount appearing proves
        # nothing: the first stat through it is answered only once ssh is connected (or fails
        # with ENOTCONN when sshfs gives up and exits)
        deadline = began + self.mount_timeout
        answered = False
        while not answered and proc.poll() is None and time.monotonic() < deadline:
            if is_mounted(path):
                answered = probe(path, max(deadline - time.monotonic(), 0.1)) is None
                if not answered:
                    time.sleep(0.02)
            else:
                time.sleep(0.02)
        if not answered or proc.poll() is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1 if proc.poll() is None and time.monotonic() < deadline else 0.01)
            if proc.poll() is not None:
                if is_mounted(path):
                    fusermount_unmount(path, lazy=True)
                raise PluginError(
                    f"volume {rec.name}: sshfs {rec.options['sshcmd']} failed: "
                    + explain(self._read_log(rec.name), rec.options)
                )
            self._kill(proc)
            fusermount_unmount(path, lazy=True)
            detail = explain(self._read_log(rec.name), rec.options)
            raise PluginError(
                f"volume {rec.name}: sshfs {rec.options['sshcmd']} did not mount within "
                f"{self.mount_timeout:g}s" + (f": {detail}" if detail else "")
            )
        self._procs[rec.name] = proc
        self._status[rec.name] = ("mounted", "")
        self.log(f"{rec.name}: mounted {rec.options['sshcmd']} in {time.monotonic() - began:.2f}s")

    def _read_log(self, name: str) -> str:
        try:
            return self._log_file(name).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def _unmount(self, name: str, path: Path) -> None:
        error = fusermount_unmount(path) if is_mounted(path) else None
        if error is not None:
            lazy = fusermount_unmount(path, lazy=True)
            self.log(
                f"{name}: fusermount -u failed ({error}); "
                + ("detached lazily" if lazy is None else f"lazy unmount failed too: {lazy}")
            )
        proc = self._procs.pop(name, None)
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                self._kill(proc)
        if is_mounted(path):
            self._status[name] = ("failed", f"still mounted after unmount: {error}")
        else:
            self._status[name] = ("unmounted", "")
            self.log(f"{name}: unmounted")

    # -- start-up ------------------------------------------------------------------------

    def reconcile(self) -> None:
        fixed: list[str] = []
        mounted = mount_points()
        for rec in list(self.volumes.values()):
            path = Path(rec.mountpoint)
            with self.lock(rec.name):
                if self.volumes.get(rec.name) is not rec:
                    continue
                live = str(path) in mounted
                dead = probe(path) if live else None
                if live and dead is not None:
                    fusermount_unmount(path, lazy=True)
                    fixed.append(f"{rec.name}: cleaned up a dead mount ({dead})")
                    live = False
                if self.mounts.total(rec.name) == 0:
                    if live:  # nobody uses it (killed between mounting and counting)
                        self._unmount(rec.name, path)
                        fixed.append(f"{rec.name}: unmounted (no container uses it)")
                    self._status[rec.name] = ("unmounted", "")
                    continue
                if live:
                    self._status[rec.name] = ("mounted", "")
                    continue
                fixed.append(f"{rec.name}: " + self._remount(rec))
        in_use = sum(1 for r in self.volumes.values() if self.mounts.total(r.name))
        self.log(
            f"reconciled {len(self.volumes)} volumes ({in_use} in use): "
            + ("; ".join(fixed) if fixed else "nothing to fix")
        )

    def declare_metrics(self, metrics: Metrics) -> None:
        super().declare_metrics(metrics)
        metrics.gauge_fn(
            "sshfs_mounts",
            "sshfs volumes by mount state (mounted, unmounted, failed)",
            self._by_state,
            ("state",),
        )
        self._reconnects = metrics.counter(
            "sshfs_remounts", "Dead sshfs mounts mounted again, by result", ("result",)
        )

    def _by_state(self) -> dict[tuple[str, ...], float]:
        counts: dict[tuple[str, ...], float] = {("mounted",): 0, ("unmounted",): 0, ("failed",): 0}
        for state, _ in list(self._status.values()):
            counts[(state,)] = counts.get((state,), 0) + 1
        return counts

    def health_reasons(self) -> list[str]:
        """A volume whose mount failed and could not be restored is a reason to look."""
        return [
            f"sshfs volume {name}: {why or state}"
            for name, (state, why) in list(self._status.items())
            if state == "failed"
        ]

    def _remount(self, rec: VolumeRecord) -> str:
        error = ""
        for attempt in range(self.remount_tries):
            if attempt:
                time.sleep(self.remount_backoff * 2 ** (attempt - 1))
            try:
                self._mount(rec)
                self._reconnects.inc(result="ok")
                return f"mounted again (try {attempt + 1})"
            except PluginError as exc:
                error = str(exc)
        self._status[rec.name] = ("failed", error)
        self._reconnects.inc(result="failed")
        return f"could not mount again after {self.remount_tries} tries: {error}"
