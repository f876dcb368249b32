"""A throwaway OpenSSH server for testing remote-storage plugins (and benchmarking them).

An sshd on 127.0.0.1 (a free port) with a fresh host key and a user made for the occasion
(``useradd -m``, a random password set with ``chpasswd``, an authorized key); everything is
removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dockplug.testing.servers import free_port

TOOLS = ("sshd", "ssh-keygen", "sshfs", "fusermount", "useradd", "userdel", "chpasswd")
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")


def sshd_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a test user, an sshd and FUSE mounts)"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [t for t in TOOLS if shutil.which(t, path=path) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install openssh-server sshfs)"
    if not any(os.path.exists(p) for p in SFTP_SERVERS):
        return "no sftp-server (apt-get install openssh-server)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: FUSE is unavailable here"
    return None


@dataclass
class Sshd:
    """A running sshd and its test user."""

    port: int
    user: str
    password: str
    home: Path
    user_key: Path  # private key (0600, root-owned) authorized for ``user``
    host_key_pub: str  # "ssh-ed25519 AAAA..." of the server
    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        return (self.root / "sshd.log").read_text(errors="replace")

    def folder(self, name: str) -> Path:
        """A fresh folder in the user's home, owned by the user."""
        path = self.home / name
        path.mkdir()
        shutil.chown(path, self.user, self.user)
        return path

    def sshcmd(self, folder: Path) -> str:
        return f"{self.user}@127.0.0.1:{folder}"

    def start(self) -> None:
        config = self.root / "sshd_config"
        sftp = next(p for p in SFTP_SERVERS if os.path.exists(p))
        config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.root / 'host_key'}\n"
            f"PidFile {self.root / 'sshd.pid'}\n"
            "AuthorizedKeysFile .ssh/authorized_keys\n"
            "PasswordAuthentication yes\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin no\n"
            "UsePAM no\n"
            f"AllowUsers {self.user}\n"
            f"Subsystem sftp {sftp}\n"
        )
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        log = open(self.root / "sshd.log", "ab")  # noqa: SIM115 - lives with the process
        sshd = shutil.which("sshd", path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
        assert sshd is not None
        self.proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {self.log}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _run(*args: str, stdin: str | None = None) -> None:
    subprocess.run(args, input=stdin, capture_output=True, text=True, check=True)


@contextlib.contextmanager
def throwaway_sshd() -> Iterator[Sshd]:
    """Starts an sshd and its user; stops and removes both on exit. Needs root."""
    reason = sshd_unavailable()
    if reason:
        raise RuntimeError(reason)
    root = Path(tempfile.mkdtemp(prefix="dp-sshd-"))
    user = f"dpt{secrets.token_hex(4)}"
    password = "pw-" + secrets.token_urlsafe(18)
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key"))
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "user_key"))
    _run("useradd", "-m", "-s", "/bin/sh", user)
    server: Sshd | None = None
    try:
        _run("chpasswd", stdin=f"{user}:{password}\n")
        home = Path(f"/home/{user}")
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        shutil.copy(root / "user_key.pub", ssh_dir / "authorized_keys")
        for path in (ssh_dir, ssh_dir / "authorized_keys"):
            shutil.chown(path, user, user)
        host_key = " ".join((root / "host_key.pub").read_text().split()[:2])
        server = Sshd(
            port=free_port(),
            user=user,
            password=password,
            home=home,
            user_key=root / "user_key",
            host_key_pub=host_key,
            root=root,
        )
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
