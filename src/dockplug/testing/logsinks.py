"""Real log backends on 127.0.0.1 for testing log drivers: Debian's rsyslog (TCP, optionally
TLS through rsyslog-gnutls, RFC 5424 octet-counted) and systemd-journal-remote (HTTP
``/upload``), each on a free port, writing what it received to files a test reads back."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from dockplug.testing.pki import Certificates
from dockplug.testing.servers import free_port, wait_until

RSYSLOGD = "/usr/sbin/rsyslogd"
JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"


def rsyslog_unavailable(tls: bool = False) -> str | None:
    if not os.path.exists(RSYSLOGD):
        return "rsyslog not installed (apt-get install rsyslog)"
    if tls and not glob.glob("/usr/lib/*/rsyslog/lmnsd_gtls.so"):
        return "rsyslog-gnutls not installed (apt-get install rsyslog-gnutls)"
    return None


def journal_remote_unavailable() -> str | None:
    if not os.path.exists(JOURNAL_REMOTE):
        return "systemd-journal-remote not installed (apt-get install systemd-journal-remote)"
    if shutil.which("journalctl") is None:
        return "journalctl not installed (apt-get install systemd)"
    return None


def _listening(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def _bound_udp(port: int) -> bool:
    """A UDP socket bound to PORT on 127.0.0.1 (nothing to connect to: /proc/net/udp shows it)."""
    with contextlib.suppress(OSError):
        return f"0100007F:{port:04X}" in Path("/proc/net/udp").read_text()
    return False


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (the sink writes out what it received), SIGKILL after 15 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Rsyslog:
    """rsyslogd in the foreground with its own config; every message received is one line of
    ``messages`` as ``APP-NAME MSGID [SD] MSG`` (a line holding newlines spans several)."""

    def __init__(self, root: Path | None = None, certs: Certificates | None = None,
                 max_message: str = "256k", udp: bool = False) -> None:  # fmt: skip
        self.root = root or Path(tempfile.mkdtemp(prefix="dp-rsyslog-"))
        #: listen on UDP (imudp, one datagram per message) instead of TCP
        self.udp = udp
        self.port = free_port()
        self.certs = certs
        self.max_message = max_message
        self.messages = self.root / "messages"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "udp" if self.udp else "tls" if self.certs else "tcp"
        return f"syslog+{scheme}://127.0.0.1:{self.port}"

    def _config(self) -> str:
        tls_global, tls_module = "", ""
        if self.certs is not None:
            tls_global = (
                f'global(DefaultNetstreamDriver="gtls" '
                f'DefaultNetstreamDriverCAFile="{self.certs.ca}" '
                f'DefaultNetstreamDriverCertFile="{self.certs.server_cert}" '
                f'DefaultNetstreamDriverKeyFile="{self.certs.server_key}")\n'
            )
            tls_module = (
                ' StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon"'
            )
        return (
            f'global(maxMessageSize="{self.max_message}" workDirectory="{self.root}")\n'
            + tls_global
            + (
                'module(load="imudp")\n'
                f'input(type="imudp" address="127.0.0.1" port="{self.port}")\n'
                if self.udp
                else f'module(load="imtcp" MaxSessions="200"{tls_module})\n'
                f'input(type="imtcp" address="127.0.0.1" port="{self.port}")\n'
            )
            + 'template(name="line" type="string" '
            'string="%app-name% %msgid% %structured-data% %msg%\\n")\n'
            f'action(type="omfile" file="{self.messages}" template="line")\n'
        )

    def start(self, timeout: float = 15.0) -> Rsyslog:
        conf = self.root / "rsyslog.conf"
        conf.write_text(self._config())
        log = open(self.root / "rsyslogd.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.root / "rsyslogd.pid")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        listening = _bound_udp if self.udp else _listening
        if not wait_until(lambda: listening(self.port) or proc.poll() is not None,
                          timeout, 0.05) or proc.poll() is not None:  # fmt: skip
            raise RuntimeError(f"rsyslogd did not listen on {self.port}: {self.log()}")
        return self

    def log(self) -> str:
        path = self.root / "rsyslogd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM: rsyslogd writes out what it received and closes its connections."""
        _terminate(self.proc)
        self.proc = None

    def lines(self) -> list[str]:
        if not self.messages.exists():
            return []
        return self.messages.read_text(errors="replace").splitlines()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class JournalRemote:
    """systemd-journal-remote listening for HTTP uploads on 127.0.0.1; ``entries()`` reads its
    journal file back with journalctl."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="dp-journal-"))
        self.port = free_port()
        self.output = self.root / "remote.journal"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"journal-remote+http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> JournalRemote:
        log = open(self.root / "journal-remote.log", "ab")  # noqa: SIM115 - lives with it
        self.proc = proc = subprocess.Popen(
            [JOURNAL_REMOTE, f"--listen-http=127.0.0.1:{self.port}", f"--output={self.output}",
             "--split-mode=none"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        if not wait_until(lambda: _listening(self.port) or proc.poll() is not None,
                          timeout, 0.05) or proc.poll() is not None:  # fmt: skip
            raise RuntimeError(f"journal-remote did not listen: {self.log()}")
        return self

    def log(self) -> str:
        path = self.root / "journal-remote.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def entries(self, *matches: str, fields: str = "") -> list[dict[str, object]]:
        """Entries received, optionally only those matching FIELD=VALUE (journalctl's
        matches) and with only FIELDS (comma-separated) shown."""
        files = sorted(self.root.glob("*.journal"))
        if not files:
            return []
        args = ["journalctl", "--no-pager", "-o", "json", "--all"]
        if fields:
            args.append(f"--output-fields={fields}")
        for f in files:
            args.append(f"--file={f}")
        res = subprocess.run([*args, *matches], capture_output=True, text=True, timeout=60)
        return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def wait_for_lines(count: int, read: object, timeout: float) -> bool:
    """Polls READ() (a callable returning a list) until it holds COUNT items."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(read()) >= count:  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False
