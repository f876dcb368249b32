"""dockplug-logs as a managed (v2) plugin on a real dockerd: ``dockplug build logs``, create,
``docker plugin set state.source=`` (segments and the state database in a host folder),
enable, then ``docker run --log-driver REPO/NAME:TAG``, ``docker logs`` (all, ``--tail``,
``-f``) and a sink on the host's 127.0.0.1 (the plugin has the host's network).

dockerd makes a managed log plugin's FIFOs inside the plugin's rootfs, at
``/run/docker/logging/<id>`` (daemon/logger/plugin.go scopes the path to the plugin), and
names that path in StartLogging. One module-scoped plugin: the build (about 45 s with the
debootstrap base cached) and the upload happen once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockplug.testing.dockerd import Dockerd
from dockplug.testing.logsinks import Rsyslog, rsyslog_unavailable
from dockplug.testing.managed import EnabledPlugin, enabled_builtin
from dockplug.testing.servers import wait_until

pytestmark = [pytest.mark.dockerd, pytest.mark.root]

LINES = 20_000


@pytest.fixture(scope="module")
def managed(dockerd: Dockerd) -> Iterator[EnabledPlugin]:
    """The logs driver built, created, its state folder set to a temporary one, enabled."""

    def remove_containers(plugin: EnabledPlugin) -> None:
        ids = dockerd.docker("ps", "-aq", "--filter", "name=dptl-").stdout.split()
        if ids:
            dockerd.docker("rm", "-f", *ids, check=False)

    with enabled_builtin(dockerd, "logs", before_remove=remove_containers) as plugin:
        yield plugin


def _name() -> str:
    return f"dptl-{uuid.uuid4().hex[:8]}"


@pytest.mark.timeout(600)
def test_managed_logs_docker_run_and_docker_logs(
    dockerd: Dockerd, managed: EnabledPlugin, busybox_image: str
) -> None:
    settings = json.loads(dockerd.docker("plugin", "inspect", managed.name).stdout)[0]
    assert settings["Config"]["Interface"]["Types"] == ["docker.logdriver/1.0"]
    assert settings["Enabled"] is True
    name = _name()
    dockerd.docker("run", "-d", "--name", name, "--log-driver", managed.name, busybox_image,
                   "sh", "-c", f"seq 1 {LINES}; echo err >&2")  # fmt: skip
    dockerd.docker("wait", name, timeout=120)
    logs = dockerd.docker("logs", name)
    assert logs.stdout.splitlines() == [str(i) for i in range(1, LINES + 1)]
    assert logs.stderr == "err\n"
    # --tail counts entries of both streams, in the order they came: the stderr line comes
    # from its own pipe, so it is the last entry or lands among the last stdout lines
    tail = dockerd.docker("logs", "--tail", "2", name)
    if tail.stderr:
        assert (tail.stdout, tail.stderr) == (f"{LINES}\n", "err\n")
    else:
        assert tail.stdout == f"{LINES - 1}\n{LINES}\n"
    # the segments and the state database are in the host folder behind /mnt/state
    cid = dockerd.docker("inspect", "-f", "{{.Id}}", name).stdout.strip()
    assert (managed.state / "state.db").exists()
    assert (managed.state / "containers" / cid / "000000000001.log").stat().st_size > LINES * 8
    # dockplug logs status on the host reads the plugin's counters there (saved each second)
    assert wait_until(lambda: _entries(managed.state, cid) == LINES + 1, 10)
    dockerd.docker("rm", name)


def _entries(state: Path, cid: str) -> int:
    res = subprocess.run([sys.executable, "-m", "dockplug", "logs", "status", "--json",
                          "--state-dir", str(state)], capture_output=True, text=True,
                         check=True)  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(res.stdout)["containers"]
    return next(int(c["entries"]) for c in rows if cid.startswith(str(c["container"])))


@pytest.mark.timeout(300)
def test_managed_logs_follow_and_a_sink_on_the_host(
    dockerd: Dockerd, managed: EnabledPlugin, busybox_image: str
) -> None:
    """``--log-opt forward=`` to an rsyslog on the host's 127.0.0.1, and ``docker logs -f``
    while the container writes, ending when it stops."""
    reason = rsyslog_unavailable()
    if reason:
        pytest.skip(reason)
    rsyslog = Rsyslog().start()
    try:
        name = _name()
        dockerd.docker("run", "-d", "--name", name, "--log-driver", managed.name,
                       "--log-opt", f"forward={rsyslog.url}", busybox_image, "sh", "-c",
                       "for i in $(seq 1 30); do echo tick $i; sleep 0.1; done")  # fmt: skip
        follow = dockerd.docker("logs", "-f", name, timeout=60)
        assert follow.stdout.splitlines() == [f"tick {i}" for i in range(1, 31)]

        def received() -> list[str]:
            return [line.rsplit("] ", 1)[-1] for line in rsyslog.lines()
                    if line.startswith(f"{name} ")]  # fmt: skip

        assert wait_until(lambda: len(received()) >= 30, 30, 0.2), received()
        assert received() == [f"tick {i}" for i in range(1, 31)]
        dockerd.docker("rm", name)
    finally:
        rsyslog.close()
