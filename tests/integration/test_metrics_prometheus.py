"""A real Prometheus scrapes a dockplug plugin that a real dockerd drives; the dashboard in
examples/grafana names only metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockplug.testing.dockerd import Dockerd
from dockplug.testing.servers import SubprocessPlugin, free_port, wait_until

pytestmark = pytest.mark.dockerd

DASHBOARD = Path(__file__).parents[2] / "examples" / "grafana" / "dockplug-dashboard.json"


class Prometheus:
    """Debian's prometheus on 127.0.0.1, scraping TARGET every second."""

    def __init__(self, root: Path, target: str) -> None:
        self.port = free_port()
        config = root / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: dockplug\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.log = (root / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                "prometheus", f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}" + (f"?{query}" if query else "")
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.loads(reply.read())["data"]

    def value(self, expr: str) -> float | None:
        try:
            result = self.api("query", query=expr)["result"]
        except OSError:
            return None
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def short_tmp_module() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="dpm-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def scraped(dockerd: Dockerd, busybox_image: str, short_tmp_module: Path) -> Iterator[Any]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    name = f"dpm-{uuid.uuid4().hex[:8]}"
    port = free_port()
    socket = Path(f"/run/docker/plugins/{name}.sock")
    plugin = SubprocessPlugin(
        [
            "serve", "local", "--name", name, "--base-dir", str(short_tmp_module / "vols"),
            "--state-dir", str(short_tmp_module / "state"), "--metrics", f"127.0.0.1:{port}",
        ],
        wait_for=socket,
    ).start()  # fmt: skip
    prometheus = Prometheus(short_tmp_module, f"127.0.0.1:{port}")
    volume = f"{name}-v"
    try:
        dockerd.docker("volume", "create", "-d", name, volume)
        for _ in range(2):
            dockerd.docker("run", "--rm", "-v", f"{volume}:/data", busybox_image, "true")
        dockerd.docker("volume", "rm", volume)
        yield prometheus
    finally:
        prometheus.stop()
        plugin.stop()
        socket.unlink(missing_ok=True)


def test_prometheus_sees_dockerds_calls_counted_and_timed(scraped: Prometheus) -> None:
    mounts = 'dockplug_requests_total{endpoint="/VolumeDriver.Mount",outcome="ok"}'
    unmounts = 'dockplug_requests_total{endpoint="/VolumeDriver.Unmount",outcome="ok"}'
    # dockerd mounts a volume once per container start (20.10 also once at create, to copy
    # the image's files in): two runs give at least two Mounts, each matched by an Unmount
    assert wait_until(
        lambda: (
            (scraped.value(mounts) or 0) >= 2 and scraped.value(mounts) == scraped.value(unmounts)
        ),
        timeout=30,
        interval=0.5,
    ), f"Prometheus saw {scraped.value(mounts)} Mounts, {scraped.value(unmounts)} Unmounts"
    creates = 'dockplug_requests_total{endpoint="/VolumeDriver.Create",outcome="ok"}'
    assert scraped.value(creates) == 1
    count = 'dockplug_request_duration_seconds_count{endpoint="/VolumeDriver.Mount"}'
    assert scraped.value(count) == scraped.value(mounts)
    # dockerd dials the plugin before any volume call: Activate is counted too
    assert (scraped.value('dockplug_requests_total{endpoint="/Plugin.Activate"}') or 0) >= 1
    quantile = (
        "histogram_quantile(0.99, sum by (le) "
        '(dockplug_request_duration_seconds_bucket{endpoint="/VolumeDriver.Mount"}))'
    )
    p99 = scraped.value(quantile)
    assert p99 is not None and 0 < p99 < 5
    assert scraped.value("dockplug_volume_volumes") == 0  # removed again
    assert scraped.value('up{job="dockplug"}') == 1


def _family_names(root: Path) -> set[str]:
    """What the other built-in drivers declare, read from their registries in-process (the
    same code a scrape runs), so the dashboard's panels for every family are checked."""
    from prometheus_client.parser import text_string_to_metric_families

    from dockplug.drivers.authz.driver import CedarAuthz
    from dockplug.drivers.log.driver import LogsDriver
    from dockplug.drivers.net import NetDriver
    from dockplug.drivers.volume.sshfs.driver import SshfsDriver
    from dockplug.observe.prometheus import PrometheusMetrics

    names: set[str] = set()
    drivers = [
        CedarAuthz(DASHBOARD.parents[1] / "authz" / "safe", watch_interval=0),
        LogsDriver(state_dir=root / "logs", forward=("syslog+tcp://127.0.0.1:9",)),
        NetDriver(state_dir=root / "net"),
        SshfsDriver(base_dir=root / "sshfs" / "v", state_dir=root / "sshfs" / "s"),
    ]
    for driver in drivers:
        metrics = PrometheusMetrics("p", type(driver).__name__, "0")
        driver.declare_metrics(metrics.family(driver.metrics_family))
        if isinstance(driver, SshfsDriver):
            driver._reconnects.inc(result="ok")  # a counter shows once it has a sample
        if isinstance(driver, NetDriver):
            driver._store_calls.observe(0.001, result="ok")
            driver._figures = {"pools": 1, "allocated": {"h1": 1}, "stale": 0}
        if isinstance(driver, CedarAuthz):
            driver.decisions.inc(action="container.list", result="allow")
            driver.store.reloads.inc(result="ok")
        for family in text_string_to_metric_families(metrics.exposition().decode()):
            names |= {s.name for s in family.samples}
    return names


def test_every_dashboard_query_names_a_scraped_metric(
    scraped: Prometheus, short_tmp_module: Path
) -> None:
    assert wait_until(lambda: scraped.value("dockplug_volume_mounts") is not None, 30, 0.5)
    names = set(scraped.api("label/__name__/values")) | _family_names(short_tmp_module)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bdockplug_[a-z0-9_]+", e)}
    assert used, "the dashboard has no dockplug queries"
    missing = sorted(used - names)
    assert not missing, f"dashboard queries metrics that do not exist: {missing}"
    for expr in exprs:  # each query parses and evaluates on the real server
        scraped.api("query", query=expr.replace("$__rate_interval", "1m").replace("$job", ".*"))
