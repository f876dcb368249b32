"""An authz plugin served through the units ``dockplug systemd`` writes, in front of a real
dockerd (``--authorization-plugin=NAME``): it answers dockerd's AuthZPlugin.AuthZReq on the
socket it was handed, and after a ``kill -9`` the next API call starts it again on the same
socket, the call waiting in the socket's queue instead of failing.

There is no running systemd here (no PID 1 systemd, and booting one would touch the shared
/run), so ``SocketUnit`` plays the part of NAME.socket as systemd does it: it binds
ListenStream and holds the listening socket for as long as the unit lives, and whenever a
connection waits and no service runs it starts the service's ExecStart with the socket as fd 3
(``LISTEN_FDS=1``, ``LISTEN_PID`` its pid). The command is the generated unit's, unchanged.
"""

from __future__ import annotations

import configparser
import json
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockplug.cli.systemd import units
from dockplug.testing.dockerd import Dockerd, unavailable_reason
from dockplug.testing.servers import wait_until

pytestmark = pytest.mark.dockerd

SAFE = Path(__file__).resolve().parents[2] / "examples" / "authz" / "safe"
DENIED = "authorization denied by plugin"

# fd 3 in the service: move the held socket there, then exec the unit's command (bash: dash
# reads only one-digit descriptors in redirections)
_EXEC = (
    '[ "$DP_FD" = 3 ] || eval "exec 3<&$DP_FD $DP_FD<&-"; '
    'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$@"'
)


def _section(text: str, section: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser[section]


class SocketUnit:
    """systemd's socket unit for one service, for as long as a test needs it."""

    def __init__(self, listen: str, argv: list[str], log: Path) -> None:
        self.listen, self.argv, self.log = listen, argv, log
        self.starts: list[subprocess.Popen[bytes]] = []
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="socket-unit", daemon=True)

    @property
    def service(self) -> subprocess.Popen[bytes] | None:
        return self.starts[-1] if self.starts else None

    def start(self) -> SocketUnit:
        Path(self.listen).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        Path(self.listen).unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.listen)
        os.chmod(self.listen, 0o660)  # SocketMode=0660
        self._sock.listen(128)
        self._thread.start()
        return self

    def _running(self) -> bool:
        return self.service is not None and self.service.poll() is None

    def _run(self) -> None:
        """Triggers the service on a waiting connection (POLLIN on the listening socket), as
        systemd does while the service is not running."""
        assert self._sock is not None
        while not self._stop.is_set():
            if self._running():
                self._stop.wait(0.02)
                continue
            readable, _, _ = select.select([self._sock], [], [], 0.05)
            if readable and not self._stop.is_set():
                self._spawn()

    def _spawn(self) -> None:
        assert self._sock is not None
        fd = self._sock.fileno()
        out = open(self.log, "ab")  # noqa: SIM115 - lives with the process
        self.starts.append(subprocess.Popen(
            ["bash", "-c", _EXEC, "bash", *self.argv], pass_fds=(fd,),
            env={**os.environ, "DP_FD": str(fd)}, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        ))  # fmt: skip
        out.close()

    def stop(self) -> None:
        """systemctl stop NAME.socket NAME.service: SIGTERM, then RemoveOnStop."""
        self._stop.set()
        self._thread.join(5)
        for proc in self.starts:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._sock is not None:
            self._sock.close()
        Path(self.listen).unlink(missing_ok=True)


@dataclass
class Env:
    dockerd: Dockerd
    unit: SocketUnit
    name: str
    audit: Path
    log: Path
    image: str

    def audit_lines(self) -> list[dict[str, object]]:
        if not self.audit.exists():
            return []
        return [json.loads(x) for x in self.audit.read_text().splitlines() if x]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("the socket lives in /run/docker/plugins (root)")
    root = tmp_path_factory.mktemp("authz-sd")
    shutil.copytree(SAFE, root / "policy")
    name = f"dpz-sd-{uuid.uuid4().hex[:8]}"
    audit, log = root / "audit.log", root / "plugin.log"
    texts = units(name, ["serve", "authz", "--policy", str(root / "policy"),
                         "--audit-log", str(audit)])  # fmt: skip
    listen = _section(texts[f"{name}.socket"], "Socket")["ListenStream"]
    argv = shlex.split(_section(texts[f"{name}.service"], "Service")["ExecStart"])
    unit = SocketUnit(listen, argv, log).start()
    daemon = Dockerd()
    try:
        # the socket is there before dockerd starts (Before=docker.service): no plugin runs yet
        daemon.start(extra_args=(f"--authorization-plugin={name}",))
        image = daemon.busybox_image()
        yield Env(daemon, unit, name, audit, log, image)
    finally:
        daemon.stop()
        unit.stop()
        shutil.rmtree(root, ignore_errors=True)


def _reqs(env: Env) -> int:
    return env.log.read_text(errors="replace").count("AuthZPlugin.AuthZReq")


def test_the_first_call_starts_the_plugin_and_it_answers_dockerd(env: Env) -> None:
    assert len(env.unit.starts) == 1, "dockerd's first call should have started the plugin"
    res = env.dockerd.docker("run", "--rm", "--privileged", env.image, "true", check=False)
    assert res.returncode != 0 and f"{DENIED} {env.name}: " in res.stderr, res.stderr
    assert "privileged containers are root on the host" in res.stderr
    ok = env.dockerd.docker("run", "--rm", "--network", "none", env.image, "echo", "ok")
    assert ok.stdout.strip() == "ok"
    assert _reqs(env) > 0  # through the socket, as dockerd's plugin protocol


def test_after_a_kill_the_next_call_starts_it_again(env: Env) -> None:
    first = env.unit.service
    assert first is not None and first.poll() is None
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    # nothing runs now; the listening socket stays, so dockerd's next call waits in its queue
    res = env.dockerd.docker("ps", timeout=90)
    assert res.returncode == 0, res.stderr
    assert len(env.unit.starts) == 2 and env.unit._running(), "the call did not restart it"
    again = env.dockerd.docker("run", "--rm", "--privileged", env.image, "true", check=False)
    assert f"{DENIED} {env.name}: " in again.stderr, again.stderr
    # the new process judged it: its decisions are in the same audit log, one per request
    assert wait_until(lambda: len(env.audit_lines()) >= _reqs(env), 10)
    assert env.audit_lines()[-1]["decision"] == "deny"
