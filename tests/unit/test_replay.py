"""The recorder (``dockplug record``) and the replay checks (P01-P04) built on its recordings:
real sockets, a real driver behind the recorder, no dockerd needed."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_harness import BrokenDriver

from dockplug.client import PluginClient, resolve
from dockplug.conformance import Result, run
from dockplug.conformance.checks import Context
from dockplug.conformance.recorder import Normaliser, ThreadedRecorder, normalise
from dockplug.conformance.replay import AUTHZ_CHECKS, CHECKS, IPAM_CHECKS, load, signature
from dockplug.drivers.volume.local import LocalDriver
from dockplug.errors import VolumeNotFound
from dockplug.protocol.volume import CreateRequest, MountRequest, NameRequest
from dockplug.testing.servers import SubprocessPlugin, ThreadedPlugin, wait_until

Serve = Callable[..., ThreadedPlugin]
REPLAYS = {c.id for c in CHECKS}
SCENARIOS = (
    "volume-cli",
    "container-lifecycle",
    "plugin-restart",
    "dockerd-live-restore",
    "authz-create-run",
    "ipam-network",
)


def _local(serve_plugin: Serve, root: Path, name: str = "replay-local") -> ThreadedPlugin:
    return serve_plugin(LocalDriver(base_dir=root / "vols", state_dir=root / "st"), name=name)


def _results(report: Any) -> dict[str, tuple[Result, str]]:
    return {r.id: (r.result, r.evidence) for r in report.results}


def test_the_stored_recordings_are_what_dockerd_sends() -> None:
    """The fixtures hold dockerd's wire format: the harness relies on it when replaying."""
    for scenario in SCENARIOS:
        rec = load(scenario)
        first = rec["exchanges"][0]
        assert first["path"] == "/Plugin.Activate" and first["body"] == ""
        for ex in rec["exchanges"]:
            headers = dict(ex["headers"])
            assert headers["Accept"] == "application/vnd.docker.plugins.v1.2+json"
            assert headers["User-Agent"] == "Go-http-client/1.1"
            assert "Content-Type" not in headers and "Host" in headers
            assert int(headers["Content-Length"]) > 0 or ex["body"] == ""
            assert ex["body"] == "" or ex["body"].endswith("\n")
    # docker cp into a running container mounts (and unmounts) the container's own ID, twice
    cp = [
        json.loads(ex["body"])["ID"]
        for ex in load("container-lifecycle")["exchanges"]
        if "running container" in ex["step"] and ex["path"].lower().endswith("mount")
    ]
    assert len(cp) == 4 and len(set(cp)) == 1


def test_local_driver_passes_every_replay(serve_plugin: Serve, short_tmp: Path) -> None:
    plugin = _local(serve_plugin, short_tmp)
    report = run(plugin.url, timeout=10, only=REPLAYS)
    results = _results(report)
    assert set(results) == {"P01", "P02", "P03", "P04"}
    assert all(r is Result.PASS for r, _ in results.values()), results
    assert "35 calls" in results["P02"][1]
    assert report.cleanup == []
    with plugin.client() as client:
        assert client.call("VolumeDriver.List", {}).json["Volumes"] == []


def test_broken_driver_fails_where_dockerd_would(serve_plugin: Serve, short_tmp: Path) -> None:
    """Lower-case keys in Get do not fail a replay (dockerd decodes them; V07 flags them), a crash
    on ``"Opts": null`` does: docker run -v and docker volume create without -o send it."""
    plugin = serve_plugin(BrokenDriver(short_tmp / "vols"), name="replay-broken")
    results = _results(run(plugin.url, timeout=10, only=REPLAYS))
    assert results["P01"][0] is Result.PASS, results["P01"]
    for check_id in ("P02", "P03", "P04"):
        result, evidence = results[check_id]
        assert result is Result.FAIL
        assert '"Opts":null' in evidence and "dockerd needs this to succeed" in evidence


class CountlessMounts(BrokenDriver):
    """Only the set-of-IDs mistake: ``docker cp``'s Unmount drops the container's mount."""

    def create(self, req: CreateRequest) -> None:
        self.volumes[req.name] = dict(req.options)


def test_docker_cp_replay_catches_a_set_of_mount_ids(serve_plugin: Serve, short_tmp: Path) -> None:
    plugin = serve_plugin(CountlessMounts(short_tmp / "vols"), name="replay-set")
    results = _results(run(plugin.url, timeout=10, only=REPLAYS))
    result, evidence = results["P02"]
    assert result is Result.FAIL
    assert "(docker cp {file} {ctr}:/data/f (running container))" in evidence
    assert "torn down under a running container" in evidence
    # the other sequences never mount one ID twice, so the same driver gets through them
    assert results["P01"][0] is results["P03"][0] is results["P04"][0] is Result.PASS


class Clairvoyant(CountlessMounts):
    """Answers Get for any name, so dockerd never calls Create."""

    def get(self, req: NameRequest) -> dict[str, Any]:
        return {"Volume": {"Name": req.name, "Mountpoint": str(self.base / req.name)}}


class NoMountpoint(CountlessMounts):
    def mount(self, req: MountRequest) -> str:
        super().mount(req)
        return ""


def test_replies_dockerd_cannot_use(serve_plugin: Serve, short_tmp: Path) -> None:
    seer = serve_plugin(Clairvoyant(short_tmp / "a"), name="replay-seer")
    result, evidence = _results(run(seer.url, timeout=10, only={"P01"}))["P01"]
    assert result is Result.FAIL and "dockerd would skip Create" in evidence
    empty = serve_plugin(NoMountpoint(short_tmp / "b"), name="replay-nomp")
    result, evidence = _results(run(empty.url, timeout=10, only={"P03"}))["P03"]
    assert result is Result.FAIL and "no Mountpoint" in evidence


class Counting(CountlessMounts):
    """Counts mounts per ID, as it should."""

    def mount(self, req: MountRequest) -> str:
        self.counts[(req.name, req.id)] = self.counts.get((req.name, req.id), 0) + 1
        return super().mount(req)

    def unmount(self, req: MountRequest) -> None:
        left = self.counts.get((req.name, req.id), 0) - 1
        self.counts[(req.name, req.id)] = left
        if left <= 0:
            super().unmount(req)

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.counts: dict[tuple[str, str], int] = {}


def _needs_type(base: type[CountlessMounts]) -> type[CountlessMounts]:
    class NeedsType(base):  # type: ignore[valid-type,misc]
        def create(self, req: CreateRequest) -> None:
            if "type" not in req.options:
                raise ValueError("volume must have a type")
            super().create(req)

    return NeedsType


def test_a_plugin_that_needs_options_is_replayed_with_them(
    serve_plugin: Serve, short_tmp: Path
) -> None:
    good = serve_plugin(_needs_type(Counting)(short_tmp / "a"), name="replay-opts")
    results = _results(run(good.url, opts={"type": "x"}, timeout=10, only={"P01", "P02"}))
    assert results["P01"][0] is Result.PASS  # the recorded -o is replaced by the plugin's own
    # docker run -v cannot create it; the rest is replayed with the options, and passes
    result, evidence = results["P02"]
    assert result is Result.WARN and "needs options" in evidence and "35 calls" in evidence
    # ... so a docker cp mistake behind the missing options is still found
    bad = serve_plugin(_needs_type(CountlessMounts)(short_tmp / "b"), name="replay-opts2")
    result, evidence = _results(run(bad.url, opts={"type": "x"}, timeout=10, only={"P02"}))["P02"]
    assert result is Result.FAIL and "torn down" in evidence and "needs options" in evidence


def test_replay_goes_out_exactly_as_dockerd_sent_it(serve_plugin: Serve, short_tmp: Path) -> None:
    """Put the recorder between the harness and a plugin: what the replay sends has the
    recording's headers, in order, byte for byte, and its bodies with fresh names."""
    plugin = _local(serve_plugin, short_tmp)
    listen = short_tmp / "rec.sock"
    with ThreadedRecorder(listen, resolve(plugin.url)) as rec:
        report = run(str(listen), timeout=10, only={"P02"})
    assert report.by_id()["P02"].result is Result.PASS
    stored = load("container-lifecycle")["exchanges"]
    sent = [ex for ex in rec.exchanges if ex["path"] != "/VolumeDriver.Path"][: len(stored)]
    assert [ex["path"] for ex in sent] == [ex["path"] for ex in stored]
    for got, want in zip(sent, stored, strict=True):
        assert [h[0] for h in got["headers"]] == [h[0] for h in want["headers"]]
        got_h, want_h = dict(got["headers"]), dict(want["headers"])
        assert got_h["Content-Length"] == str(len(got["body"].encode()))
        del got_h["Content-Length"], want_h["Content-Length"]
        assert got_h == want_h  # Host "" included
        assert got["body"].endswith("\n") or got["body"] == want["body"] == ""
    mount_ids = {json.loads(ex["body"])["ID"] for ex in sent if ex["path"].endswith("Mount")}
    assert len(mount_ids) == 5 and all(len(i) == 64 for i in mount_ids)


def test_recorder_forwards_byte_for_byte(serve_plugin: Serve, short_tmp: Path) -> None:
    """Direct and through the recorder, the same replies; keep-alive, a chunked request and a
    plugin that restarts behind the recorder all work."""
    args = [
        "serve", "local", "--name", "rec-unit", "--socket", str(short_tmp / "p.sock"),
        "--announce", "none", "--base-dir", str(short_tmp / "v"),
        "--state-dir", str(short_tmp / "s"),
    ]  # fmt: skip
    listen = short_tmp / "rec.sock"
    with (
        SubprocessPlugin(args, wait_for=short_tmp / "p.sock") as plugin,
        ThreadedRecorder(listen, resolve(str(short_tmp / "p.sock"))) as rec,
        PluginClient(str(listen), timeout=5) as via,
        PluginClient(str(short_tmp / "p.sock"), timeout=5) as direct,
    ):
        assert via.call("Plugin.Activate").raw == direct.call("Plugin.Activate").raw
        assert via.call("VolumeDriver.Create", {"Name": "v1", "Opts": None}).status == 200
        for c in (via, direct):
            assert c.call("VolumeDriver.Get", {"Name": "v1"}).json["Volume"]["Name"] == "v1"
        conn = http.client.HTTPConnection("x")
        conn.sock = _unix(listen)
        conn.request("POST", "/VolumeDriver.List", body=iter([b"{", b"}\n"]))
        chunked = conn.getresponse()
        assert chunked.status == 200 and chunked.read().startswith(b'{"Volumes":[')
        conn.close()
        plugin.stop()
        plugin.start()
        # the recorder's old upstream connection is dead: it dials the plugin again
        assert via.call("VolumeDriver.Get", {"Name": "v1"}).status == 200
    calls = rec.exchanges
    assert [ex["path"] for ex in calls] == [
        "/Plugin.Activate",
        "/VolumeDriver.Create",
        "/VolumeDriver.Get",
        "/VolumeDriver.List",
        "/VolumeDriver.Get",
    ]
    assert calls[0]["conn"] == calls[2]["conn"] == calls[4]["conn"] != calls[3]["conn"]
    assert calls[1]["body"] == '{"Name":"v1","Opts":null}\n'
    assert dict(calls[3]["headers"])["Transfer-Encoding"] == "chunked"
    assert calls[3]["body"] == "{}\n"
    assert calls[0]["pid"] == os.getpid()  # SO_PEERCRED: the client is this test process
    assert calls[2]["reply_body"].startswith('{"Volume":{"Name":"v1"')


def _unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    return sock


def test_normalise_and_signature() -> None:
    exchanges = [
        {
            "seq": 1, "conn": 1, "pid": 7, "t": 0.1, "step": "run", "path": "/VolumeDriver.Mount",
            "headers": [["Host", ""], ["Content-Length", "99"]],
            "body": '{"Name":"data-7","ID":"' + "b" * 64 + '"}\n', "status": 200,
            "reply_body": '{"Mountpoint":"/srv/x/data-7"}',
        },
        {
            "seq": 2, "conn": 1, "pid": 7, "t": 0.2, "step": "run", "path": "/VolumeDriver.Get",
            "headers": [["Host", ""], ["Content-Length", "9"]],
            "body": '{"Name":"data-7"}\n', "status": 200,
            "reply_body": '{"Volume":{"Name":"data-7","CreatedAt":"2026-01-02T03:04:05.5Z"}}',
        },
    ]  # fmt: skip
    out = normalise(exchanges, Normaliser(names=["data-7"], literals={"/srv/x": "{base}"}))
    assert out[0]["body"] == '{"Name":"{vol1}","ID":"{id1}"}\n'
    assert out[0]["reply_body"] == '{"Mountpoint":"{base}/{vol1}"}'
    assert "{time}" in out[1]["reply_body"] and not {"seq", "conn", "pid", "t"} & set(out[0])
    ordered = {"exchanges": out}
    swapped = {"exchanges": out[::-1]}
    assert signature(ordered) != signature(swapped)
    assert signature({**ordered, "unordered": True}) == signature({**swapped, "unordered": True})


def test_cli_record_writes_the_recording(short_tmp: Path, serve_plugin: Serve) -> None:
    plugin = _local(serve_plugin, short_tmp)
    listen, out = short_tmp / "cli.sock", short_tmp / "calls.json"
    cmd = [sys.executable, "-m", "dockplug", "record", "--name", "x", "--target", plugin.url,
           "--socket", str(listen), "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: listen.exists() or proc.poll() is not None, 15.0, 0.05)
        assert proc.poll() is None and listen.exists(), proc.stdout
        with PluginClient(str(listen), timeout=5) as client:
            reply = client.call("VolumeDriver.Get", {"Name": "nope"})
        assert reply.status == 500 and "nope" in (reply.error or "")
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, output
    assert "/VolumeDriver.Get" in output and "1 calls recorded" in output
    data = json.loads(out.read_text())
    assert data["format"] == "dockplug-recording/1"
    (ex,) = data["exchanges"]
    assert ex["path"] == "/VolumeDriver.Get" and ex["status"] == 500
    assert ex["body"] == '{"Name":"nope"}\n' and not listen.exists()


def test_cli_record_only_the_given_pid(short_tmp: Path, serve_plugin: Serve) -> None:
    """--pid: calls from other processes are forwarded but not recorded."""
    plugin = _local(serve_plugin, short_tmp)
    listen, out = short_tmp / "cli.sock", short_tmp / "calls.json"
    cmd = [sys.executable, "-m", "dockplug", "record", "--name", "x", "--target", plugin.url,
           "--socket", str(listen), "-o", str(out), "--pid", str(os.getpid()), "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: listen.exists() or proc.poll() is not None, 15.0, 0.05)
        assert proc.poll() is None and listen.exists(), proc.stdout
        other = subprocess.run(
            [sys.executable, "-m", "dockplug", "call", str(listen), "VolumeDriver.List", "{}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert other.returncode == 0 and '"Volumes"' in other.stdout  # forwarded
        with PluginClient(str(listen), timeout=5) as client:
            assert client.call("Plugin.Activate").status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, output
    paths = [ex["path"] for ex in json.loads(out.read_text())["exchanges"]]
    assert paths == ["/Plugin.Activate"]


def test_cli_record_refuses_to_record_itself(short_tmp: Path) -> None:
    sock = short_tmp / "same.sock"
    done = subprocess.run(
        [sys.executable, "-m", "dockplug", "record", "--name", "x", "--target", str(sock),
         "--socket", str(sock)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1 and "is the socket the recorder would listen on" in done.stderr


def test_missing_volume_get_error_is_expected(serve_plugin: Serve, short_tmp: Path) -> None:
    """A Get that raises VolumeNotFound where dockerd recorded 'missing' is what dockerd wants."""

    class Strict(CountlessMounts):
        def get(self, req: NameRequest) -> dict[str, Any]:
            if req.name not in self.volumes:
                raise VolumeNotFound(req.name)
            return {"Volume": {"Name": req.name}}

    plugin = serve_plugin(Strict(short_tmp / "v"), name="replay-strict")
    assert _results(run(plugin.url, timeout=10, only={"P01"}))["P01"][0] is Result.PASS


def _replay(check_id: str, url: str) -> tuple[Result, str]:
    """Runs one authz/IPAM replay check directly (the runner has only the volume kind yet)."""
    chk = next(c for c in [*AUTHZ_CHECKS, *IPAM_CHECKS] if c.id == check_id)
    ctx = Context(resolve(url), prefix="dpcheck-unit-", timeout=10)
    try:
        outcome = chk.func(ctx)
    finally:
        ctx.close()
    return outcome.result, outcome.evidence


def test_authz_replay(serve_plugin: Serve) -> None:
    from dockplug import AuthzPlugin

    class DenyPrivileged(AuthzPlugin):
        def authz_req(self, req: Any) -> Any:
            return (False, "no") if "privileged" in str(req.json_body) else True

        def authz_res(self, req: Any) -> bool:
            return True

    class CrashOnResponse(DenyPrivileged):
        def authz_res(self, req: Any) -> bool:
            raise RuntimeError("policy bug")

    good = serve_plugin(DenyPrivileged(), name="replay-authz")
    result, evidence = _replay("P05", good.url)
    assert result is Result.PASS, evidence
    bad = serve_plugin(CrashOnResponse(), name="replay-authz-bad")
    result, evidence = _replay("P05", bad.url)
    assert result is Result.FAIL and "AuthZPlugin.AuthZRes" in evidence
    assert "dockerd fails the user's API call" in evidence


def test_ipam_replay_sends_back_the_targets_pool_id(serve_plugin: Serve) -> None:
    from dockplug import IpamDriver, PluginError

    class Strict(IpamDriver):
        """Its own pool ids, and it refuses ids it never handed out."""

        def __init__(self, bare: bool = False) -> None:
            self.bare, self.pools, self.addresses = bare, set[str](), set[str]()

        def request_pool(self, req: Any) -> tuple[str, str]:
            self.pools.add(pool_id := f"strict-{len(self.pools)}")
            return pool_id, req.pool or "10.9.0.0/24"

        def release_pool(self, req: Any) -> None:
            if req.pool_id not in self.pools:
                raise PluginError(f"unknown pool {req.pool_id}")

        def request_address(self, req: Any) -> str:
            if req.pool_id not in self.pools:
                raise PluginError(f"unknown pool {req.pool_id}")
            address = f"10.231.0.{len(self.addresses) + 11}"
            self.addresses.add(address)
            return address if self.bare else address + "/24"

        def release_address(self, req: Any) -> None:
            if req.address not in self.addresses:
                raise PluginError(f"never handed out {req.address}")

    result, evidence = _replay("P06", serve_plugin(Strict(), name="replay-ipam").url)
    assert result is Result.PASS, evidence
    bare = serve_plugin(Strict(bare=True), name="replay-ipam-bare")
    result, evidence = _replay("P06", bare.url)
    assert result is Result.FAIL and "not in CIDR form" in evidence


def test_recorder_in_front_of_a_tcp_plugin(serve_plugin: Serve, short_tmp: Path) -> None:
    driver = LocalDriver(base_dir=short_tmp / "vols", state_dir=short_tmp / "st")
    plugin = serve_plugin(driver, name="replay-tcp", tcp="127.0.0.1:0", announce="none")
    assert plugin.url.startswith("tcp://")
    listen = short_tmp / "rec.sock"
    with ThreadedRecorder(listen, resolve(plugin.url)) as rec:
        report = run(str(listen), timeout=10, only={"P01"})
    assert report.by_id()["P01"].result is Result.PASS, report.failures()
    assert [ex["path"] for ex in rec.exchanges][:2] == [
        "/Plugin.Activate",
        "/VolumeDriver.Capabilities",
    ]
    assert all(ex["status"] in (200, 500) for ex in rec.exchanges)
