"""The conformance harness for the network, IPAM, authz and log protocols: the example drivers
pass every check, deliberately broken ones fail with the right findings; ``--type`` detection,
the HTML report and the LogEntry codec."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

from dockplug.cli.main import cli
from dockplug.cli.serve import import_file
from dockplug.conformance import KINDS, Report, Result, run
from dockplug.conformance.runner import detect_kind
from dockplug.protocol.base import Driver, Protocol
from dockplug.protocol.ipam import IPAM
from dockplug.protocol.log import LOG
from dockplug.protocol.logentry import (
    EntryError,
    LogEntry,
    PartialMetadata,
    decode,
    encode,
)
from dockplug.protocol.network import NETWORK
from dockplug.testing.servers import SubprocessPlugin, ThreadedPlugin

Serve = Callable[..., ThreadedPlugin]
REPO = Path(__file__).resolve().parents[2]


def example(name: str) -> ModuleType:
    """An examples/ script as a module (they are scripts, not a package)."""
    return import_file(REPO / "examples" / f"{name}.py")


def raw(proto: Protocol) -> Protocol:
    """The protocol with every reply passed through as the driver returns it, so a broken
    driver can answer what hand-written plugins answer."""
    endpoints = tuple(
        dataclasses.replace(ep, reply_ref=lambda result, _req: result) for ep in proto.endpoints
    )
    return dataclasses.replace(proto, endpoints=endpoints)


def outcomes(report: Report) -> dict[str, Result]:
    return {r.id: r.result for r in report.results}


def not_passed(report: Report) -> dict[str, str]:
    return {r.id: f"{r.result.value}: {r.evidence}" for r in report.results if r.result != "pass"}


def failed(report: Report) -> set[str]:
    return {r.id for r in report.results if r.result is Result.FAIL}


# --- IPAM -------------------------------------------------------------------------------------


def test_ipam_example_passes_every_check(serve_plugin: Serve) -> None:
    plugin = serve_plugin(example("ipam_pools").PoolsDriver(), name="h-ipam")
    report = run(plugin.url, "ipam", timeout=10)
    assert set(outcomes(report)) == {c.id for c in KINDS["ipam"]}
    assert not_passed(report) == {}
    assert report.cleanup == []
    # the run released everything it took: the pools are free for the next run
    assert run(plugin.url, "ipam", timeout=10, only={"I04", "I06"}).ok


class BrokenIpam(Driver):
    """The classic IPAM mistakes: the same pool for every request, plain IPs where dockerd wants
    CIDR, and errors in ``Err`` on a 200 reply (which dockerd reads as success)."""

    protocols = (raw(IPAM),)

    def ipam_capabilities(self, req: Any) -> dict[str, Any]:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def get_default_address_spaces(self, req: Any) -> dict[str, str]:
        return {"LocalDefaultAddressSpace": "local", "GlobalDefaultAddressSpace": "global"}

    def request_pool(self, req: Any) -> dict[str, str]:
        pool = req.pool or "10.9.0.0/16"
        return {"PoolID": pool, "Pool": pool}

    def release_pool(self, req: Any) -> dict[str, str]:
        return {}

    def request_address(self, req: Any) -> dict[str, str]:
        if not req.pool_id[:1].isdigit():
            return {"Err": f"no pool {req.pool_id}"}
        return {"Address": req.address or req.pool_id.rsplit(".", 1)[0] + ".5"}

    def release_address(self, req: Any) -> dict[str, str]:
        return {}


def test_broken_ipam_fails_the_right_checks(serve_plugin: Serve) -> None:
    plugin = serve_plugin(BrokenIpam(), name="h-ipam-broken")
    report = run(plugin.url, "ipam", timeout=10)
    by_id = report.by_id()
    assert {"I05", "I07", "I08", "I09", "I10"} <= failed(report), not_passed(report)
    assert "overlaps" in by_id["I05"].evidence and "loops" in by_id["I05"].evidence
    assert "plain IP; dockerd wants CIDR" in by_id["I07"].evidence
    assert '"Err" on a 200 reply, which dockerd reads as success' in by_id["I10"].evidence
    for ok in ("I01", "I02", "I03", "I04", "I06", "I17"):
        assert by_id[ok].result is Result.PASS, (ok, by_id[ok].evidence)
    assert report.exit_code == 1


# --- authz ------------------------------------------------------------------------------------


def test_authz_example_passes_and_denies_with_a_reason(serve_plugin: Serve) -> None:
    plugin = serve_plugin(example("authz_rules").RulesPlugin(), name="h-authz")
    report = run(plugin.url, "authz", timeout=10)
    assert not_passed(report) == {}
    by_id = report.by_id()
    assert "--privileged: denied" in by_id["Z04"].evidence
    assert "privileged containers are not allowed" in by_id["Z04"].evidence
    assert "1 denials, each with a Msg" in by_id["Z07"].evidence


def test_authz_rules_read_bodies_like_go(serve_plugin: Serve) -> None:
    """Keys match case-insensitively and the last duplicate wins, as in dockerd's decoder; a
    body the policy needs but cannot read is denied."""
    from dockplug.conformance.authz import request

    plugin = serve_plugin(example("authz_rules").RulesPlugin(), name="h-authz-go")
    uri = "/v1.41/containers/create"
    sneaky = b'{"HostConfig": {"Privileged": false, "privileged": true}}'
    cases = [
        (request("POST", uri, {"hostconfig": {"PRIVILEGED": True}}), False),
        (request("POST", uri, sneaky), False),
        (request("POST", uri, {"HostConfig": {"Privileged": False}}), True),
        (request("POST", uri), False),  # no body: the privileged rule cannot be judged
        (request("GET", "/v1.41/containers/json"), True),
    ]
    with plugin.client() as client:
        for body, allowed in cases:
            reply = client.call("AuthZPlugin.AuthZReq", body)
            assert reply.status == 200 and reply.json["Allow"] is allowed, (body, reply.raw)


class _SloppyAuthz(BaseHTTPRequestHandler):
    """A hand-rolled authz plugin: ``Authz`` casing, ``Err`` as its way to deny (dockerd allows),
    and anything it cannot parse allowed."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply: dict[str, Any] = {"Allow": True}
        if self.path == "/Plugin.Activate":
            reply = {"Implements": ["Authz"]}
        else:
            try:
                body = json.loads(data)
                sent = base64.b64decode(body.get("RequestBody") or "")
                if b'"Privileged": true' in sent:
                    reply = {"Allow": True, "Err": "no privileged containers"}
            except Exception:
                pass
        out = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 64  # the default 5 refuses Z08's 20 concurrent connections


@pytest.fixture
def sloppy_authz(short_tmp: Path) -> Iterator[str]:
    sock = short_tmp / "authz.sock"
    server = _UnixHTTPServer(str(sock), _SloppyAuthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield str(sock)
    server.shutdown()
    server.server_close()


def test_broken_authz_fails_the_right_checks(sloppy_authz: str, tmp_path: Path) -> None:
    out = tmp_path / "authz.json"
    result = CliRunner().invoke(cli, ["check", sloppy_authz, "--report", str(out)])
    assert result.exit_code == 1 and "(authz)" in result.output, result.output
    report = run(sloppy_authz, "authz", timeout=10)
    assert json.loads(out.read_text())["counts"]["fail"] == 4
    by_id = report.by_id()
    # P05, the recorded dockerd sequence, stops at the same casing mistake as Z01
    assert failed(report) == {"Z01", "Z04", "Z09", "P05"}, not_passed(report)
    assert "Implements lacks ['authz']" in by_id["P05"].evidence
    assert "'Authz' has the wrong casing" in by_id["Z01"].evidence
    assert "dockerd ignores Err on a 200 reply and ALLOWS the call" in by_id["Z04"].evidence
    assert "bad bodies accepted" in by_id["Z09"].evidence


# --- log --------------------------------------------------------------------------------------


def test_log_example_passes_every_check(serve_plugin: Serve, short_tmp: Path) -> None:
    driver = example("log_files").FilesDriver(str(short_tmp / "logs"))
    plugin = serve_plugin(driver, name="h-log")
    report = run(plugin.url, "log", timeout=10, opts={"fifo_dir": str(short_tmp / "fifos")})
    assert not_passed(report) == {}
    assert report.cleanup == []
    # real files: the readable log has the lines the harness wrote, the long one split in three
    logs = sorted((short_tmp / "logs").glob("*.log"))
    text = max(logs, key=lambda p: p.stat().st_size).read_text()
    assert " stderr warning: on stderr\n" in text
    assert text.count(" stdout partial xxxx") == 3
    assert "ünïcode ✓ 漢字" in text
    assert list((short_tmp / "fifos").iterdir()) == []  # every FIFO removed again


class BrokenLog(Driver):
    """Capabilities at the top level as the docs show it (dockerd does not read it), and a
    StartLogging that never opens the FIFO."""

    protocols = (raw(LOG),)

    def start_logging(self, req: Any) -> dict[str, str]:
        return {}

    def stop_logging(self, req: Any) -> dict[str, str]:
        return {}

    def log_capabilities(self, req: Any) -> dict[str, bool]:
        return {"ReadLogs": True}


def test_broken_log_fails_the_right_checks(serve_plugin: Serve, short_tmp: Path) -> None:
    plugin = serve_plugin(BrokenLog(), name="h-log-broken")
    report = run(plugin.url, "log", timeout=3, opts={"fifo_dir": str(short_tmp / "fifos")})
    by_id = report.by_id()
    assert failed(report) == {"L02", "L04", "L09"}, not_passed(report)
    assert 'top-level "ReadLogs"' in by_id["L02"].evidence
    assert "the container's writes would block" in by_id["L04"].evidence
    assert by_id["L10"].result is Result.WARN  # a FIFO that does not exist was accepted


def test_read_logs_without_newlines_is_a_finding(serve_plugin: Serve, short_tmp: Path) -> None:
    """Lines as the FIFO carries them (no newline) make docker logs run them together."""
    from dockplug.protocol.log import frame

    class AsStored(example("log_files").FilesDriver):  # type: ignore[misc]
        def read_logs(self, req: Any) -> list[bytes]:
            return [frame(p) for p, _ in self._container(req.info.container_id).entries()]

    plugin = serve_plugin(AsStored(str(short_tmp / "logs")), name="h-log-nl")
    only = {"L02", "L03", "L04", "L05"}
    report = run(plugin.url, "log", timeout=10, only=only, opts={"fifo_dir": str(short_tmp)})
    assert failed(report) == {"L05"}, not_passed(report)
    assert "without its trailing newline" in report.by_id()["L05"].evidence


def test_logentry_codec_round_trips() -> None:
    entries = [
        LogEntry(),
        LogEntry("stdout", 1_700_000_000_123_456_789, b"hello"),
        LogEntry("stderr", -5, b"\x00\xff binary", partial=True),
        LogEntry(
            "stdout",
            7,
            b"x" * 300,
            partial=True,
            partial_log_metadata=PartialMetadata(last=True, id="abc", ordinal=3),
            attrs=[("k", "v"), ("ü", "漢")],
        ),
    ]
    for entry in entries:
        assert decode(encode(entry)) == entry
    assert encode(LogEntry()) == b""  # proto3 leaves defaults out
    # field 7 (unknown, varint) is skipped; a truncated string is an error
    assert decode(encode(entries[1]) + b"\x38\x01") == entries[1]
    with pytest.raises(EntryError):
        decode(b"\x0a\x05abc")


# --- network ----------------------------------------------------------------------------------


class BrokenNetwork(Driver):
    """Scope in the wrong case, an address of its own in CreateEndpoint, a CIDR gateway in
    Join, and success for networks it never saw."""

    protocols = (raw(NETWORK),)

    def network_capabilities(self, req: Any) -> dict[str, str]:
        return {"Scope": "Local"}

    def create_network(self, req: Any) -> dict[str, str]:
        return {}

    def delete_network(self, req: Any) -> dict[str, str]:
        return {}

    def create_endpoint(self, req: Any) -> dict[str, Any]:
        return {"Interface": {"Address": "10.0.0.99/24", "MacAddress": "02:42:0a:00:00:63"}}

    def endpoint_oper_info(self, req: Any) -> dict[str, Any]:
        return {"Value": {}}

    def join(self, req: Any) -> dict[str, Any]:
        return {
            "InterfaceName": {"SrcName": "veth0", "DstPrefix": "eth"},
            "Gateway": "198.18.2.1/24",
        }

    def leave(self, req: Any) -> dict[str, str]:
        return {}

    def delete_endpoint(self, req: Any) -> dict[str, str]:
        return {}


def test_broken_network_fails_the_right_checks(serve_plugin: Serve) -> None:
    plugin = serve_plugin(BrokenNetwork(), name="h-net-broken")
    report = run(plugin.url, "network", timeout=10)
    by_id = report.by_id()
    assert failed(report) == {"N02", "N05", "N07", "N10"}, not_passed(report)
    assert "'Local' is not exactly 'local' or 'global'" in by_id["N02"].evidence
    assert "driver modified interface address" in by_id["N05"].evidence
    assert "not a plain IP" in by_id["N07"].evidence
    assert "network never created" in by_id["N10"].evidence


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a network namespace with bridges and veth pairs)"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs the {tool} command"
    return None


@pytest.mark.root
@pytest.mark.skipif(_netns_unavailable() is not None, reason=str(_netns_unavailable()))
def test_network_example_in_its_own_namespace(short_tmp: Path, tmp_path: Path) -> None:
    """The veth driver in a fresh network namespace, checked by ``dockplug check`` entering that
    namespace: bridge, veth pair and their removal are real."""
    sock = short_tmp / "veth.sock"
    args = [
        "serve", f"{REPO}/examples/network_veth.py:VethDriver",
        "-c", f"state_file={short_tmp / 'state.json'}",
        "--name", "h-veth", "--socket", str(sock), "--announce", "none",
    ]  # fmt: skip
    cmd = ["unshare", "--net", sys.executable, "-m", "dockplug"]
    out = tmp_path / "network.json"
    with SubprocessPlugin(args, wait_for=sock, cmd=cmd) as plugin:
        done = subprocess.run(
            ["nsenter", f"--net=/proc/{plugin.pid}/ns/net", sys.executable, "-m", "dockplug",
             "check", str(sock), "--report", str(out)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr + plugin.output
    data = json.loads(out.read_text())
    assert data["kind"] == "network"  # picked from Activate's Implements
    results = {r["id"]: r for r in data["results"]}
    assert "exists" in results["N07"]["evidence"]
    assert "is gone" in results["N11"]["evidence"]
    assert data["cleanup"] == []


# --- CLI: --type, HTML ------------------------------------------------------------------------


def test_detect_kind_from_implements() -> None:
    assert detect_kind(["IpamDriver"]) == "ipam"
    assert detect_kind(["authz"]) == "authz"
    with pytest.raises(ValueError, match="network and ipam"):
        detect_kind(["NetworkDriver", "IpamDriver", "NetworkDriver"])
    assert detect_kind(["Authz"]) == "authz"  # so that Z01 can report the casing
    with pytest.raises(ValueError, match="give the protocol with --type"):
        detect_kind(["GraphDriver"])


class Both(example("ipam_pools").PoolsDriver, BrokenNetwork):  # type: ignore[misc]
    """One process that is a network and an IPAM driver at once."""


def test_cli_type_detection_and_ambiguity(serve_plugin: Serve, tmp_path: Path) -> None:
    ipam = serve_plugin(example("ipam_pools").PoolsDriver(), name="h-cli-ipam")
    result = CliRunner().invoke(cli, ["check", ipam.url, "--only", "I01", "--only", "I04"])
    assert result.exit_code == 0, result.output
    assert "(ipam)" in result.output and "2 pass" in result.output

    both = serve_plugin(Both(), name="h-cli-both")
    result = CliRunner().invoke(cli, ["check", both.url])
    assert result.exit_code == 1
    assert "announces ipam and network" in result.output
    assert "choose one with --type" in result.output
    result = CliRunner().invoke(cli, ["check", both.url, "--type", "ipam", "--only", "I01"])
    assert result.exit_code == 0, result.output


def test_cli_html_report_is_self_contained_and_escaped(serve_plugin: Serve, tmp_path: Path) -> None:
    class Hostile(BrokenIpam):
        def get_default_address_spaces(self, req: Any) -> dict[str, str]:
            return {"Error": "<script>alert(1)</script> & <img src=x>"}

    plugin = serve_plugin(Hostile(), name="h-html")
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["check", plugin.url, "--type", "ipam", "--report", str(out)])
    assert result.exit_code == 1, result.output
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;img src=x&gt;" in page
    assert 'class="fail">FAIL</td>' in page and "I03" in page
    for external in ("http://", "https://", "src=", "<link"):
        assert external not in page.replace("src=x", ""), external
    # .json stays JSON
    out_json = tmp_path / "report.json"
    CliRunner().invoke(cli, ["check", plugin.url, "--type", "ipam", "--report", str(out_json)])
    assert json.loads(out_json.read_text())["kind"] == "ipam"
