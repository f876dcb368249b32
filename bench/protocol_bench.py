"""Load a volume plugin's unix socket the way dockerd does, and compare peers side by side.

For every peer (dockplug's own driver, rclone's ``serve docker``, anything given with ``--peer``)
the script starts the plugin as a subprocess on a socket in a temp dir, measures how long it takes
until ``Plugin.Activate`` answers (median of ``--starts`` starts), creates one volume through the
socket, then hammers ``VolumeDriver.Get`` for that volume with byte-for-byte the request dockerd
20.10 sends, on 1 and on 8 concurrent keep-alive connections (``--conns``), closed-loop: each
connection has exactly one request in flight, like dockerd's HTTP client.

    python bench/protocol_bench.py [--duration 5] [--json results.json]

The load client is the same for every peer: an asyncio (uvloop if importable) protocol with a
pre-built request, parsing replies by Content-Length (chunked too) and timing every request with
``time.perf_counter_ns``. See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
HELLO_EXAMPLE = REPO / "examples" / "hello_volume.py"
VOLUME = "bv"

# what the numbers are held against (dockplug's targets; shown for every peer)
TARGET_RPS_CONNS = 8
TARGET_RPS = 12_000.0
TARGET_P50_CONNS = 1
TARGET_P50_MS = 0.15
TARGET_START_MS = 120.0
TARGET_IDLE_RSS_MIB = 30.0
# relative targets (issue 16): p50 on 1 conn <= rclone's; req/s on 8 conns >= 0.8x the bare stack
TARGET_BARE_RPS_SHARE = 0.8
BARE_ASGI = Path(__file__).resolve().parent / "bare_asgi.py"

CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_ERROR_SAMPLES = 5


# -- HTTP/1.1 as dockerd speaks it ---------------------------------------------------------


def build_request(endpoint: str, body: bytes, host: str = "") -> bytes:
    """The bytes dockerd's Go client writes: header order and values as recorded from 20.10."""
    head = (
        f"POST /{endpoint} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "User-Agent: Go-http-client/1.1\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Accept: application/vnd.docker.plugins.v1.2+json\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


def json_body(value: object) -> bytes:
    """A body as Go's json.Encoder writes it: compact, with a trailing newline."""
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


class BadReply(Exception):
    """The peer sent something that is not a well-formed HTTP/1.1 response."""


@dataclass(slots=True)
class Reply:
    consumed: int
    status: int
    body: bytes
    close: bool


def _chunked_body(buf: bytearray | bytes, pos: int) -> tuple[int, bytes] | None:
    """(end offset, body) of a chunked body starting at ``pos``, or None if incomplete."""
    pieces: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        except ValueError:
            raise BadReply(f"bad chunk size line {bytes(buf[pos:eol])[:40]!r}") from None
        pos = eol + 2
        if size == 0:
            if buf[pos : pos + 2] == b"\r\n":
                return pos + 2, b"".join(pieces)
            end = buf.find(b"\r\n\r\n", pos)  # trailer headers
            return None if end < 0 else (end + 4, b"".join(pieces))
        if len(buf) < pos + size + 2:
            return None
        pieces.append(bytes(buf[pos : pos + size]))
        pos += size + 2


def parse_reply(buf: bytearray | bytes) -> Reply | None:
    """One complete response at the start of ``buf``, or None if more bytes are needed."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 65536:
            raise BadReply("no end of headers within 64 KiB")
        return None
    head = bytes(buf[:end]).lower()
    if not head.startswith(b"http/1.") or len(head) < 12:
        raise BadReply(f"not an HTTP/1.x status line: {bytes(buf[:40])!r}")
    try:
        status = int(head[9:12])
    except ValueError:
        raise BadReply(f"bad status line {bytes(buf[:40])!r}") from None
    close = b"\r\nconnection: close" in head
    start = end + 4
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        eol = head.find(b"\r\n", at + 17)
        try:
            length = int(head[at + 17 : eol if eol >= 0 else len(head)])
        except ValueError:
            raise BadReply("bad Content-Length") from None
        if len(buf) < start + length:
            return None
        return Reply(start + length, status, bytes(buf[start : start + length]), close)
    if b"\r\ntransfer-encoding:" in head and b"chunked" in head:
        chunked = _chunked_body(buf, start)
        if chunked is None:
            return None
        return Reply(chunked[0], status, chunked[1], close)
    if status in (204, 304) or 100 <= status < 200:
        return Reply(start, status, b"", close)
    raise BadReply(f"HTTP {status} reply with neither Content-Length nor chunked encoding")


def call(
    sock_path: Path, endpoint: str, body: bytes, host: str = "", timeout: float = 5.0
) -> Reply:
    """One blocking request on a fresh connection (set-up, readiness probes, checks)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(sock_path))
        sock.sendall(build_request(endpoint, body, host))
        buf = bytearray()
        while True:
            reply = parse_reply(buf)
            if reply is not None:
                return reply
            data = sock.recv(65536)
            if not data:
                raise BadReply(f"connection closed after {len(buf)} bytes of reply")
            buf += data


# -- the load client -------------------------------------------------------------------------


@dataclass
class Load:
    """Shared state of one scenario: what to send, what counts, what was seen."""

    request: bytes
    marker: bytes  # must occur in every good reply body
    recording: bool = False
    stopping: bool = False
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.samples) < MAX_ERROR_SAMPLES:
            self.samples.append(f"{kind}: {detail}")


class Connection(asyncio.Protocol):
    """One keep-alive connection with exactly one request in flight, like dockerd's client."""

    def __init__(self, load: Load, done: asyncio.Future[None]) -> None:
        self.load = load
        self.done = done
        self.buf = bytearray()
        self.sent_at = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter_ns()
        self.transport.write(self.load.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        load = self.load
        self.buf += data
        try:
            reply = parse_reply(self.buf)
        except BadReply as exc:
            load.error("bad reply", str(exc))
            self._finish(close=True)
            return
        if reply is None:
            return
        del self.buf[: reply.consumed]
        if self.buf:
            load.error("bad reply", f"{len(self.buf)} unexpected bytes after a reply")
            self.buf.clear()
        if reply.status != 200:
            load.error(f"HTTP {reply.status}", reply.body[:160].decode("utf-8", "replace"))
        elif load.marker not in reply.body:
            load.error("unexpected body", reply.body[:160].decode("utf-8", "replace"))
        elif load.recording:
            load.latencies_ns.append(now - self.sent_at)
        if load.stopping or reply.close:
            self._finish(close=True)
        else:
            self._send()

    def _finish(self, close: bool) -> None:
        if close and self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.load.stopping and not self.done.done():
            self.load.error("connection lost", str(exc) if exc else "closed by the peer")
        self._finish(close=False)


async def _keep_connected(sock_path: Path, load: Load) -> None:
    """One client connection for the whole scenario; reconnects if the peer hangs up."""
    loop = asyncio.get_running_loop()
    while not load.stopping:
        done: asyncio.Future[None] = loop.create_future()
        try:
            transport, _ = await loop.create_unix_connection(
                functools.partial(Connection, load, done), os.fspath(sock_path)
            )
        except OSError as exc:
            load.error("connect failed", str(exc))
            await asyncio.sleep(0.1)
            continue
        try:
            await done
        finally:
            transport.close()


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy (not idle or iowait), from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class ScenarioResult:
    conns: int
    seconds: float
    requests: int
    errors: int
    error_kinds: dict[str, int]
    error_samples: list[str]
    rps: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_us_per_req: float | None
    client_cpu_us_per_req: float | None
    client_cpu_share: float  # client CPU seconds / wall seconds (1.0 = one core saturated)
    other_cpu_share: float  # everything else on the machine, in cores: noise from neighbours


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_ns:
        return float("nan")
    rank = min(len(sorted_ns) - 1, max(0, math.ceil(q * len(sorted_ns)) - 1))
    return sorted_ns[rank] / 1e6


async def run_scenario(
    sock_path: Path,
    pid: int,
    request: bytes,
    conns: int,
    warmup: float,
    duration: float,
    marker: bytes = b'"Volume"',
) -> ScenarioResult:
    load = Load(request=request, marker=marker)
    workers = [asyncio.create_task(_keep_connected(sock_path, load)) for _ in range(conns)]
    await asyncio.sleep(warmup)
    cpu0, srv0, all0 = time.process_time(), proc_cpu_seconds(pid), machine_busy_seconds()
    started = time.perf_counter_ns()
    load.recording = True
    await asyncio.sleep(duration)
    load.recording = False
    elapsed = (time.perf_counter_ns() - started) / 1e9
    cpu1, srv1, all1 = time.process_time(), proc_cpu_seconds(pid), machine_busy_seconds()
    load.stopping = True
    _, pending = await asyncio.wait(workers, timeout=5.0)
    for task in pending:  # a peer that stopped answering: count it, don't hang
        load.error("no reply at the end", "request still in flight 5 s after the run")
        task.cancel()
    lat = sorted(load.latencies_ns)
    n = len(lat)
    return ScenarioResult(
        conns=conns,
        seconds=elapsed,
        requests=n,
        errors=sum(load.errors.values()),
        error_kinds=dict(load.errors),
        error_samples=load.samples,
        rps=n / elapsed,
        mean_ms=(sum(lat) / n / 1e6) if n else float("nan"),
        p50_ms=percentile(lat, 0.50),
        p90_ms=percentile(lat, 0.90),
        p99_ms=percentile(lat, 0.99),
        max_ms=lat[-1] / 1e6 if n else float("nan"),
        server_cpu_us_per_req=(srv1 - srv0) / n * 1e6 if n else None,
        client_cpu_us_per_req=(cpu1 - cpu0) / n * 1e6 if n else None,
        client_cpu_share=(cpu1 - cpu0) / elapsed,
        other_cpu_share=max(0.0, (all1 - all0) - (srv1 - srv0) - (cpu1 - cpu0)) / elapsed,
    )


# -- peers -----------------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    argv: list[str]
    create_body: bytes
    workdir: Path
    socket: Path
    variant: str = ""  # shown next to the name, e.g. "serve local"
    notes: list[str] = field(default_factory=list)
    fallback: Callable[[], Peer] | None = None
    fresh: list[Path] = field(default_factory=list)  # state removed before each round
    #: what Plugin.Activate must list before the peer counts as started
    implements: bytes = b"VolumeDriver"
    #: the call loaded (shown in the table) and how to get ready for it: returns the request
    #: bytes and a marker every good reply body contains; None: a volume is created, Get loaded
    call: str = "VolumeDriver.Get"
    prepare: Callable[[Peer, str], tuple[bytes, bytes]] | None = None


@dataclass
class PeerResult:
    name: str
    command: list[str]
    variant: str = ""
    call: str = "VolumeDriver.Get"
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    start_ms: list[float] = field(default_factory=list)
    start_ms_median: float | None = None
    rss_idle_mib: float | None = None
    rss_after_load_mib: float | None = None
    scenarios: list[ScenarioResult] = field(default_factory=list)

    def scenario(self, conns: int) -> ScenarioResult | None:
        return next((s for s in self.scenarios if s.conns == conns), None)


class Started:
    """A running peer process, its log file, and how long it took to answer Activate."""

    def __init__(self, proc: subprocess.Popen[bytes], log: IO[bytes], ready_ms: float) -> None:
        self.proc = proc
        self.log = log
        self.ready_ms = ready_ms

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class StartFailed(Exception):
    pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_peer(peer: Peer, host: str, timeout: float) -> Started:
    """Start the peer and poll (every ~1 ms) until Plugin.Activate answers 200."""
    with contextlib.suppress(FileNotFoundError):
        peer.socket.unlink()
    log_path = peer.workdir / "plugin.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed by Started.stop
    began = time.perf_counter()
    try:
        proc = subprocess.Popen(
            peer.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=peer.workdir,
        )  # fmt: skip
    except OSError as exc:
        log.close()
        raise StartFailed(f"cannot run {peer.argv[0]}: {exc}") from exc
    started = Started(proc, log, 0)
    try:
        while True:
            if proc.poll() is not None:
                log.close()
                raise StartFailed(f"exited with {proc.returncode}:\n{_tail(log_path)}")
            if time.perf_counter() - began > timeout:
                raise StartFailed(f"no answer on {peer.socket} within {timeout:.0f} s")
            try:
                reply = call(peer.socket, "Plugin.Activate", b"", host, timeout=2.0)
            except (OSError, BadReply):
                time.sleep(0.001)
                continue
            if reply.status == 200 and peer.implements in reply.body:
                started.ready_ms = (time.perf_counter() - began) * 1000
                return started
            raise StartFailed(f"Plugin.Activate answered {reply.status}: {reply.body[:200]!r}")
    except BaseException:  # also Ctrl-C: never leave a plugin process behind
        started.stop()
        raise


def create_volume(peer: Peer, host: str) -> None:
    """What dockerd does for `docker volume create`: Capabilities, Get (missing), Create, Get."""
    sock = peer.socket
    call(sock, "VolumeDriver.Capabilities", json_body({}), host)
    call(sock, "VolumeDriver.Get", json_body({"Name": VOLUME}), host)
    reply = call(sock, "VolumeDriver.Create", peer.create_body, host, timeout=30.0)
    if reply.status != 200 or b'"Err":"' in reply.body.replace(b" ", b""):
        raise StartFailed(f"Create answered {reply.status}: {reply.body[:300]!r}")
    reply = call(sock, "VolumeDriver.Get", json_body({"Name": VOLUME}), host)
    if reply.status != 200 or b'"Volume"' not in reply.body:
        raise StartFailed(f"Get after Create answered {reply.status}: {reply.body[:300]!r}")


def dockplug_peer(root: Path, template: str | None) -> Peer:
    work = root / "dockplug"
    work.mkdir()
    sock = work / "plugin.sock"
    if template is not None:
        argv = expand(template, work, sock)
        body = json_body({"Name": VOLUME, "Opts": None})
        return Peer("dockplug", argv, body, work, sock, variant="--dockplug-cmd")
    argv = [
        sys.executable, "-m", "dockplug", "serve", "local", "--name", "bench-dockplug",
        "--socket", str(sock), "--base-dir", str(work / "vols"), "--state-dir",
        str(work / "state"), "--announce", "none", "--spec-dir", str(work / "spec"),
    ]  # fmt: skip

    def hello() -> Peer:
        argv = [
            sys.executable, "-m", "dockplug", "serve", f"{HELLO_EXAMPLE}:HelloDriver",
            "-c", f"base={work / 'vols'}", "--name", "bench-hello", "--socket", str(sock),
            "--announce", "none", "--spec-dir", str(work / "spec"),
        ]  # fmt: skip
        return Peer(
            "dockplug", argv, json_body({"Name": VOLUME, "Opts": None}), work, sock, "hello",
            notes=["`serve local` did not start: measured examples/hello_volume.py:HelloDriver"],
        )  # fmt: skip

    body = json_body({"Name": VOLUME, "Opts": None})
    return Peer("dockplug", argv, body, work, sock, "serve local", fallback=hello,
                fresh=[work / "vols", work / "state"])  # fmt: skip


def rclone_peer(root: Path, binary: str) -> Peer:
    work = root / "rclone"
    work.mkdir()
    (work / "rclone.conf").touch()
    (work / "rdata").mkdir()
    sock = work / "plugin.sock"
    argv = [
        binary, "serve", "docker", "--base-dir", str(work / "rvols"), "--socket-addr", str(sock),
        "--config", str(work / "rclone.conf"), "--cache-dir", str(work / "cache"),
    ]  # fmt: skip
    # Create only records the volume; rclone mounts (FUSE) on the first Mount, so Get needs none
    body = json_body({"Name": VOLUME, "Opts": {"type": "local", "path": str(work / "rdata")}})
    return Peer("rclone", argv, body, work, sock, fresh=[work / "rvols", work / "cache"])


def _dockplug_argv(driver: str, name: str, work: Path, sock: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "dockplug", "serve", driver, "--name", name, "--socket", str(sock),
        "--announce", "none", "--spec-dir", str(work / "spec"), *extra,
    ]  # fmt: skip


def _checked(sock: Path, endpoint: str, body: object, host: str) -> dict[str, Any]:
    reply = call(sock, endpoint, json_body(body), host, timeout=30.0)
    data = json.loads(reply.body or b"{}")
    if reply.status != 200 or not isinstance(data, dict) or data.get("Err") or data.get("Error"):
        raise StartFailed(f"{endpoint} answered {reply.status}: {reply.body[:300]!r}")
    return data


def net_peer(root: Path) -> Peer:
    """``dockplug serve net`` on its SQLite store (no etcd): RequestAddress as dockerd sends it
    for ``docker run`` (one PoolID, ``Address: ""``, the MAC in Options); every call claims a
    new address with its own transaction, in a /12 pool that a round cannot exhaust."""
    work = root / "net"
    work.mkdir()
    sock = work / "plugin.sock"
    argv = _dockplug_argv(
        "net", "bench-net", work, sock, "--state-dir", str(work / "state"), "--host-id", "b1",
        "--docker-host", "unix:///nonexistent/docker.sock",
    )  # fmt: skip

    def prepare(peer: Peer, host: str) -> tuple[bytes, bytes]:
        pool = _checked(peer.socket, "IpamDriver.RequestPool",
                        {"AddressSpace": "LocalDefault", "Pool": "10.96.0.0/12"}, host)  # fmt: skip
        mac = {"com.docker.network.endpoint.macaddress": "02:42:0a:00:00:01"}
        body = {"PoolID": pool["PoolID"], "Address": "", "Options": mac}
        return build_request("IpamDriver.RequestAddress", json_body(body), host), b'"Address"'

    return Peer("dockplug-net", argv, b"", work, sock, variant="serve net, SQLite",
                fresh=[work / "state"], implements=b"IpamDriver",
                call="IpamDriver.RequestAddress", prepare=prepare)  # fmt: skip


AUTHZ_POLICY = REPO / "examples" / "authz" / "safe"


def authz_peer(root: Path) -> Peer:
    """``dockplug serve authz`` with examples/authz/safe and its audit log on: the AuthZReq of
    a ``docker run -v /srv/a:/a`` container create (body base64'd as dockerd sends it), which
    the policy allows after reading the binds."""
    import base64

    work = root / "authz"
    work.mkdir()
    sock = work / "plugin.sock"
    argv = _dockplug_argv(
        "authz", "bench-authz", work, sock, "--policy", str(AUTHZ_POLICY),
        "--audit-log", str(work / "audit.log"), "--watch-interval", "0",
    )  # fmt: skip
    create = {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"Binds": ["/srv/a:/a"]}}
    body = {
        "User": "", "UserAuthNMethod": "", "RequestMethod": "POST",
        "RequestUri": "/v1.41/containers/create",
        "RequestHeaders": {"Content-Type": "application/json", "User-Agent": "Docker-Client"},
        "RequestBody": base64.b64encode(json.dumps(create).encode()).decode(),
    }  # fmt: skip

    def prepare(peer: Peer, host: str) -> tuple[bytes, bytes]:
        data = _checked(peer.socket, "AuthZPlugin.AuthZReq", body, host)
        if data.get("Allow") is not True:
            raise StartFailed(f"the policy did not allow the bench's request: {data}")
        return build_request("AuthZPlugin.AuthZReq", json_body(body), host), b'"Allow":true'

    return Peer("dockplug-authz", argv, b"", work, sock, variant="serve authz, safe policy",
                fresh=[work / "audit.log"], implements=b"authz",
                call="AuthZPlugin.AuthZReq", prepare=prepare)  # fmt: skip


def bare_peer(root: Path) -> Peer:
    """uvicorn+httptools answering fixed JSON: the ceiling of a uvicorn-based plugin."""
    work = root / "bare"
    work.mkdir()
    sock = work / "plugin.sock"
    argv = [sys.executable, str(BARE_ASGI), str(sock)]
    return Peer("bare", argv, json_body({"Name": VOLUME, "Opts": None}), work, sock,
                variant="uvicorn+httptools, fixed JSON")  # fmt: skip


def merge_rounds(rounds: list[PeerResult]) -> PeerResult:
    """One peer's rounds as one result: every start kept, other figures the median over the
    rounds (request and error counts summed)."""
    good = [r for r in rounds if not r.skipped]
    if not good:
        return rounds[0]
    first = good[0]
    merged = PeerResult(first.name, first.command, first.variant, first.call, list(first.notes))
    merged.start_ms = [ms for r in good for ms in r.start_ms]
    merged.start_ms_median = statistics.median(merged.start_ms) if merged.start_ms else None
    idle = [r.rss_idle_mib for r in good if r.rss_idle_mib is not None]
    loaded = [r.rss_after_load_mib for r in good if r.rss_after_load_mib is not None]
    merged.rss_idle_mib = statistics.median(idle) if idle else None
    merged.rss_after_load_mib = statistics.median(loaded) if loaded else None
    for sc in first.scenarios:
        same = [x for r in good if (x := r.scenario(sc.conns)) is not None]

        def med(name: str, same: list[ScenarioResult] = same) -> Any:
            values = [getattr(x, name) for x in same if getattr(x, name) is not None]
            return statistics.median(values) if values else None

        kinds: Counter[str] = Counter()
        for x in same:
            kinds.update(x.error_kinds)
        one = ScenarioResult(
                conns=sc.conns, seconds=sum(x.seconds for x in same),
                requests=sum(x.requests for x in same), errors=sum(x.errors for x in same),
                error_kinds=dict(kinds),
                error_samples=[e for x in same for e in x.error_samples][:MAX_ERROR_SAMPLES],
                rps=med("rps"), mean_ms=med("mean_ms"), p50_ms=med("p50_ms"),
                p90_ms=med("p90_ms"), p99_ms=med("p99_ms"), max_ms=max(x.max_ms for x in same),
                server_cpu_us_per_req=med("server_cpu_us_per_req"),
                client_cpu_us_per_req=med("client_cpu_us_per_req"),
                client_cpu_share=med("client_cpu_share"),
                other_cpu_share=med("other_cpu_share"),
        )  # fmt: skip
        merged.scenarios.append(one)
    if len(good) > 1:
        merged.notes.append(f"median of {len(good)} interleaved rounds")
    return merged


def expand(template: str, work: Path, sock: Path) -> list[str]:
    values = {"python": sys.executable, "socket": str(sock), "dir": str(work), "repo": str(REPO)}
    return [part.format(**values) for part in shlex.split(template)]


def extra_peer(root: Path, spec: str) -> Peer:
    name, sep, template = spec.partition("=")
    if not sep or not name or not template or "/" in name or name in ("dockplug", "rclone"):
        raise SystemExit(f"--peer {spec!r}: expected NAME=COMMAND with a new plain NAME")
    work = root / f"peer-{name}"
    work.mkdir()
    sock = work / "plugin.sock"
    return Peer(name, expand(template, work, sock), json_body({"Name": VOLUME, "Opts": None}),
                work, sock)  # fmt: skip


def bench_peer(peer: Peer, args: argparse.Namespace, runner: asyncio.Runner) -> PeerResult:
    console = Console(stderr=True)
    result = PeerResult(peer.name, peer.argv, peer.variant, peer.call, list(peer.notes))
    console.print(f"[bold]{peer.name}[/]: {shlex.join(peer.argv)}")
    for path in peer.fresh:  # each round creates its volume (pool, audit log) anew
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    started: Started | None = None
    try:
        for i in range(args.starts):
            try:
                started = start_peer(peer, args.host, args.ready_timeout)
            except StartFailed as exc:
                if i == 0 and peer.fallback is not None:
                    console.print(f"  [yellow]{peer.name} failed to start[/]: {exc}")
                    console.print("  falling back to examples/hello_volume.py:HelloDriver")
                    return bench_peer(peer.fallback(), args, runner)
                raise
            result.start_ms.append(started.ready_ms)
            if i < args.starts - 1:
                started.stop()
                started = None
        assert started is not None
        result.start_ms_median = statistics.median(result.start_ms)
        console.print(
            f"  ready in {result.start_ms_median:.0f} ms (median of {args.starts}: "
            + ", ".join(f"{ms:.0f}" for ms in result.start_ms)
            + ")"
        )
        time.sleep(args.settle)
        pid = started.proc.pid
        result.rss_idle_mib = rss_mib(pid)
        if peer.prepare is None:
            create_volume(peer, args.host)
            request = build_request("VolumeDriver.Get", json_body({"Name": VOLUME}), args.host)
            marker = b'"Volume"'
        else:
            request, marker = peer.prepare(peer, args.host)
        for conns in args.conns:
            console.print(f"  {conns} connection(s): {args.warmup:g} s warm-up, "
                          f"{args.duration:g} s measured")  # fmt: skip
            coro: Coroutine[Any, Any, ScenarioResult] = run_scenario(
                peer.socket, pid, request, conns, args.warmup, args.duration, marker
            )
            result.scenarios.append(runner.run(coro))
            if started.proc.poll() is not None:
                raise StartFailed(f"died under load (exit {started.proc.returncode})")
        time.sleep(args.settle)
        result.rss_after_load_mib = rss_mib(pid)
    except (StartFailed, OSError, BadReply) as exc:
        result.skipped = f"failed: {exc}"
        console.print(f"  [red]{peer.name} failed[/]: {exc}")
    finally:
        if started is not None:
            started.stop()
    return result


# -- report ----------------------------------------------------------------------------------


def _label(res: PeerResult) -> str:
    return f"{res.name} ({res.variant})" if res.variant else res.name


def _mark(ok: bool) -> str:
    return "[green]✔[/]" if ok else "[red]✘[/]"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(results: list[PeerResult], args: argparse.Namespace, console: Console) -> list[str]:
    """Prints the tables; returns the ratio lines (also kept in the JSON)."""
    table = Table(title=f"{args.duration:g} s per scenario (closed loop)")
    for col in ("peer", "call", "scenario", "req/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(
            col,
            justify="left" if col in ("peer", "call", "scenario") else "right",
            no_wrap=col in ("peer", "call"),
        )
    table.add_column("srv CPU µs/req", justify="right")
    table.add_column("client CPU", justify="right")
    table.add_column("target", justify="left", no_wrap=True)
    for res in results:
        if res.skipped:
            state = "failed" if res.skipped.startswith("failed") else "skipped"
            table.add_row(_label(res), res.call, f"[yellow]{state}[/]", *[""] * 7)
            continue
        for sc in res.scenarios:
            target = ""
            rps = f"{sc.rps:,.0f}"
            p50 = f"{sc.p50_ms:.3f}"
            volume_get = res.call == "VolumeDriver.Get"  # the fixed targets are Get's
            if volume_get and sc.conns == TARGET_RPS_CONNS:
                ok = sc.rps >= TARGET_RPS
                target = f"req/s ≥ {TARGET_RPS / 1000:g}k {_mark(ok)}"
            if volume_get and sc.conns == TARGET_P50_CONNS:
                ok = sc.p50_ms <= TARGET_P50_MS
                target = f"p50 ≤ {TARGET_P50_MS} ms {_mark(ok)}"
            errors = f"[red]{sc.errors}[/]" if sc.errors else "0"
            table.add_row(
                _label(res), res.call, f"{sc.conns} conn" + ("s" if sc.conns > 1 else ""), rps, p50,
                f"{sc.p99_ms:.3f}", errors, _fmt(sc.server_cpu_us_per_req, ".0f"),
                f"{sc.client_cpu_share:.0%}", target,
            )  # fmt: skip
        table.add_section()
    console.print(table)

    procs = Table(title="Process")
    for col in ("peer", "start ms", "starts (ms)", "idle RSS MiB", "loaded RSS MiB"):
        procs.add_column(col, justify="left" if col in ("peer", "starts (ms)") else "right")
    for res in results:
        if res.skipped:
            continue
        start = _fmt(res.start_ms_median, ".0f")
        if res.start_ms_median is not None:
            start += f" {_mark(res.start_ms_median <= TARGET_START_MS)}"
        idle = _fmt(res.rss_idle_mib, ".1f")
        if res.rss_idle_mib is not None:
            idle += f" {_mark(res.rss_idle_mib <= TARGET_IDLE_RSS_MIB)}"
        procs.add_row(
            _label(res), start, " ".join(f"{ms:.0f}" for ms in res.start_ms), idle,
            _fmt(res.rss_after_load_mib, ".1f"),
        )  # fmt: skip
    console.print(procs)
    console.print(
        f"targets: start ≤ {TARGET_START_MS:.0f} ms (until Plugin.Activate answers), "
        f"idle RSS ≤ {TARGET_IDLE_RSS_MIB:.0f} MiB (VmRSS {args.settle:g} s after start)"
    )

    lines: list[str] = []
    by_name = {r.name: r for r in results if not r.skipped}
    dp, rc, bare = by_name.get("dockplug"), by_name.get("rclone"), by_name.get("bare")
    if dp and bare:
        mine, ceiling = dp.scenario(TARGET_RPS_CONNS), bare.scenario(TARGET_RPS_CONNS)
        if mine and ceiling and ceiling.rps:
            share = mine.rps / ceiling.rps
            lines.append(
                f"dockplug/bare req/s on {TARGET_RPS_CONNS} conns: {share:.2f}x "
                f"(target ≥ {TARGET_BARE_RPS_SHARE}x) {_mark(share >= TARGET_BARE_RPS_SHARE)}"
            )
    if dp and rc:
        mine, go = dp.scenario(TARGET_P50_CONNS), rc.scenario(TARGET_P50_CONNS)
        if mine and go:
            lines.append(
                f"dockplug p50 on {TARGET_P50_CONNS} conn {mine.p50_ms:.3f} ms, rclone "
                f"{go.p50_ms:.3f} ms (target ≤ rclone's) {_mark(mine.p50_ms <= go.p50_ms)}"
            )
        parts = []
        for sc in dp.scenarios:
            other = rc.scenario(sc.conns)
            if other and other.rps:
                parts.append(
                    f"{sc.conns} conn{'s' if sc.conns > 1 else ''}: {sc.rps / other.rps:.2f}x"
                )
        lines.append("dockplug/rclone req/s — " + ", ".join(parts))
        if dp.start_ms_median and rc.start_ms_median:
            lines.append(
                f"dockplug/rclone start-up {dp.start_ms_median / rc.start_ms_median:.1f}x, "
                f"idle RSS {_ratio(dp.rss_idle_mib, rc.rss_idle_mib)}"
            )
    for line in lines:
        console.print(line)
    for res in results:
        if res.skipped:
            console.print(f"[yellow]{_label(res)}[/]: {res.skipped}")
        for note in res.notes:
            console.print(f"[yellow]note[/] {res.name}: {note}")
        for sc in res.scenarios:
            for sample in sc.error_samples:
                console.print(f"[red]error[/] {res.name} {sc.conns} conn: {sample}")
            if sc.other_cpu_share > 0.15:
                console.print(
                    f"[yellow]warning[/] {_label(res)} {sc.conns} conn: other processes used "
                    f"{sc.other_cpu_share:.0%} of a core meanwhile; these numbers are disturbed"
                )
            if sc.client_cpu_share > 0.85:
                console.print(
                    f"[yellow]warning[/] {res.name} {sc.conns} conn: the load client used "
                    f"{sc.client_cpu_share:.0%} of a core; it may be limiting req/s"
                )
    return lines


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}x" if a and b else "-"


def _finite(value: Any) -> Any:
    """NaN (no samples) becomes null, so the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def parse_conns(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 1,8") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 1,8")
    return values


def compile_bytecode(console: Console) -> None:
    """Byte-compiles the dockplug that the peers run, as ``pip install`` does for an installed
    package. An editable checkout has no ``__pycache__`` when PYTHONDONTWRITEBYTECODE is set
    (it is on these machines), and each start would then compile every module it imports
    (~40-150 ms): that would measure the checkout, not the plugin."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("dockplug")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if not compileall.compile_dir(folder, quiet=1):
            console.print(f"[yellow]could not byte-compile {folder}[/]")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        console.print("PYTHONDONTWRITEBYTECODE is set: dockplug was byte-compiled first")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark volume plugins over a unix socket, the way dockerd calls them.",
        epilog="Command templates may use {python}, {socket}, {dir} and {repo}.",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per scenario")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per scenario")
    parser.add_argument("--conns", type=parse_conns, default=[1, 8], help="scenarios (default 1,8)")
    parser.add_argument("--starts", type=int, default=5, help="starts timed per peer (median)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds to wait before reading idle and after-load RSS")  # fmt: skip
    parser.add_argument("--ready-timeout", type=float, default=15.0)
    parser.add_argument("--host", default="", help="Host header (dockerd: empty)")
    parser.add_argument("--dockplug-cmd", metavar="CMD",
                        help="command for the dockplug peer (default: serve local)")  # fmt: skip
    parser.add_argument("--rclone", default="rclone", help="rclone binary")
    parser.add_argument("--no-rclone", action="store_true", help="leave rclone out")
    parser.add_argument("--no-drivers", action="store_true",
                        help="leave out the other drivers' hot paths (net, authz)")  # fmt: skip
    parser.add_argument("--no-bare", action="store_true",
                        help="leave out the bare uvicorn+httptools peer")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleaved rounds over all peers; figures are medians")  # fmt: skip
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=CMD",
                        help="another plugin to measure (repeatable)")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="FILE", help="write all numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, state)")
    args = parser.parse_args(argv)
    if args.starts < 1:
        parser.error("--starts must be at least 1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    console = Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True)
    root = Path(tempfile.mkdtemp(prefix="dpbench-"))
    loop_name = "asyncio"
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
        loop_name = f"uvloop {getattr(uvloop, '__version__', '?')}"
    except ImportError:
        pass

    peers: list[Peer] = [dockplug_peer(root, args.dockplug_cmd)]
    results: list[PeerResult] = []
    if args.no_rclone:
        pass
    elif shutil.which(args.rclone) is None:
        results.append(PeerResult("rclone", [args.rclone], skipped="rclone is not installed"))
        err.print("[yellow]rclone is not installed: skipped[/]")
    else:
        peers.append(rclone_peer(root, shutil.which(args.rclone) or args.rclone))
    if not args.no_bare:
        try:
            import uvicorn  # noqa: F401
        except ImportError:
            results.append(PeerResult("bare", ["uvicorn"], skipped="uvicorn is not installed"))
        else:
            peers.append(bare_peer(root))
    peers += [extra_peer(root, spec) for spec in args.peer]
    if not args.no_drivers:
        peers += [net_peer(root), authz_peer(root)]

    compile_bytecode(err)
    err.print(f"client: {loop_name}, {os.cpu_count()} CPUs shared by client and plugin; "
              f"work dir {root}")  # fmt: skip
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            rounds: list[list[PeerResult]] = [[] for _ in peers]
            for _ in range(args.rounds):  # interleaved, so drift on the machine hits all alike
                for i, peer in enumerate(peers):
                    rounds[i].append(bench_peer(peer, args, runner))
            measured = [merge_rounds(r) for r in rounds]
        results = measured[:1] + results + measured[1:]
        lines = report(results, args, console)
    finally:
        if args.keep:
            err.print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    if args.json:
        payload = {
            "config": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "conns": args.conns,
                "starts": args.starts,
                "host_header": args.host,
                "client_loop": loop_name,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "kernel": platform.release(),
            },
            "targets": {
                "rps_8_conns_min": TARGET_RPS,
                "p50_1_conn_ms_max": TARGET_P50_MS,
                "start_ms_max": TARGET_START_MS,
                "idle_rss_mib_max": TARGET_IDLE_RSS_MIB,
                "rps_8_conns_share_of_bare_min": TARGET_BARE_RPS_SHARE,
                "p50_1_conn_max": "rclone's in the same run",
            },
            "rounds": args.rounds,
            "peers": [_finite(asdict(r)) for r in results],
            "ratios": lines,
        }
        args.json.write_text(json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n")
        err.print(f"wrote {args.json}")
    failed = any(r.skipped and r.skipped.startswith("failed") for r in results)
    errored = any(sc.errors for r in results for sc in r.scenarios)
    return 1 if failed or errored else 0


if __name__ == "__main__":
    sys.exit(main())
