"""The conformance harness (``dockplug check``): it passes a correct driver and pins the
findings on a deliberately broken one."""

from __future__ import annotations

import dataclasses
import json
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dockplug.cli.main import cli
from dockplug.conformance import Report, Result, run
from dockplug.conformance.shapes import volume_problems
from dockplug.drivers.volume.local import LocalDriver
from dockplug.errors import VolumeInUse, VolumeNotFound
from dockplug.protocol.base import Driver, Empty
from dockplug.protocol.volume import VOLUME, CreateRequest, MountRequest, NameRequest
from dockplug.testing.servers import SubprocessPlugin, ThreadedPlugin

Serve = Callable[..., ThreadedPlugin]
SEQUENCE = {f"V{i:02d}" for i in range(1, 19)}

# The VolumeDriver protocol with Get's reply passed through raw, so the driver can get the
# key casing wrong the way hand-written plugins do.
RAW_GET = dataclasses.replace(
    VOLUME,
    endpoints=tuple(
        dataclasses.replace(ep, reply_ref=lambda result, _req: result) if ep.method == "get" else ep
        for ep in VOLUME.endpoints
    ),
)


class BrokenDriver(Driver):
    """Three classic mistakes: lower-case keys in Get, a *set* of mount IDs instead of a count
    (so ``docker cp`` on a running container unmounts it), and a crash on ``"Opts": null``."""

    protocols = (RAW_GET,)

    def __init__(self, base: Path, remove_ignores_mounts: bool = False) -> None:
        self.base = base
        self.volumes: dict[str, dict[str, str]] = {}
        self.mounts: dict[str, set[str]] = {}
        self.remove_ignores_mounts = remove_ignores_mounts

    def create(self, req: CreateRequest) -> None:
        self.volumes[req.name] = dict(req.opts.items())  # type: ignore[union-attr]

    def get(self, req: NameRequest) -> dict[str, Any]:
        if req.name not in self.volumes:
            raise VolumeNotFound(req.name)
        return {"Volume": {"name": req.name, "mountpoint": str(self.base / req.name)}}

    def list(self, req: Empty) -> list[dict[str, str]]:
        return [{"Name": n} for n in self.volumes]

    def mount(self, req: MountRequest) -> str:
        path = self.base / req.name
        path.mkdir(parents=True, exist_ok=True)
        self.mounts.setdefault(req.name, set()).add(req.id)
        return str(path)

    def unmount(self, req: MountRequest) -> None:
        self.mounts.get(req.name, set()).discard(req.id)

    def path(self, req: NameRequest) -> str:
        return str(self.base / req.name) if self.mounts.get(req.name) else ""

    def remove(self, req: NameRequest) -> None:
        if self.mounts.get(req.name) and not self.remove_ignores_mounts:
            raise VolumeInUse(req.name)
        self.volumes.pop(req.name, None)

    def capabilities(self, req: Empty) -> str:
        return "local"


def _local(serve_plugin: Serve, root: Path) -> ThreadedPlugin:
    driver = LocalDriver(base_dir=root / "vols", state_dir=root / "state")
    return serve_plugin(driver, name="harness-local")


def _outcomes(report: Any) -> dict[str, Result]:
    return {r.id: r.result for r in report.results}


def test_local_driver_passes_every_check(serve_plugin: Serve, short_tmp: Path) -> None:
    plugin = _local(serve_plugin, short_tmp)
    report = run(plugin.url, "volume", timeout=10)
    outcomes = _outcomes(report)
    assert set(outcomes) == SEQUENCE | {"R01", "R02", "R03", "R04", "P01", "P02", "P03", "P04"}
    bad = {r.id: r.evidence for r in report.results if r.result is not Result.PASS}
    assert not bad, bad
    assert report.exit_code == 0
    assert report.cleanup == []
    # every volume the run made is gone again
    with plugin.client() as client:
        listed = client.call("VolumeDriver.List", {}).json["Volumes"]
    assert [v["Name"] for v in listed if v["Name"].startswith("dpcheck-")] == []


def test_broken_driver_fails_the_right_checks(serve_plugin: Serve, short_tmp: Path) -> None:
    plugin = serve_plugin(BrokenDriver(short_tmp / "vols"), name="harness-broken")
    report = run(plugin.url, "volume", timeout=10, only=SEQUENCE)
    failed = {r.id for r in report.results if r.result is Result.FAIL}
    by_id = report.by_id()
    # V06: Opts null crashes while {} works; V07: "name" instead of "Name" in Get;
    # V12: the set drops the docker cp mount; V16: so does Unmount B while A still holds it
    assert failed == {"V06", "V07", "V12", "V16"}, {r.id: r.evidence for r in report.results}
    assert "AttributeError" in by_id["V06"].evidence
    assert "'name' should be 'Name'" in by_id["V07"].evidence
    assert 'Path now answers ""' in by_id["V12"].evidence
    assert report.exit_code == 1
    for passing in ("V01", "V02", "V03", "V04", "V05", "V08", "V14", "V17", "V18"):
        assert by_id[passing].result is Result.PASS, (passing, by_id[passing].evidence)


def test_remove_while_mounted_is_a_failure(serve_plugin: Serve, short_tmp: Path) -> None:
    driver = BrokenDriver(short_tmp / "vols", remove_ignores_mounts=True)
    plugin = serve_plugin(driver, name="harness-rm")
    report = run(plugin.url, "volume", timeout=10, only={"V04", "V11", "V14", "V17"})
    by_id = report.by_id()
    assert by_id["V14"].result is Result.FAIL
    assert "data can vanish" in by_id["V14"].evidence
    assert by_id["V17"].result is Result.SKIP  # the volume is already gone


def test_plugin_that_needs_options_gets_warnings(serve_plugin: Serve, short_tmp: Path) -> None:
    class NeedsType(BrokenDriver):
        def create(self, req: CreateRequest) -> None:
            if "type" not in req.options:
                raise ValueError("volume must have a type")
            self.volumes[req.name] = req.options

    plugin = serve_plugin(NeedsType(short_tmp / "vols"), name="harness-opts")
    report = run(plugin.url, opts={"type": "x"}, timeout=10, only={"V04", "V05", "V06"})
    assert _outcomes(report) == {"V04": Result.PASS, "V05": Result.WARN, "V06": Result.WARN}


@pytest.mark.parametrize(
    ("vol", "problem"),
    [
        ({"Name": "v", "CreatedAt": ""}, 'CreatedAt is ""'),
        ({"Name": "v", "CreatedAt": "yesterday"}, "not RFC 3339"),
        ({"Name": "v", "Status": []}, "Status [] is not an object"),
        ({"Name": "w"}, "does not echo"),
        ({"NAME": "v"}, "'NAME' should be 'Name'"),
        ({"Name": "v", "mountPoint": "/x"}, "'mountPoint' should be 'Mountpoint'"),
    ],
)
def test_volume_shape_rules(vol: dict[str, Any], problem: str) -> None:
    assert any(problem in p for p in volume_problems(vol, "v", "Volume"))


def test_volume_shape_accepts_a_good_entry() -> None:
    vol = {"Name": "v", "Mountpoint": "/m", "CreatedAt": "2024-01-02T03:04:05.123Z", "Status": {}}
    assert volume_problems(vol, "v", "Volume") == []
    assert volume_problems({"Name": "v", "CreatedAt": None}, "v", "Volume") == []


def test_cli_check_table_report_and_exit_status(
    serve_plugin: Serve, short_tmp: Path, tmp_path: Path
) -> None:
    good = _local(serve_plugin, short_tmp)
    out = tmp_path / "good.json"
    result = CliRunner().invoke(
        cli, ["check", good.url, "--report", str(out), "--only", "V01", "--only", "V04"]
    )
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "2 pass" in result.output
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["kind"] == "volume"
    assert [r["id"] for r in data["results"]] == ["V01", "V04"]
    assert data["results"][0]["result"] == "pass"

    broken = serve_plugin(BrokenDriver(short_tmp / "b"), name="harness-cli-broken")
    result = CliRunner().invoke(cli, ["check", broken.url, "--only", "V04", "--only", "V07"])
    assert result.exit_code == 1
    assert "FAIL" in result.output


def test_cli_check_options_and_unreachable_target(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["check", str(tmp_path / "none.sock")])
    assert result.exit_code == 1
    assert "no such socket" in result.output
    result = CliRunner().invoke(cli, ["check", str(tmp_path / "none.sock"), "-o", "novalue"])
    assert result.exit_code == 1
    assert "use KEY=VALUE" in result.output


def test_cli_check_of_a_name_that_is_no_plugin_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-dockerd.sock")
    result = CliRunner().invoke(cli, ["check", "dpcheck-nobody/nothing:latest"])
    assert result.exit_code == 1
    assert "no plugin named 'dpcheck-nobody/nothing:latest'" in result.output
    assert "nor as a managed plugin: cannot reach the Docker Engine API" in result.output


def test_cli_check_passes_serve_local_subprocess(short_tmp: Path, tmp_path: Path) -> None:
    """End to end: ``dockplug check`` (a process) against ``dockplug serve local`` (a process)."""
    sock = short_tmp / "local.sock"
    args = [
        "serve", "local", "--name", "harness-sub", "--socket", str(sock), "--announce", "none",
        "--base-dir", str(short_tmp / "vols"), "--state-dir", str(short_tmp / "st"),
    ]  # fmt: skip
    out = tmp_path / "report.json"
    with SubprocessPlugin(args, wait_for=sock) as plugin:
        done = subprocess.run(
            [sys.executable, "-m", "dockplug", "check", str(sock), "--report", str(out)],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stdout + done.stderr + plugin.output
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["counts"]["fail"] == 0
    assert len(data["results"]) == 26 and data["cleanup"] == []


def test_gets_that_wait_for_a_slow_mount_are_flagged(serve_plugin: Serve, short_tmp: Path) -> None:
    class OneLock(BrokenDriver):
        """Every call behind one lock, and a Mount that takes a second."""

        lock = threading.Lock()

        def mount(self, req: MountRequest) -> str:
            with self.lock:
                time.sleep(1.0)
                return super().mount(req)

        def get(self, req: NameRequest) -> dict[str, Any]:
            with self.lock:
                return super().get(req)

    driver = OneLock(short_tmp / "vols")
    plugin = serve_plugin(driver, name="harness-lock")
    report = run(plugin.url, timeout=20, only={"V04", "V10"})
    v10 = report.by_id()["V10"]
    assert v10.result is Result.WARN, v10.evidence
    assert "waited for it" in v10.evidence


class _Sloppy(BaseHTTPRequestHandler):
    """A hand-rolled plugin with the wire mistakes a framework prevents: a lower-case interface
    name, 201 for Create, plain-text errors without ``Err``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:  # client_address is "" on a unix socket
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        replies = {
            "/Plugin.Activate": (200, b'{"Implements": ["volumedriver"]}'),
            "/VolumeDriver.Create": (201, b""),
            "/VolumeDriver.List": (200, b'{"Volumes": []}'),
        }
        status, body = replies.get(self.path, (404, b"not found"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def test_hand_rolled_wire_mistakes(short_tmp: Path) -> None:
    sock = short_tmp / "sloppy.sock"
    server = _UnixHTTPServer(str(sock), _Sloppy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        report = run(str(sock), timeout=10, only={"V01", "V02", "V03", "V04", "V18", "R01"})
    finally:
        server.shutdown()
        server.server_close()
    by_id = report.by_id()
    assert _outcomes(report) == {
        "V01": Result.FAIL,
        "V02": Result.WARN,
        "V03": Result.PASS,
        "V04": Result.FAIL,
        "V18": Result.FAIL,
        "R01": Result.WARN,
    }, {r.id: r.evidence for r in report.results}
    assert "'volumedriver' has the wrong casing" in by_id["V01"].evidence
    assert "HTTP 201 (dockerd wants exactly 200)" in by_id["V18"].evidence
    assert "without a non-empty Err" in by_id["V18"].evidence
    assert "carry no Err" in by_id["R01"].evidence


def test_conformance_fixture_lets_authors_assert_in_one_line(
    serve_plugin: Serve, short_tmp: Path, conformance: Callable[..., Report]
) -> None:
    plugin = _local(serve_plugin, short_tmp)
    report = conformance(plugin.url, only={"V01", "V04", "V07", "V12", "V17"}, timeout=10)
    assert report.ok, report.failures()
    broken = serve_plugin(BrokenDriver(short_tmp / "b"), name="harness-broken-fixture")
    report = conformance(broken.url, only=SEQUENCE, timeout=10)
    assert not report.ok
    assert "V12" in report.failures()


def test_host_paths_map_a_managed_plugins_paths_as_dockerd_does() -> None:
    from dockplug.server.discovery import HostPaths

    paths = HostPaths("/d/plugins/ab/rootfs", "/mnt/volumes", "/d/plugins/ab/propagated-mount")
    assert paths.of("/mnt/volumes/v1") == "/d/plugins/ab/propagated-mount/v1"
    assert paths.of("/mnt/volumes") == "/d/plugins/ab/propagated-mount/"
    assert paths.of("/mnt/volumesX/v1") == "/d/plugins/ab/rootfs/mnt/volumesX/v1"
    assert paths.of("/data/v1") == "/d/plugins/ab/rootfs/data/v1"
    assert HostPaths("/r").of("/mnt/volumes/v1") == "/r/mnt/volumes/v1"
