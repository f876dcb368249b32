"""dockplug-logs driven by a real dockerd, forwarding to Debian's rsyslog and
systemd-journal-remote on 127.0.0.1: what ``docker run --log-driver`` users get."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockplug.testing.dockerd import Dockerd
from dockplug.testing.logsinks import (
    JournalRemote,
    Rsyslog,
    journal_remote_unavailable,
    rsyslog_unavailable,
)
from dockplug.testing.servers import SubprocessPlugin, free_port, wait_until

pytestmark = pytest.mark.dockerd

LINES = 200_000


class LogsPlugin:
    """``dockplug serve logs`` as a real process: restartable, killable."""

    def __init__(self, name: str, root: Path, forward: list[str]) -> None:
        self.name = name
        self.state = root / "state"
        self.socket = Path(f"/run/docker/plugins/{name}.sock")
        self.forward = forward
        self.metrics = free_port()
        self.proc: SubprocessPlugin | None = None

    def start(self) -> LogsPlugin:
        args = ["serve", "logs", "--name", self.name, "--state-dir", str(self.state),
                "--flush-interval", "0.1", "--retry-max", "0.5",
                "--metrics", f"127.0.0.1:{self.metrics}"]  # fmt: skip
        for url in self.forward:
            args += ["--forward", url]
        self.proc = SubprocessPlugin(args, wait_for=self.socket).start()
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.stop(signal.SIGKILL)

    def gauge(self, name: str) -> float:
        """One of the plugin's own metrics (``dockplug_log_NAME``)."""
        url = f"http://127.0.0.1:{self.metrics}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith(f"dockplug_log_{name} "):
                return float(line.split()[1])
        raise AssertionError(f"no dockplug_log_{name} in {url}")

    def reading(self, folder: Path) -> int:
        """The plugin's descriptors open read-only on files in FOLDER (cursors: ReadLogs' and
        the sinks'; the FIFO reader's segment is open for writing)."""
        assert self.proc is not None
        count = 0
        for fd in Path(f"/proc/{self.proc.pid}/fd").iterdir():
            try:
                if not os.readlink(fd).startswith(f"{folder}/"):
                    continue
                info = Path(f"/proc/{self.proc.pid}/fdinfo/{fd.name}").read_text()
            except FileNotFoundError:
                continue
            flags = int(info.split("flags:")[1].split()[0], 8)
            count += flags & os.O_ACCMODE == os.O_RDONLY
        return count

    def stop(self) -> None:
        if self.proc is not None and self.proc.proc is not None and self.proc.proc.poll() is None:
            self.proc.stop()


@pytest.fixture(scope="module")
def sinks() -> Iterator[tuple[Rsyslog, JournalRemote]]:
    reason = rsyslog_unavailable() or journal_remote_unavailable()
    if reason:
        pytest.skip(reason)
    rsyslog, journal = Rsyslog().start(), JournalRemote().start()
    yield rsyslog, journal
    rsyslog.close()
    journal.close()


@pytest.fixture(scope="module")
def logs(
    dockerd: Dockerd, sinks: tuple[Rsyslog, JournalRemote], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LogsPlugin]:
    """One plugin for the module: dockerd remembers every legacy plugin it activated."""
    rsyslog, _ = sinks
    plugin = LogsPlugin(f"dpl-{uuid.uuid4().hex[:8]}", tmp_path_factory.mktemp("logs"),
                        [rsyslog.url]).start()  # fmt: skip
    yield plugin
    out = subprocess.run(["docker", "ps", "-aq", "--filter", "name=dplt-"], env=dockerd.env,
                         capture_output=True, text=True).stdout.split()  # fmt: skip
    if out:
        dockerd.docker("rm", "-f", *out, check=False)
    plugin.stop()
    plugin.socket.unlink(missing_ok=True)


def _name() -> str:
    return f"dplt-{uuid.uuid4().hex[:8]}"


def _run(dockerd: Dockerd, plugin: LogsPlugin, image: str, name: str, script: str,
         *opts: str) -> None:  # fmt: skip
    dockerd.docker("run", "-d", "--name", name, "--log-driver", plugin.name, *opts, image,
                   "sh", "-c", script)  # fmt: skip


def _syslog(rsyslog: Rsyslog, name: str) -> list[str]:
    """The messages of one container (APP-NAME is its name), without the header fields."""
    out = []
    for line in rsyslog.lines():
        app, _, rest = line.partition(" ")
        if app == name:
            out.append(rest.split("] ", 1)[1] if "] " in rest else rest)
    return out


def test_200k_lines_reach_docker_logs_and_the_sink(
    dockerd: Dockerd, logs: LogsPlugin, sinks: tuple[Rsyslog, JournalRemote], busybox_image: str
) -> None:
    """rsyslog is the plugin's --forward sink (every container)."""
    rsyslog, _ = sinks
    name = _name()
    began = time.monotonic()
    _run(dockerd, logs, busybox_image, name, f"seq 1 {LINES}")
    dockerd.docker("wait", name, timeout=120)
    wrote = time.monotonic() - began
    want = [str(i) for i in range(1, LINES + 1)]
    out = dockerd.docker("logs", name).stdout.splitlines()
    assert out == want, f"{len(out)} lines back; first differing: {_first_diff(out, want)}"
    assert wait_until(lambda: len(_syslog(rsyslog, name)) >= LINES, 60, 0.2)
    # forwarding is at least once: after a failed send what the receiver may not have is sent
    # again (since the syslog sink reports the frames it handed over whole, only the frame cut
    # by the failure); every line must arrive, and no more than a few batches again
    got = _syslog(rsyslog, name)
    assert sorted(set(got), key=int) == want, f"{len(set(got))} distinct lines of {LINES}"
    assert logs.proc is not None
    failures = [ln for ln in logs.proc.output.splitlines() if ln.startswith("sink ")]
    assert len(got) - len(set(got)) <= 5_000, (len(got) - len(set(got)), failures)
    print(f"{len(got) - len(set(got))} lines sent twice; failed sends: {failures}")
    assert wrote < 60, f"200,000 lines took {wrote:.1f}s to write"


def _journal(journal: JournalRemote, name: str) -> list[str]:
    return [str(e["MESSAGE"]) for e in journal.entries(f"CONTAINER_NAME={name}", fields="MESSAGE")]


def _first_diff(got: list[str], want: list[str]) -> str:
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            return f"line {i}: {g[:40]!r} != {w[:40]!r}"
    return f"lengths {len(got)} vs {len(want)}"


def test_a_100k_line_arrives_whole_at_both_sinks(
    dockerd: Dockerd, logs: LogsPlugin, sinks: tuple[Rsyslog, JournalRemote], busybox_image: str
) -> None:
    """journal-remote is this container's own sink (--log-opt forward=), besides rsyslog;
    fields: the named label and env key, never the other env values."""
    rsyslog, journal = sinks
    name = _name()
    _run(dockerd, logs, busybox_image, name,
         "head -c 102400 /dev/zero | tr '\\0' x; echo; echo after",
         "--log-opt", f"forward={journal.url}", "--label", "app=shop", "--label", "x=no",
         "--log-opt", "labels=app", "--log-opt", "env=SERVICE",
         "-e", "SERVICE=cart", "-e", "PASSWORD=hunter2")  # fmt: skip
    dockerd.docker("wait", name)
    assert dockerd.docker("logs", name).stdout == "x" * 102400 + "\nafter\n"
    assert wait_until(lambda: len(_syslog(rsyslog, name)) >= 2, 30, 0.1)
    assert _syslog(rsyslog, name) == ["x" * 102400, "after"]
    assert wait_until(lambda: len(_journal(journal, name)) >= 2, 30, 0.2)
    assert _journal(journal, name) == ["x" * 102400, "after"]
    entry = journal.entries(f"CONTAINER_NAME={name}")[-1]
    assert entry["CONTAINER_LABEL_APP"] == "shop" and entry["CONTAINER_ENV_SERVICE"] == "cart"
    assert "hunter2" not in json.dumps(entry) and "CONTAINER_LABEL_X" not in entry
    assert "hunter2" not in (logs.state / "state.db").read_bytes().decode("latin-1")


def _stop_time(dockerd: Dockerd, name: str) -> float:
    began = time.monotonic()
    dockerd.docker("stop", "-t", "1", name)
    return time.monotonic() - began


WRITER = "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo line $i; " \
         "[ $((i % 200)) = 0 ] && sleep 0.01; done"  # fmt: skip


def test_sink_down_never_blocks_and_the_backlog_arrives(
    dockerd: Dockerd, logs: LogsPlugin, sinks: tuple[Rsyslog, JournalRemote], busybox_image: str
) -> None:
    rsyslog, _ = sinks
    peer = _name()
    dockerd.docker("run", "-d", "--name", peer, "--log-driver", "json-file", busybox_image,
                   "sh", "-c", WRITER)  # fmt: skip
    time.sleep(1.0)
    baseline = _stop_time(dockerd, peer)
    rsyslog.stop()
    try:
        name = _name()
        _run(dockerd, logs, busybox_image, name, WRITER)
        time.sleep(0.5)
        first = len(dockerd.docker("logs", name).stdout.splitlines())
        time.sleep(1.0)
        second = len(dockerd.docker("logs", name).stdout.splitlines())
        assert second > first > 0, "the container stopped writing while the sink was down"
        took = _stop_time(dockerd, name)
        assert took <= baseline + 1.0, f"docker stop took {took:.2f}s, json-file {baseline:.2f}s"
    finally:
        rsyslog.start()
    lines = dockerd.docker("logs", name).stdout.splitlines()
    assert wait_until(lambda: len(set(_syslog(rsyslog, name))) >= len(lines), 30, 0.2), (
        f"{len(set(_syslog(rsyslog, name)))} of {len(lines)} lines reached rsyslog"
    )
    assert sorted(set(_syslog(rsyslog, name)), key=lambda s: int(s.split()[1])) == lines


def test_kill_9_mid_stream_then_logging_goes_on(
    dockerd: Dockerd, logs: LogsPlugin, sinks: tuple[Rsyslog, JournalRemote], busybox_image: str
) -> None:
    rsyslog, _ = sinks
    name = _name()
    _run(dockerd, logs, busybox_image, name, WRITER)
    time.sleep(1.0)
    logs.kill()
    time.sleep(0.5)
    logs.start()
    time.sleep(1.5)
    during = dockerd.docker("logs", "--tail", "1", name).stdout.split()
    dockerd.docker("stop", "-t", "1", name)
    lines = dockerd.docker("logs", name).stdout.splitlines()
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers == sorted(numbers), "entries out of order after the restart"
    assert during and int(during[1]) > 0
    assert numbers[-1] > int(during[1]), "nothing was logged after the restart"
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(numbers) if b > a + 1)
    assert gaps < 5000, f"{gaps} lines lost around the kill (only what was read but unwritten)"
    assert wait_until(lambda: len(set(_syslog(rsyslog, name))) >= len(lines), 30, 0.2)
    sent = _syslog(rsyslog, name)
    assert len(sent) - len(set(sent)) < 2000, "more than one batch forwarded twice"


def test_rotation_keeps_max_file_segments(
    dockerd: Dockerd, logs: LogsPlugin, busybox_image: str
) -> None:
    name = _name()
    _run(dockerd, logs, busybox_image, name, "seq 1 100000",
         "--log-opt", "max-size=100k", "--log-opt", "max-file=3")  # fmt: skip
    dockerd.docker("wait", name)
    cid = dockerd.docker("inspect", "-f", "{{.Id}}", name).stdout.strip()
    folder = logs.state / "containers" / cid

    def settled() -> list[str]:
        """The segments once the gzip thread is done: for an instant a segment is both its
        .log and its .log.gz (renamed, not yet unlinked) and readers take either."""
        return sorted(p.name for p in folder.iterdir())

    def done() -> bool:
        files = settled()
        return len(files) == 3 and sum(f.endswith(".gz") for f in files) == 2

    assert wait_until(done, 15), settled()
    out = dockerd.docker("logs", name).stdout.splitlines()
    assert out[-1] == "100000" and 1000 < len(out) < 100000
    assert out == [str(i) for i in range(int(out[0]), 100001)]
    assert dockerd.docker("logs", "--tail", "3", name).stdout.split() == ["99998", "99999",
                                                                          "100000"]  # fmt: skip


def test_docker_logs_follow_killed_frees_the_follower(
    dockerd: Dockerd, logs: LogsPlugin, busybox_image: str
) -> None:
    """``docker logs -f`` on a quiet container, then killed: dockerd closes the ReadLogs
    connection once it decodes the plugin's next (empty) entry, and the plugin's follower
    ends and closes its segment. The empty entries never show in ``docker logs -f``."""
    name = _name()
    _run(dockerd, logs, busybox_image, name, "echo one; echo two; exec sleep 300")
    cid = dockerd.docker("inspect", "-f", "{{.Id}}", name).stdout.strip()
    folder = logs.state / "containers" / cid
    follower = subprocess.Popen(["docker", "logs", "-f", "--timestamps", name], env=dockerd.env,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert follower.stdout is not None
        assert [follower.stdout.readline().split()[1] for _ in range(2)] == ["one", "two"]
        assert wait_until(lambda: logs.gauge("followers") == 1, 10), logs.gauge("followers")
        following = logs.reading(folder)  # the follower's cursor, and the sink's
        time.sleep(2.5)  # idle: two empty entries at least went by
    finally:
        follower.kill()
        follower.wait()
    assert wait_until(lambda: logs.gauge("followers") == 0, 10), logs.gauge("followers")
    assert logs.reading(folder) == following - 1 and logs.gauge("readers") == 0
    # followed for 3.5 s: exactly the two lines, nothing for the empty entries
    with pytest.raises(subprocess.TimeoutExpired) as waited:
        subprocess.run(["docker", "logs", "-f", name], env=dockerd.env, capture_output=True,
                       timeout=3.5)  # fmt: skip
    assert waited.value.stdout == b"one\ntwo\n"
    assert wait_until(lambda: logs.gauge("followers") == 0, 10)
    dockerd.docker("rm", "-f", name)


def test_a_bad_log_opt_is_refused_with_the_valid_ones(
    dockerd: Dockerd, logs: LogsPlugin, busybox_image: str
) -> None:
    res = dockerd.docker("run", "--rm", "--log-driver", logs.name, "--log-opt", "max-sise=1m",
                         busybox_image, "true", check=False)  # fmt: skip
    assert res.returncode != 0
    assert "unknown option 'max-sise'" in res.stderr and "max-size" in res.stderr, res.stderr


def test_status_and_conformance(dockerd: Dockerd, logs: LogsPlugin, conformance: object) -> None:
    res = subprocess.run([sys.executable, "-m", "dockplug", "logs", "status", "--json",
                          "--state-dir", str(logs.state)], capture_output=True, text=True,
                         check=True)  # fmt: skip
    status = json.loads(res.stdout)
    assert any(c["entries"] >= LINES for c in status["containers"]), status["containers"]
    assert status["sinks"] and all("lag" in s for s in status["sinks"])
    report = conformance(str(logs.socket), kind="log")  # type: ignore[operator]
    assert report.ok, report.failures()
