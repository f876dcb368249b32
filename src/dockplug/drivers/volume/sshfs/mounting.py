"""One sshfs mount: the command line and ssh config it runs with, what its stderr means, and
how to tell whether it is alive without hanging on it."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockplug.drivers.volume.mountinfo import mount_points
from dockplug.drivers.volume.sshfs.options import FLAGS
from dockplug.observe import redact

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
    out += [flag for flag in FLAGS if opts.get(flag)]
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
    return str(path) in mount_points()


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
