"""Metrics, health and JSON log lines of every dockplug plugin (the SDK's side listener)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from tests.unit.stubs import FixedVolumes

from dockplug.cli.main import cli
from dockplug.errors import ConfigError
from dockplug.observe.metrics import Metrics
from dockplug.server.reqlog import RequestLog
from dockplug.server.runner import ServeOptions
from dockplug.server.side import parse_address
from dockplug.testing.servers import ThreadedPlugin, free_port


class CountingVolumes(FixedVolumes):
    """Declares one metric of its own and reports whatever ``reasons`` holds."""

    reasons: list[str]

    def __init__(self) -> None:
        self.reasons = []

    def declare_metrics(self, metrics: Metrics) -> None:
        self.created = metrics.counter("creates", "Creates answered")
        metrics.gauge_fn("answer", "A gauge read at scrape time", lambda: 42)

    def create(self, req: Any) -> None:
        self.created.inc()

    def health_reasons(self) -> Sequence[str]:
        return list(self.reasons)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def served(short_tmp: Path) -> Any:
    started: list[ThreadedPlugin] = []

    def start(driver: Any, **kw: Any) -> tuple[ThreadedPlugin, str]:
        port = free_port()
        opts = ServeOptions(
            name="obs", socket=short_tmp / "obs.sock", announce="none",
            metrics=f"127.0.0.1:{port}", **kw,
        )  # fmt: skip
        plugin = ThreadedPlugin(driver, opts).start()
        started.append(plugin)
        return plugin, f"http://127.0.0.1:{port}"

    yield start
    for plugin in started:
        plugin.stop()


def test_metrics_count_requests_by_endpoint_and_outcome_with_latency(served: Any) -> None:
    driver = CountingVolumes()
    plugin, base = served(driver)
    with plugin.client() as client:
        for _ in range(3):
            assert client.call("VolumeDriver.Create", {"Name": "v"}).status == 200
        assert client.call("VolumeDriver.Get", {"Name": "v"}).status == 200
        assert client.call("VolumeDriver.Get", {}).status == 400  # Name is required
        assert client.call("VolumeDriver.Nope", {}).status == 404
    status, body = _get(base + "/metrics")
    assert status == 200
    samples = _samples(body.decode())
    req = "dockplug_requests_total"
    assert samples[(req, (("endpoint", "/VolumeDriver.Create"), ("outcome", "ok")))] == 3
    assert samples[(req, (("endpoint", "/VolumeDriver.Get"), ("outcome", "ok")))] == 1
    assert samples[(req, (("endpoint", "/VolumeDriver.Get"), ("outcome", "bad_request")))] == 1
    nope = (("endpoint", "/VolumeDriver.Nope"), ("outcome", "not_implemented"))
    assert samples[(req, nope)] == 1
    assert samples[("dockplug_errors_total", (("endpoint", "/VolumeDriver.Get"),))] == 1
    count = samples[
        ("dockplug_request_duration_seconds_count", (("endpoint", "/VolumeDriver.Create"),))
    ]
    inf = (
        "dockplug_request_duration_seconds_bucket",
        (("endpoint", "/VolumeDriver.Create"), ("le", "+Inf")),
    )
    assert count == 3 and samples[inf] == 3
    assert samples[("dockplug_requests_in_flight", ())] == 0
    # the driver's own family, under dockplug_volume_
    assert samples[("dockplug_volume_creates_total", ())] == 3
    assert samples[("dockplug_volume_answer", ())] == 42
    assert ("dockplug_startup_seconds", ()) in samples
    assert ("dockplug_reconcile_seconds", ()) in samples
    info = (("driver", "CountingVolumes"), ("plugin", "obs"), ("version", "0.1.0"))
    assert samples[("dockplug_info", info)] == 1


def test_health_is_ready_then_degraded_with_reasons_and_503(served: Any) -> None:
    driver = CountingVolumes()
    _, base = served(driver)
    status, body = _get(base + "/health")
    report = json.loads(body)
    assert status == 200 and report["status"] == "ready" and report["reasons"] == []
    driver.reasons = ["etcd at http://127.0.0.1:1 unreachable"]
    status, body = _get(base + "/health")
    report = json.loads(body)
    assert status == 503 and report["status"] == "degraded" and not report["ready"]
    assert report["reasons"] == ["etcd at http://127.0.0.1:1 unreachable"]
    assert _get(base + "/other")[0] == 404


def test_dockplug_status_reads_the_plugin_socket_and_the_side_listener(served: Any) -> None:
    driver = CountingVolumes()
    plugin, base = served(driver)
    runner = CliRunner()
    sock = plugin.url.removeprefix("unix://")
    for target in (sock, base):
        result = runner.invoke(cli, ["status", target, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["status"] == "ready"
    driver.reasons = ["a dead FUSE mount"]
    result = runner.invoke(cli, ["status", sock])
    assert result.exit_code == 1
    assert "degraded" in result.output and "a dead FUSE mount" in result.output


def test_the_metrics_listener_refuses_the_plugin_socket(short_tmp: Path) -> None:
    sock = short_tmp / "same.sock"
    opts = ServeOptions(name="same", socket=sock, announce="none", metrics=f"unix:{sock}")
    with pytest.raises(ConfigError, match="is the plugin socket"):
        ThreadedPlugin(FixedVolumes(), opts).start()


def test_metrics_on_a_unix_socket(served: Any, short_tmp: Path) -> None:
    path = short_tmp / "metrics.sock"
    opts = ServeOptions(
        name="u", socket=short_tmp / "u.sock", announce="none", metrics=f"unix:{path}"
    )
    with ThreadedPlugin(CountingVolumes(), opts):
        assert oct(path.stat().st_mode & 0o777) == "0o660"
        result = CliRunner().invoke(cli, ["status", f"unix:{path}", "--json"])
        assert result.exit_code == 0 and json.loads(result.output)["plugin"] == "u"
    assert not path.exists()


@pytest.mark.parametrize(
    ("text", "fix"),
    [("9323", "HOST:PORT"), ("host:99999", "HOST:PORT"), ("unix:relative.sock", "absolute path")],
)
def test_bad_metrics_addresses_name_the_fix(text: str, fix: str) -> None:
    with pytest.raises(ConfigError, match=fix):
        parse_address(text)


def test_metrics_off_never_import_prometheus_client() -> None:
    code = (
        "import sys; from dockplug.cli.main import cli; "
        "from dockplug.drivers.registry import LOCAL; LOCAL.load(); "
        "print('prometheus_client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_json_log_lines_carry_the_text_lines_fields_secrets_masked() -> None:
    from dockplug.observe import add_secret

    add_secret("hunter2-secret")
    stream = io.StringIO()
    log = RequestLog(stream=stream, json_lines=True, debug=True)
    log.request(0x2A, "/VolumeDriver.Mount", "v1", 200, 0.00123)
    log.request(0x2B, "/VolumeDriver.Create", "v2", 500, 0.5, "bad password hunter2-secret")
    log.body(0x2B, "<", b'{"Name":"v2","Opts":{"password":"x"}}')
    log.event("reconciled 3 volumes")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    ok, failed, body, event = lines
    assert ok["req"] == "2a" and ok["endpoint"] == "VolumeDriver.Mount" and ok["name"] == "v1"
    assert ok["outcome"] == "ok" and ok["status"] == 200 and ok["ms"] == 1.23
    assert failed["outcome"] == "err" and "hunter2" not in failed["err"]
    assert body["body"]["Opts"]["password"] == "********"
    assert event["msg"] == "reconciled 3 volumes" and event["time"].endswith("Z")


def test_serve_takes_metrics_and_log_format_options() -> None:
    result = CliRunner().invoke(cli, ["serve", "local", "--help"])
    assert "--metrics" in result.output and "--log-format" in result.output
