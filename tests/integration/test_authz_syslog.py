"""The authz audit log to a real rsyslog over UDP (``--syslog 127.0.0.1:PORT``), with a real
dockerd asking: one syslog line per decision, each the same JSON as the audit file's line, and
no secret from env values or labels in any of them."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockplug.testing.dockerd import Dockerd, unavailable_reason
from dockplug.testing.logsinks import Rsyslog, rsyslog_unavailable
from dockplug.testing.servers import SubprocessPlugin, wait_until

pytestmark = pytest.mark.dockerd

SAFE = Path(__file__).resolve().parents[2] / "examples" / "authz" / "safe"
SECRET = "hunter2-never-syslogged"


@dataclass
class Env:
    dockerd: Dockerd
    plugin: SubprocessPlugin
    rsyslog: Rsyslog
    audit: Path
    image: str

    def syslog_entries(self) -> list[dict[str, object]]:
        """The JSON of each line rsyslog wrote for the plugin's tag (app-name)."""
        tagged = [x for x in self.rsyslog.lines() if x.startswith("dockplug-authz ")]
        return [json.loads(x[x.index("{") :]) for x in tagged]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    reason = unavailable_reason() or rsyslog_unavailable()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("authz-syslog")
    shutil.copytree(SAFE, root / "policy")
    rsyslog = Rsyslog(root / "rsyslog", udp=True)
    (root / "rsyslog").mkdir()
    rsyslog.start()
    name = f"dpz-sl-{uuid.uuid4().hex[:8]}"
    audit = root / "audit.log"
    sock = Path(f"/run/docker/plugins/{name}.sock")
    plugin = SubprocessPlugin(
        ["serve", "authz", "--name", name, "--policy", str(root / "policy"),
         "--audit-log", str(audit), "--syslog", f"127.0.0.1:{rsyslog.port}"],
        wait_for=sock,
    ).start()  # fmt: skip
    daemon = Dockerd()
    try:
        daemon.start(extra_args=(f"--authorization-plugin={name}",))
        yield Env(daemon, plugin, rsyslog, audit, daemon.busybox_image())
    finally:
        daemon.stop()
        if plugin.proc is not None and plugin.proc.poll() is None:
            plugin.stop()
        sock.unlink(missing_ok=True)
        rsyslog.close()


def test_one_syslog_line_per_decision_and_no_secret(env: Env) -> None:
    res = env.dockerd.docker("create", "--network", "none", "-e", f"TOKEN={SECRET}",
                             "--label", f"l={SECRET}", env.image, "true")  # fmt: skip
    env.dockerd.docker("rm", res.stdout.strip())
    denied = env.dockerd.docker("run", "--rm", "--privileged", env.image, "true", check=False)
    assert "privileged containers are root on the host" in denied.stderr, denied.stderr
    asked = lambda: env.plugin.output.count("AuthZPlugin.AuthZReq")  # noqa: E731
    assert wait_until(lambda: len(env.syslog_entries()) >= asked(), 10), env.rsyslog.log()
    entries = env.syslog_entries()
    assert len(entries) == asked()  # one datagram, one line, per decision
    assert SECRET not in env.rsyslog.messages.read_text()
    # the same decisions as the audit file, in the same order
    wait_until(lambda: len(env.audit.read_text().splitlines()) >= len(entries), 10)
    filed = [json.loads(x) for x in env.audit.read_text().splitlines() if x]
    assert [e["id"] for e in entries] == [e["id"] for e in filed]
    deny = [e for e in entries if e.get("decision") == "deny"]
    assert deny and deny[-1]["policies"] == ["no-privileged"]
    assert any(e.get("action") == "container.create" and e["decision"] == "allow" for e in entries)
