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

import base64
import contextlib
import errno
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockplug.drivers.options import Option, OptionSet, parse_bool, parse_int, parse_mode
from dockplug.drivers.registry import setting_default
from dockplug.drivers.volume.base import StatefulVolumeDriver
from dockplug.drivers.volume.local import loopfs
from dockplug.errors import InvalidOption, PluginError
from dockplug.observe import add_secret, log_event, redact
from dockplug.state import VolumeRecord, open_volume_store
from dockplug.state.secrets import FILE_NAME, SecretStore, check_secret_name

DEFAULT_BASE_DIR: Path = setting_default("sshfs", "base_dir")
DEFAULT_STATE_DIR: Path = setting_default("sshfs", "state_dir")
DEFAULT_MOUNT_TIMEOUT: float = setting_default("sshfs", "mount_timeout")
INLINE_PREFIX = "volume/"  # secrets-store entries holding a volume's inline password

_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]+\]")
# characters a path may not hold where it goes into ssh's config (tokens, quoting, comments)
_CONFIG_UNSAFE = re.compile(r"[\s\"'%#\\,]|[\x00-\x1f\x7f]")
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


# -- option parsers ------------------------------------------------------------------------


def parse_sshcmd(text: str) -> str:
    """``[user@]host:[/path]`` -> the same, checked (no '-' host that ssh would read as a flag)."""
    user, at, rest = text.rpartition("@") if "@" in text.split(":", 1)[0] else ("", "", text)
    if rest.startswith("["):
        close = rest.find("]")
        host, colon, path = rest[: close + 1], rest[close + 1 : close + 2], rest[close + 2 :]
    else:
        host, colon, path = rest.partition(":")
    if not colon:
        raise ValueError("expected [user@]host:[/path], e.g. alice@files.example.com:/srv/data")
    if at and not _USER.fullmatch(user):
        raise ValueError(f"user {user[:40]!r} is not a plain user name")
    if not _HOST.fullmatch(host):
        raise ValueError(f"host {host[:80]!r} is not a host name or address")
    if any(c in path for c in "\0\n\r"):
        raise ValueError("the remote path cannot hold NUL or line breaks")
    return f"{user}{at}{host}:{path}"


def _host_path(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError("expected an absolute path on the plugin's host, e.g. /etc/dockplug/key")
    if ".." in text.split("/"):
        raise ValueError("'..' is not allowed in the path")
    if _CONFIG_UNSAFE.search(text):
        raise ValueError("the path may not hold spaces, quotes, '%', '#', ',' or backslashes")
    return os.path.normpath(text)


def parse_host_key(text: str) -> str:
    """A known_hosts line (``host TYPE BASE64 [comment]``) or a public key (``TYPE BASE64``)
    -> ``TYPE BASE64``. The host part is dropped: the key is pinned for this volume only."""
    words = text.split()
    if words and words[0].startswith("@"):
        raise ValueError("@cert-authority and @revoked lines are not supported")
    for i in range(min(2, len(words))):
        if words[i] in KEY_TYPES and i + 1 < len(words):
            kind, blob = words[i], words[i + 1]
            try:
                raw = base64.b64decode(blob, validate=True)
            except ValueError:
                raise ValueError("the key is not valid base64") from None
            size = int.from_bytes(raw[:4], "big")
            if raw[4 : 4 + size] != kind.encode():
                raise ValueError(f"the key data is not a {kind} key")
            return f"{kind} {blob}"
    raise ValueError(
        "expected a public host key such as 'ssh-ed25519 AAAA...' or a known_hosts line "
        "(ssh-keyscan prints them); types: " + ", ".join(sorted(KEY_TYPES))
    )


def _password(text: str) -> str:
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError("a password cannot hold line breaks or NUL")
    add_secret(text)
    return text


def _secret_name(text: str) -> str:
    try:
        return check_secret_name(text)
    except Exception as exc:
        raise ValueError(str(exc)) from None


def _yes_no(text: str) -> str:
    return "yes" if parse_bool(text) else "no"


_CIPHER = re.compile(r"[a-z0-9@.+-]+(,[a-z0-9@.+-]+)*")


def _ciphers(text: str) -> str:
    if not _CIPHER.fullmatch(text):
        raise ValueError("expected a comma-separated list of ssh cipher names")
    return text


def _idmap(text: str) -> str:
    if text not in ("none", "user"):
        raise ValueError("expected none or user")
    return text


SSHFS_OPTIONS = OptionSet(
    "sshfs",
    [
        Option("sshcmd", "remote folder, required: [user@]host:[/path]", parse_sshcmd,
               "alice@10.0.0.5:/srv/data"),
        Option("port", "ssh port (default 22)", parse_int(1, 65535), "2222"),
        Option("identity_file", "private key file on the plugin's host (no passphrase)",
               _host_path, "/etc/dockplug/ssh/id_ed25519"),
        Option("password_file", "file holding the password (read at each mount)", _host_path,
               "/etc/dockplug/ssh/pass"),
        Option("secret", "name of a password stored with `dockplug secret set NAME`",
               _secret_name, "files-pw"),
        Option("password", "inline password (only with --allow-inline-secrets; kept in the "
               "secrets store, never in the volume)", _password, secret=True),
        Option("host_key", "pin the server's public host key (or a known_hosts line)",
               parse_host_key, "'ssh-ed25519 AAAA...'"),
        Option("known_hosts_file", "known_hosts file on the plugin's host to check the server "
               "against", _host_path, "/etc/dockplug/ssh/known_hosts"),
        Option("insecure_ignore_host_key", "skip host key checking (unsafe; default: strict)",
               parse_bool, "true"),
        Option("allow_other", "let every user (not only root) use the mount", parse_bool,
               "true"),
        Option("uid", "owner user id the files appear with", parse_int(), "1000"),
        Option("gid", "owner group id the files appear with", parse_int(), "1000"),
        Option("umask", "permission mask applied to the files, octal", parse_mode, "0022"),
        Option("readonly", "mount read-only", parse_bool, "true"),
        Option("reconnect", "reconnect after the connection drops (default true)", parse_bool,
               "false"),
        Option("server_alive_interval", "seconds between keep-alives (default 15)",
               parse_int(1, 3600), "15"),
        Option("server_alive_count", "missed keep-alives before the link is dead (default 3)",
               parse_int(1, 100), "3"),
        Option("connect_timeout", "seconds to wait for the TCP connection (default 10)",
               parse_int(1, 300), "10"),
        Option("compression", "ssh compression yes/no", _yes_no, "yes"),
        Option("ciphers", "ssh ciphers to offer", _ciphers, "aes128-gcm@openssh.com"),
        Option("dir_cache", "sshfs directory cache yes/no", _yes_no, "no"),
        Option("kernel_cache", "keep file data in the kernel page cache", parse_bool, "true"),
        Option("follow_symlinks", "follow symlinks on the server", parse_bool, "true"),
        Option("transform_symlinks", "turn absolute symlinks into relative ones", parse_bool,
               "true"),
        Option("idmap", "user (default): remote user's files appear as root's; none: as "
               "they are", _idmap, "none"),
    ],
)  # fmt: skip

PASSWORD_SOURCES = ("password", "password_file", "secret")
HOST_KEY_SOURCES = ("host_key", "known_hosts_file", "insecure_ignore_host_key")
_FLAGS = ("allow_other", "kernel_cache", "follow_symlinks", "transform_symlinks")


def validate(opts: dict[str, Any]) -> None:
    """What single options cannot say: required and mutually exclusive options."""
    if "sshcmd" not in opts:
        raise InvalidOption(
            "option sshcmd is required: -o sshcmd=[user@]host:[/path] (-o help lists all)"
        )
    given = [k for k in PASSWORD_SOURCES if k in opts]
    if len(given) > 1:
        raise InvalidOption(f"options {' and '.join(given)} exclude each other: give one password")
    given = [k for k in HOST_KEY_SOURCES if opts.get(k) not in (None, False)]
    if len(given) > 1:
        raise InvalidOption(
            f"options {' and '.join(given)} exclude each other: pin a host key, name a "
            "known_hosts file, or (unsafe) ignore host keys"
        )


# -- the command line ----------------------------------------------------------------------


@dataclass
class MountPlan:
    """Everything one sshfs run needs; ``password`` goes to stdin, nowhere else."""

    argv: list[str]
    ssh_config: str
    password: str | None = None
    fuse_options: list[str] = field(default_factory=list)


def ssh_config(opts: dict[str, Any], known_hosts: Path | None, password: bool) -> str:
    """The whole ssh configuration of one mount (``ssh -F``: no user or system config)."""
    lines = [
        "Host *",
        f"Port {opts.get('port', 22)}",
        f"BatchMode {'no' if password else 'yes'}",
        f"PasswordAuthentication {'yes' if password else 'no'}",
        "KbdInteractiveAuthentication no",
        "NumberOfPasswordPrompts 1",
        f"ConnectTimeout {opts.get('connect_timeout', 10)}",
        "LogLevel ERROR",
        "CheckHostIP no",
        "UpdateHostKeys no",
        "ForwardAgent no",
        "ClearAllForwardings yes",
        "PermitLocalCommand no",
    ]
    if opts.get("insecure_ignore_host_key"):
        lines += ["StrictHostKeyChecking no", "UserKnownHostsFile /dev/null",
                  "GlobalKnownHostsFile /dev/null"]  # fmt: skip
    else:
        lines.append("StrictHostKeyChecking yes")
        pinned = known_hosts or opts.get("known_hosts_file")
        if pinned:
            lines += [f"UserKnownHostsFile {pinned}", "GlobalKnownHostsFile /dev/null"]
    if "identity_file" in opts:
        lines += [f"IdentityFile {opts['identity_file']}", "IdentitiesOnly yes"]
    elif password:
        lines.append("PubkeyAuthentication no")
    if opts.get("reconnect", True) or "server_alive_interval" in opts:
        lines.append(f"ServerAliveInterval {opts.get('server_alive_interval', 15)}")
        lines.append(f"ServerAliveCountMax {opts.get('server_alive_count', 3)}")
    if "compression" in opts:
        lines.append(f"Compression {opts['compression']}")
    if "ciphers" in opts:
        lines.append(f"Ciphers {opts['ciphers']}")
    return "\n".join(lines[:1] + [f"  {line}" for line in lines[1:]]) + "\n"


def fuse_options(opts: dict[str, Any], password: bool) -> list[str]:
    out: list[str] = []
    if opts.get("reconnect", True):
        out.append("reconnect")
    if opts.get("readonly"):
        out.append("ro")
    out += [flag for flag in _FLAGS if opts.get(flag)]
    for key in ("uid", "gid", "dir_cache"):
        if key in opts:
            out.append(f"{key}={opts[key]}")
    # user: the remote user's files appear as the mounting user's, and chown to that user
    # goes back as the remote user (dockerd chowns a volume's root on first use; with idmap
    # none that fails with "permission denied" unless the remote user is root)
    out.append(f"idmap={opts.get('idmap', 'user')}")
    if "umask" in opts:
        out.append(f"umask={opts['umask']:04o}")
    if password:
        out.append("password_stdin")
    return out


def plan_mount(
    opts: dict[str, Any],
    mountpoint: Path,
    config_file: Path,
    known_hosts: Path | None,
    password: str | None,
) -> MountPlan:
    """The sshfs command line (no secret on it) and the ssh config file's text."""
    fuse = fuse_options(opts, password is not None)
    argv = ["sshfs", "-f", "-F", str(config_file), "-o", ",".join(fuse),
            opts["sshcmd"], str(mountpoint)]  # fmt: skip
    return MountPlan(
        argv=argv,
        ssh_config=ssh_config(opts, known_hosts, password is not None),
        password=password,
        fuse_options=fuse,
    )


_NOISE = ("read: Connection reset by peer", "remote host has disconnected")


def explain(stderr: str, opts: dict[str, Any]) -> str:
    """sshfs/ssh stderr -> one line: what failed and what to try (secrets masked)."""
    lines = [ln.strip() for ln in stderr.splitlines()]
    useful = [ln for ln in lines if ln and not ln.startswith("@") and ln not in _NOISE]
    # the interesting lines are the last ones; a host key change prints a long banner first
    text = "; ".join(useful[-2:]) if useful else (lines[-1] if any(lines) else "")
    host = opts["sshcmd"].split(":", 1)[0]
    where = f"{host.rpartition('@')[2]} port {opts.get('port', 22)}"
    hint = ""
    if "Host key verification failed" in stderr or "host key" in stderr.lower():
        hint = (
            "the server's host key is not the pinned one or is unknown: check -o host_key / "
            "-o known_hosts_file (-o insecure_ignore_host_key=true skips the check, unsafe)"
        )
    elif "Permission denied" in stderr:
        hint = "authentication failed: check the user, key or password"
    elif any(s in stderr for s in ("Connection refused", "timed out", "No route", "resolve")):
        hint = f"no ssh server reachable at {where}"
    elif "No such file or directory" in stderr:
        hint = "the remote folder does not exist"
    message = text or "sshfs exited without a message"
    return redact(f"{message} ({hint})" if hint else message)


# -- FUSE mount helpers --------------------------------------------------------------------


def probe(path: Path, timeout: float = 5.0) -> str | None:
    """None if the mount answers; otherwise why not (a dead sshfs: ENOTCONN)."""
    result: list[BaseException | None] = []

    def stat() -> None:
        try:
            mounted = os.stat(path).st_dev != os.stat(path.parent).st_dev
            result.append(None if mounted else FileNotFoundError(f"{path} is not mounted"))
        except OSError as exc:
            result.append(exc)

    worker = threading.Thread(target=stat, daemon=True)
    worker.start()
    worker.join(timeout)
    if not result:
        return f"not responding within {timeout:g}s"
    exc = result[0]
    if exc is None:
        return None
    if isinstance(exc, OSError) and exc.errno == errno.ENOTCONN:
        return "transport endpoint is not connected (sshfs died)"
    return str(exc)


def is_mounted(path: Path) -> bool:
    """Whether ``path`` (already a real path) is a mount point, without touching it: a stat
    or realpath on a FUSE mount whose sshfs is still connecting blocks until it is done."""
    return str(path) in loopfs.mount_points()


def fusermount_unmount(path: Path, lazy: bool = False) -> str | None:
    """``fusermount -u`` (or ``-uz``); returns the error text, None on success."""
    args = ["fusermount", "-uz" if lazy else "-u", str(path)]
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if res.returncode == 0:
        return None
    return (res.stderr or res.stdout).strip() or f"exit {res.returncode}"


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
        mounted = loopfs.mount_points()
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

    def _remount(self, rec: VolumeRecord) -> str:
        error = ""
        for attempt in range(self.remount_tries):
            if attempt:
                time.sleep(self.remount_backoff * 2 ** (attempt - 1))
            try:
                self._mount(rec)
                return f"mounted again (try {attempt + 1})"
            except PluginError as exc:
                error = str(exc)
        self._status[rec.name] = ("failed", error)
        return f"could not mount again after {self.remount_tries} tries: {error}"
