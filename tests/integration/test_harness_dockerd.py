"""The harness's model of dockerd, checked against a real dockerd: the IPAM and authz examples
serve dockerd itself, the calls it makes are recorded, and they must be the calls (bodies and
order) the harness plays. Then the harness passes on the same plugin instance."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dockplug.cli.serve import import_file
from dockplug.conformance import run
from dockplug.testing.dockerd import Dockerd, unavailable_reason
from dockplug.testing.servers import ThreadedPlugin

pytestmark = pytest.mark.dockerd

Serve = Callable[..., ThreadedPlugin]
REPO = Path(__file__).resolve().parents[2]
PLUGINS = Path("/run/docker/plugins")


def example(name: str) -> ModuleType:
    return import_file(REPO / "examples" / f"{name}.py")


class Recorder:
    """Wraps every protocol method of a driver instance to log (method, request)."""

    def __init__(self, driver: Any, methods: tuple[str, ...]) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        for method in methods:
            original = getattr(driver, method)

            def wrapped(req: Any, _m: str = method, _f: Any = original) -> Any:
                with self._lock:
                    self.calls.append((_m, req))
                return _f(req)

            setattr(driver, method, wrapped)

    def names(self) -> list[str]:
        with self._lock:
            return [m for m, _ in self.calls]

    def of(self, method: str) -> list[Any]:
        with self._lock:
            return [req for m, req in self.calls if m == method]


IPAM_METHODS = (
    "get_default_address_spaces",
    "request_pool",
    "release_pool",
    "request_address",
    "release_address",
)


def test_ipam_example_serves_dockerd_as_the_harness_plays_it(
    dockerd: Dockerd, serve_plugin: Serve, plugin_name: str, busybox_image: str
) -> None:
    driver = example("ipam_pools").PoolsDriver()
    calls = Recorder(driver, IPAM_METHODS)
    plugin = serve_plugin(driver, name=plugin_name, socket=PLUGINS / f"{plugin_name}.sock")
    net = f"{plugin_name}-net"
    dockerd.docker("network", "create", "--ipam-driver", plugin_name, "--subnet",
                   "198.18.9.0/24", net)  # fmt: skip
    try:
        out = dockerd.docker("run", "--rm", "--network", net, busybox_image,
                             "ip", "-4", "-o", "addr", "show", "eth0").stdout  # fmt: skip
        assert "inet 198.18.9.2/24" in out, out
        gateway = json.loads(dockerd.docker("network", "inspect", net).stdout)[0]
        assert gateway["IPAM"]["Driver"] == plugin_name
    finally:
        dockerd.docker("network", "rm", net)

    # what dockerd sent is what the harness sends (ipam.py)
    names = calls.names()
    assert names.index("get_default_address_spaces") < names.index("request_pool")
    (pool,) = calls.of("request_pool")
    assert (pool.address_space, pool.pool, pool.v6) == ("LocalDefault", "198.18.9.0/24", False)
    gw, container = calls.of("request_address")
    assert gw.is_gateway and gw.address == "" and not container.is_gateway
    released = [r.address for r in calls.of("release_address")]
    assert sorted(released) == ["198.18.9.1", "198.18.9.2"]  # plain IPs, not CIDR
    assert names[-1] == "release_pool"
    assert driver.pools == {}  # dockerd gave everything back

    report = run(plugin.url, "ipam", timeout=10)
    assert report.ok, report.failures()


def _authz_dockerd(plugin: str) -> Iterator[Dockerd]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    daemon = Dockerd().start(extra_args=(f"--authorization-plugin={plugin}",))
    yield daemon
    daemon.stop()


def test_authz_example_guards_a_dedicated_dockerd(serve_plugin: Serve, plugin_name: str) -> None:
    if unavailable_reason() is not None:  # before the plugin goes live in /run/docker/plugins
        pytest.skip(str(unavailable_reason()))
    driver = example("authz_rules").RulesPlugin()
    calls = Recorder(driver, ("authz_req", "authz_res"))
    plugin = serve_plugin(driver, name=plugin_name, socket=PLUGINS / f"{plugin_name}.sock")
    daemons = _authz_dockerd(plugin_name)
    daemon = next(daemons)
    try:
        daemon.docker("version")
        denied = daemon.docker("create", "--privileged", "dockplug-none:1", check=False)
        assert denied.returncode != 0
        assert f"authorization denied by plugin {plugin_name}" in denied.stderr
        assert "privileged containers are not allowed" in denied.stderr
        plain = daemon.docker("create", "dockplug-none:1", check=False)
        assert "authorization denied" not in plain.stderr  # allowed, then: no such image
    finally:
        next(daemons, None)

    creates = [r for r in calls.of("authz_req") if r.path.endswith("/containers/create")]
    assert creates, calls.names()
    sent = creates[0]
    # the shape the harness's authz.request() builds: versioned URI, JSON body in base64
    assert sent.request_method == "POST" and sent.request_uri.startswith("/v1.")
    assert (sent.request_headers or {}).get("Content-Type") == "application/json"
    body = json.loads(base64.b64decode(sent.request_body or ""))
    assert body["HostConfig"]["Privileged"] is True
    assert sent.user is None  # no TLS client certificate

    report = run(plugin.url, "authz", timeout=10)
    assert report.ok, report.failures()


NETWORK_METHODS = (
    "create_network",
    "create_endpoint",
    "endpoint_oper_info",
    "join",
    "leave",
    "delete_endpoint",
    "delete_network",
)


def test_network_example_connects_a_real_container(
    dockerd: Dockerd, serve_plugin: Serve, plugin_name: str, busybox_image: str, short_tmp: Path
) -> None:
    """dockerd moves the example's veth into a container, which then reaches the bridge."""
    driver = example("network_veth").VethDriver(str(short_tmp / "state.json"))
    calls = Recorder(driver, NETWORK_METHODS)
    plugin = serve_plugin(driver, name=plugin_name, socket=PLUGINS / f"{plugin_name}.sock")
    net = f"{plugin_name}-net"
    dockerd.docker("network", "create", "-d", plugin_name, "--subnet", "198.18.10.0/24",
                   "-o", "color=blue", net)  # fmt: skip
    try:
        script = "ip -4 -o addr show eth0 && ping -c1 -W2 198.18.10.1"
        out = dockerd.docker("run", "--rm", "--network", net, busybox_image, "sh", "-c", script)
        out = out.stdout
        assert "inet 198.18.10.2/24" in out and "1 packets received" in out, out
    finally:
        dockerd.docker("network", "rm", net)

    names = calls.names()
    order = [n for n in names if n != "endpoint_oper_info"]
    assert order == [
        "create_network", "create_endpoint", "join", "leave", "delete_endpoint", "delete_network"
    ]  # fmt: skip
    (created,) = calls.of("create_network")
    # the bodies the harness sends: NetworkContext.create_network(legacy=True) (N14) is 20.10's,
    # N04 is 28's (enable_ipv4 true); both send IPv6Data [] for IPv4-only, not §4.2's null
    assert created.driver_options == {"color": "blue"}
    assert created.option("com.docker.network.enable_ipv6") is False
    ipv4 = created.option("com.docker.network.enable_ipv4")
    assert ipv4 is (None if dockerd.version.startswith("20.10.") else True), created.options
    assert created.ipv4_data[0].gateway == "198.18.10.1/24" and created.ipv6_data == []
    (endpoint,) = calls.of("create_endpoint")
    assert endpoint.interface.address == "198.18.10.2/24"
    assert driver.networks == {}

    report = run(plugin.url, "network", timeout=10)
    assert report.ok, report.failures()


def test_log_example_logs_a_real_container(
    dockerd: Dockerd, serve_plugin: Serve, plugin_name: str, busybox_image: str, short_tmp: Path
) -> None:
    """dockerd's FIFO, framing and Info are what the harness's log checks play; docker logs goes
    through the example's ReadLogs, after the container stopped."""
    driver = example("log_files").FilesDriver(str(short_tmp / "logs"))
    calls = Recorder(driver, ("start_logging", "stop_logging", "read_logs"))
    plugin = serve_plugin(driver, name=plugin_name, socket=PLUGINS / f"{plugin_name}.sock")
    script = "echo hello; echo oops >&2; printf 'no newline'"
    cid = dockerd.docker("run", "-d", "--log-driver", plugin_name, "--log-opt", "my-opt=x",
                         busybox_image, "sh", "-c", script).stdout.strip()  # fmt: skip
    try:
        dockerd.docker("wait", cid)
        logs = dockerd.docker("logs", cid)
        assert logs.stdout == "hello\nno newline" and logs.stderr == "oops\n", logs
    finally:
        dockerd.docker("rm", "-f", cid)

    start = calls.of("start_logging")
    assert len(start) == 2  # the run, then docker logs on the stopped container (§7.2)
    first = start[0]
    assert first.file.startswith("/run/docker/logging/") and first.file != start[1].file
    assert first.info.container_id == cid and first.info.container_name.startswith("/")
    assert first.info.config["my-opt"] == "x"
    (read,) = calls.of("read_logs")
    assert read.config.tail == -1 and read.config.follow is False and read.config.since is None
    text = (short_tmp / "logs" / f"{cid}.log").read_text()
    assert " stdout hello\n" in text and " stderr oops\n" in text

    report = run(plugin.url, "log", timeout=10, opts={"fifo_dir": str(short_tmp / "fifos")})
    assert report.ok, report.failures()
