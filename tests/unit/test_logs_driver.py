"""dockplug-logs without dockerd: the segment store, the FIFO splitter, rejoining, caps, the
options, and the sinks against real rsyslog (TCP and TLS) and a recording HTTP server."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dockplug.client import PluginClient
from dockplug.drivers.log import readlogs
from dockplug.drivers.log.config import LOG_OPTIONS, LogSettings, settings
from dockplug.drivers.log.driver import LogsDriver
from dockplug.drivers.log.fifo import Splitter
from dockplug.drivers.log.forwarder import Route
from dockplug.drivers.log.segments import Cursor, SegmentLog, frame_local, split_local
from dockplug.drivers.log.sinks import Message, Meta, SinkError
from dockplug.drivers.log.sinks.http import HttpSink
from dockplug.drivers.log.sinks.syslog import SyslogSink
from dockplug.errors import InvalidOption
from dockplug.protocol.log import frame
from dockplug.protocol.logentry import LogEntry, PartialMetadata, decode, encode
from dockplug.testing.logsinks import Rsyslog, rsyslog_unavailable
from dockplug.testing.pki import Certificates
from dockplug.testing.servers import SubprocessPlugin, ThreadedPlugin, wait_until


def _entries(n: int, start: int = 0) -> list[bytes]:
    t = time.time_ns()
    return [
        encode(LogEntry("stdout", t + i, f"line {i}".encode())) for i in range(start, start + n)
    ]


def test_segments_rotate_compress_and_keep_max_file(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path / "c", max_size=10_000, max_file=3)
    for i in range(100):
        log.append(_entries(10, i * 10))
    assert len(log.segments) == 3
    assert wait_until(lambda: len(list(log.dir.glob("*.gz"))) == 2, 10)
    got = [decode(p).line for p in Cursor(log, log.start())]
    assert got[-1] == b"line 999" and len(got) < 1000
    assert got == [f"line {i}".encode() for i in range(1000 - len(got), 1000)]
    tail = [decode(p).line for p in Cursor(log, log.tail(len(got) - 1))]  # across segments
    assert tail == got[1:]


def test_a_torn_tail_is_cut_when_reopened(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path / "c", 1 << 20, 3)
    log.append(_entries(5))
    log.close()
    head = tmp_path / "c" / "000000000001.log"
    with head.open("ab") as f:
        f.write(b"\0\0\0\x40half a record")
    again = SegmentLog(tmp_path / "c", 1 << 20, 3)
    assert [decode(p).line for p in Cursor(again, again.start())][-1] == b"line 4"
    again.append(_entries(1, 5))
    assert len(list(Cursor(again, again.start()))) == 6


def _lines(framed: bytes) -> list[bytes]:
    payloads, used = split_local(framed)
    assert used == len(framed)
    return [decode(p).line for p in payloads]


def test_the_splitter_finds_the_next_record_after_a_restart() -> None:
    """A killed plugin may have read the start of a record; its successor must resync."""
    stream = b"".join(frame(p) for p in _entries(50))
    cut = 7 + len(frame(_entries(1)[0])) * 3  # inside the fourth record
    splitter = Splitter(resync=True)
    framed, count = splitter.feed(stream[cut:])
    assert _lines(framed) == [f"line {i}".encode() for i in range(4, 50)] and count == 46
    assert 0 < splitter.skipped < 40


def test_the_splitter_copies_records_through_across_reads_and_out_of_step_sizes() -> None:
    """Records cut anywhere by the reads come out whole, in the segments' framing, byte for
    byte the FIFO's payloads; a size over the limit mid-stream makes it look for the next."""
    payloads = _entries(300)
    stream = b"".join(frame(p) for p in payloads)
    splitter = Splitter()
    out, total = b"", 0
    for i in range(0, len(stream), 97):  # 97 bytes a read: every record is cut somewhere
        framed, count = splitter.feed(stream[i : i + 97])
        out, total = out + framed, total + count
    assert out == frame_local(payloads) and total == 300 and splitter.pending == 0
    garbage = b"\xff\xff\xff\xff" + b"\x01" * 10
    framed, count = splitter.feed(frame(payloads[0]) + garbage + frame(payloads[1]))
    assert split_local(framed)[0] == payloads[:2] and count == 2 and splitter.skipped > 0


def test_a_batch_is_cut_at_the_record_that_reaches_max_size(tmp_path: Path) -> None:
    """One append of many records (a whole FIFO read) still rotates at max-size: each
    segment ends with the record that reached it, the rest go on in the next."""
    log = SegmentLog(tmp_path / "c", max_size=10_000, max_file=100, compress=False)
    payloads = _entries(1000)
    log.append_framed(frame_local(payloads))
    sizes = [(tmp_path / "c" / f"{seq:012d}.log").stat().st_size for seq in log.segments]
    record = len(payloads[0]) + 8
    assert all(10_000 <= s < 10_000 + record for s in sizes[:-1]), sizes
    assert sum(sizes) == len(frame_local(payloads)) and len(sizes) > 2
    assert [decode(p).line for p in Cursor(log, log.start())] == [
        f"line {i}".encode() for i in range(1000)
    ]


def _route(log: SegmentLog, cap: int = 1 << 20, running: bool = True) -> Route:
    c = SimpleNamespace(log=log, settings=LogSettings(max_line_size=cap), running=running,
                        entries=0)  # fmt: skip
    return Route(c, log.start(), 0, Cursor(log, log.start()))  # type: ignore[arg-type]


def _pieces(line: bytes, pid: str, t: int) -> list[bytes]:
    parts = [line[i : i + 16384] for i in range(0, len(line), 16384)]
    return [encode(LogEntry("stdout", t + k, p, True, PartialMetadata(k == len(parts) - 1, pid,
                                                                     k + 1)))
            for k, p in enumerate(parts)]  # fmt: skip


def test_split_lines_are_rejoined_and_positions_never_fall_inside_one(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path / "c", 1 << 30, 3)
    line = b"z" * 50_000
    pieces = _pieces(line, "a", time.time_ns())
    log.append(_entries(2) + pieces[:2])
    route = _route(log)
    messages, pos, sent = route.collect(1 << 20)
    assert [m.line for m in messages] == [b"line 0", b"line 1"] and sent == 2
    assert pos is not None
    route.commit(pos, sent)
    log.append(pieces[2:])
    messages, pos, sent = route.collect(1 << 20)
    assert [m.line for m in messages] == [line] and messages[0].pieces == 4 and sent == 6
    capped = _route(log, cap=20_000)
    lines = [m.line for m in capped.collect(1 << 20)[0]]
    assert lines[2:] == [b"z" * 32768, b"z" * (50_000 - 32768)]


class _Recorder(http.server.BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]] = []
    reply: tuple[int, bytes] = (204, b"")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append((self.path, body))
        status, payload = type(self).reply
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Rec", (_Recorder,), {"bodies": [], "reply": (204, b"")})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()


META = Meta("c" * 64, "web", "busybox", "sha256:" + "b" * 64, "web", {"app": "shop"},
            {"SERVICE": "cart"})  # fmt: skip


def test_loki_push_body(recorder: tuple[str, type[_Recorder]]) -> None:
    address, handler = recorder
    sink = HttpSink(f"loki+http://{address}/loki/api/v1/push")
    sink.send(META, [Message(1_700_000_000_000_000_001, "stdout", b"hello"),
                     Message(1_700_000_000_000_000_002, "stderr", b"oops")])  # fmt: skip
    path, body = handler.bodies[0]
    assert path == "/loki/api/v1/push"
    streams = {s["stream"]["source"]: s for s in json.loads(body)["streams"]}
    assert streams["stdout"]["values"] == [["1700000000000000001", "hello"]]
    assert streams["stderr"]["stream"]["container_name"] == "web"
    assert streams["stderr"]["stream"]["app"] == "shop"
    handler.reply = (500, b"ingester down")
    with pytest.raises(SinkError, match="500"):
        sink.send(META, [Message(1, "stdout", b"x")])


def test_elasticsearch_bulk_body_and_item_errors(recorder: tuple[str, type[_Recorder]]) -> None:
    address, handler = recorder
    handler.reply = (200, b'{"errors": false, "items": []}')
    sink = HttpSink(f"elasticsearch+http://{address}/docker-logs")
    sink.send(META, [Message(1_700_000_000_000_000_000, "stdout", b"hello")])
    path, body = handler.bodies[0]
    action, doc = (json.loads(line) for line in body.decode().splitlines())
    assert path == "/_bulk" and action == {"create": {"_index": "docker-logs"}}
    assert doc["message"] == "hello" and doc["@timestamp"] == "2023-11-14T22:13:20.000000Z"
    handler.reply = (200, b'{"errors": true, "items": [{"create": {"status": 400}}]}')
    with pytest.raises(SinkError, match="refused"):
        sink.send(META, [Message(1, "stdout", b"x")])


def test_log_opts_declared_once() -> None:
    with pytest.raises(InvalidOption, match=r"unknown option 'max-sise'.*max-size"):
        settings({"max-sise": "1m"})
    with pytest.raises(InvalidOption, match="option max-file='0'"):
        settings({"max-file": "0"})
    with pytest.raises(InvalidOption, match="syslog\\+tcp"):
        settings({"forward": "udp://1.2.3.4"})
    opts = settings({"mode": "non-blocking", "max-buffer-size": "4m", "max-size": "1m",
                     "labels": "app,tier", "env": "SERVICE"})  # fmt: skip
    assert (opts.max_size, opts.labels, opts.env) == (1 << 20, ("app", "tier"), ("SERVICE",))
    table = LOG_OPTIONS.help_table()
    assert "--log-opt NAME=VALUE" in table and "syslog-tls-ca-cert" in table


def _fifo_writer(root: Path) -> tuple[str, int]:
    path = str(root / uuid.uuid4().hex)
    os.mkfifo(path, 0o700)
    return path, os.open(path, os.O_RDWR | os.O_NONBLOCK)


def _start(plugin: ThreadedPlugin, path: str, cid: str, config: dict[str, str]) -> None:
    info = {"ContainerID": cid, "ContainerName": "/u" + cid[:6], "Config": config}
    reply = plugin.client().call("LogDriver.StartLogging", {"File": path, "Info": info})
    assert reply.status == 200, reply.raw


def _write(fd: int, payloads: list[bytes]) -> None:
    os.set_blocking(fd, True)
    os.write(fd, b"".join(frame(p) for p in payloads))
    os.set_blocking(fd, False)


def test_size_cap_and_age_clean_up(
    short_tmp: Path, serve_plugin: Callable[..., ThreadedPlugin]
) -> None:
    driver = LogsDriver(state_dir=short_tmp / "st", max_total_size="150k", max_age=1.0)
    plugin = serve_plugin(driver)
    cids = [uuid.uuid4().hex * 2 for _ in range(2)]
    for cid in cids:
        path, fd = _fifo_writer(short_tmp)
        _start(plugin, path, cid, {"max-size": "50k", "max-file": "100", "compress": "false"})
        for _ in range(8):
            _write(fd, _entries(400))
        assert wait_until(lambda c=cid: driver.containers[c].entries == 3200, 30)
        plugin.client().call("LogDriver.StopLogging", {"File": path})
        os.close(fd)
        os.unlink(path)
    assert wait_until(lambda: not any(c.running for c in driver.containers.values()), 30)
    # 2 x 114 KB written; the janitor (each second at first, then every 5 s) cuts to the cap
    assert wait_until(
        lambda: sum(c.log.disk_usage() for c in driver.containers.values()) <= 150 * 1024, 30
    )
    first = driver.containers[cids[0]].log
    assert len(first.segments) < len(driver.containers[cids[1]].log.segments)  # oldest first
    driver.enforce_limits(now=time.time() + 2 * 86400)
    assert driver.containers == {} and not any((short_tmp / "st" / "containers").iterdir())


@pytest.fixture
def rsyslog(certificates: Certificates) -> Iterator[Callable[[bool], Rsyslog]]:
    started: list[Rsyslog] = []

    def start(tls: bool) -> Rsyslog:
        reason = rsyslog_unavailable(tls)
        if reason:
            pytest.skip(reason)
        server = Rsyslog(certs=certificates if tls else None).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def test_syslog_over_tls_verifies_the_server(
    rsyslog: Callable[[bool], Rsyslog], certificates: Certificates
) -> None:
    server = rsyslog(True)
    sink = SyslogSink(server.url, {"syslog-tls-ca-cert": str(certificates.ca)})
    sink.send(META, [Message(time.time_ns(), "stdout", "ünïcode ✓ line".encode())])
    assert wait_until(lambda: len(server.lines()) == 1, 10)
    app, msgid, rest = server.lines()[0].split(" ", 2)
    assert (app, msgid) == ("web", "stdout") and rest.endswith("] ünïcode ✓ line")
    assert 'label.app="shop"' in rest and 'env.SERVICE="cart"' in rest
    sink.close()
    wrong = SyslogSink(server.url, {"syslog-tls-ca-cert": str(certificates.other_ca)})
    with pytest.raises(SinkError, match="CERTIFICATE_VERIFY_FAILED"):
        wrong.send(META, [Message(time.time_ns(), "stdout", b"x")])


def test_positions_survive_a_restart_no_line_twice(
    short_tmp: Path, rsyslog: Callable[[bool], Rsyslog]
) -> None:
    """A real process stopped (SIGTERM) and started again while dockerd's end of the FIFO
    stays open, as for a running container: the new one reattaches, nothing is sent twice."""
    server = rsyslog(False)
    cid = uuid.uuid4().hex * 2
    sock = short_tmp / "p.sock"
    args = ["serve", "logs", "--socket", str(sock), "--state-dir", str(short_tmp / "st"),
            "--forward", server.url, "--flush-interval", "0.05"]  # fmt: skip
    path, fd = _fifo_writer(short_tmp)
    with SubprocessPlugin(args, wait_for=sock) as first:
        info = {"ContainerID": cid, "ContainerName": "/r", "Config": {}}
        with PluginClient(str(sock)) as client:
            reply = client.call("LogDriver.StartLogging", {"File": path, "Info": info})
        assert reply.status == 200, reply.raw
        _write(fd, _entries(3000))
        assert wait_until(lambda: len(server.lines()) == 3000, 20), first.output
    with SubprocessPlugin(args, wait_for=sock) as second:
        _write(fd, _entries(2000, 3000))
        assert wait_until(lambda: len(server.lines()) >= 5000, 20), second.output
        time.sleep(0.3)
        got = [line.rsplit(" ", 1)[-1] for line in server.lines()]
        assert got == [str(i) for i in range(5000)]
        assert "reattached" in second.output
    os.close(fd)


def test_health_is_degraded_while_the_sink_is_away_and_ready_when_it_returns(
    short_tmp: Path, rsyslog: Callable[[bool], Rsyslog]
) -> None:
    """The side listener's /health names the sink that keeps failing; metrics show its lag."""
    from dockplug.server.runner import ServeOptions
    from dockplug.testing.servers import free_port

    server = rsyslog(False)
    port = free_port()
    driver = LogsDriver(state_dir=short_tmp / "st", forward=(server.url,), flush_interval=0.05,
                        retry_max=0.2)  # fmt: skip
    opts = ServeOptions(name="lh", socket=short_tmp / "lh.sock", announce="none",
                        metrics=f"127.0.0.1:{port}")  # fmt: skip

    def health() -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as err:
            return dict(json.loads(err.read()))

    cid = uuid.uuid4().hex * 2
    with ThreadedPlugin(driver, opts) as plugin:
        path, fd = _fifo_writer(short_tmp)
        _start(plugin, path, cid, {})
        _write(fd, _entries(100))
        assert wait_until(lambda: len(server.lines()) == 100, 10)
        assert health()["status"] == "ready"
        server.stop()
        _write(fd, _entries(100, 100))
        assert wait_until(lambda: health()["status"] == "degraded", 15), health()
        reasons = health()["reasons"]
        assert len(reasons) == 1 and server.url in reasons[0] and "away" in reasons[0]
        metrics = plugin.server.metrics.exposition().decode()  # type: ignore[attr-defined]
        assert f'dockplug_log_sink_lag{{sink="{server.url}"}} 100.0' in metrics
        assert "dockplug_log_entries 200.0" in metrics
        server.start()
        assert wait_until(lambda: len(server.lines()) >= 200, 20)
        assert wait_until(lambda: health()["status"] == "ready", 10), health()
        plugin.client().call("LogDriver.StopLogging", {"File": path})
        os.close(fd)


def _reading(pid: int, path: Path) -> int:
    """How many of PID's descriptors have PATH open read-only (a ReadLogs cursor's)."""
    count = 0
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{n}") != str(path):
                continue
            flags = Path(f"/proc/{pid}/fdinfo/{n}").read_text().split("flags:")[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        count += int(flags, 8) & os.O_ACCMODE == os.O_RDONLY
    return count


def _follow(sock_path: Path, cid: str) -> socket.socket:
    """A raw ReadLogs follow request, as dockerd's plugin client sends it."""
    body = json.dumps({"Info": {"ContainerID": cid}, "Config": {"Follow": True, "Tail": -1}})
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(sock_path))
    sock.sendall(b"POST /LogDriver.ReadLogs HTTP/1.1\r\nHost: plugin\r\nContent-Length: %d\r\n"
                 b"\r\n%s" % (len(body), body.encode()))  # fmt: skip
    return sock


def _read_until(sock: socket.socket, want: bytes, timeout: float) -> bytes:
    data = b""
    sock.settimeout(timeout)
    while want not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {want!r}: {data[-200:]!r}"
        data += chunk
    return data


def test_an_idle_follower_sends_empty_entries(
    short_tmp: Path, serve_plugin: Callable[..., ThreadedPlugin]
) -> None:
    """dockerd looks whether ``docker logs -f`` is still there only after it decodes an
    entry: an idle follower sends an empty one (framed, chunked) every HEARTBEAT seconds."""
    driver = LogsDriver(state_dir=short_tmp / "st")
    plugin = serve_plugin(driver, name="lh")
    cid = uuid.uuid4().hex * 2
    path, fd = _fifo_writer(short_tmp)
    _start(plugin, path, cid, {})
    _write(fd, _entries(3))
    assert wait_until(lambda: driver.containers[cid].entries == 3, 10)
    sock = _follow(short_tmp / "lh.sock", cid)
    got = _read_until(sock, b"line 2\n", 10)
    assert b"\0\0\0\0" not in got.split(b"line 0")[1]
    _read_until(sock, b"4\r\n\0\0\0\0\r\n", 5)
    sock.close()
    assert wait_until(lambda: not driver.readers, 5), driver.readers
    plugin.client().call("LogDriver.StopLogging", {"File": path})
    os.close(fd)


def test_a_follower_ends_when_its_client_goes(
    short_tmp: Path, serve_plugin: Callable[..., ThreadedPlugin], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ends a stream as soon as the client's side closes, though the follower is
    waiting for entries (no empty entry comes in this test to make a write fail), and the
    follower's cursor is closed: its file is no longer open."""
    monkeypatch.setattr(readlogs, "HEARTBEAT", 3600.0)
    driver = LogsDriver(state_dir=short_tmp / "st")
    plugin = serve_plugin(driver, name="lf")
    cid = uuid.uuid4().hex * 2
    path, fd = _fifo_writer(short_tmp)
    _start(plugin, path, cid, {})
    _write(fd, _entries(3))
    assert wait_until(lambda: driver.containers[cid].entries == 3, 10)
    sock = _follow(short_tmp / "lf.sock", cid)
    _read_until(sock, b"line 2\n", 10)
    assert list(driver.readers.values()) == [True]
    head = driver.containers[cid].log.dir / "000000000001.log"
    assert _reading(os.getpid(), head) == 1  # the follower's cursor (the writer's is not)
    sock.close()
    assert wait_until(lambda: not driver.readers, 5), driver.readers
    # the cursor closes just after: at once, or when a read it had in a thread returns
    assert wait_until(lambda: _reading(os.getpid(), head) == 0, 5)
    # the next follower still gets new entries
    second = _follow(short_tmp / "lf.sock", cid)
    _read_until(second, b"line 2\n", 10)
    _write(fd, _entries(1, 3))
    _read_until(second, b"line 3\n", 10)
    second.close()
    assert wait_until(lambda: not driver.readers, 5)
    plugin.client().call("LogDriver.StopLogging", {"File": path})
    os.close(fd)


class _Receiver:
    """A syslog-over-TCP receiver on 127.0.0.1 that reads at a pace the test sets: it holds
    each connection's bytes; ``messages`` are the complete octet-counted frames (a frame cut
    by a closed connection is not a message)."""

    def __init__(self, chunk: int, pause: float) -> None:
        self.chunk, self.pause = chunk, pause
        self.reading = threading.Event()  # cleared: connections are accepted, not read
        self.reading.set()
        self.conns: list[bytearray] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"syslog+tcp://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            buf = bytearray()
            self.conns.append(buf)
            threading.Thread(target=self._read, args=(conn, buf), daemon=True).start()

    def _read(self, conn: socket.socket, buf: bytearray) -> None:
        with conn:
            while True:
                self.reading.wait()
                data = conn.recv(self.chunk)
                if not data:
                    return
                buf += data
                time.sleep(self.pause)

    def messages(self) -> list[bytes]:
        out = []
        for buf in self.conns:
            pos = 0
            while (space := buf.find(b" ", pos)) > 0:
                end = space + 1 + int(buf[pos:space])
                if end > len(buf):
                    break  # cut by the close
                out.append(bytes(buf[space + 1 : end]).rsplit(b"] ", 1)[1])
                pos = end
        return out

    def close(self) -> None:
        self._server.close()


def _big_lines(n: int, size: int = 10_000) -> list[bytes]:
    return [b"%05d " % i + b"y" * size for i in range(n)]


def test_a_slow_syslog_receiver_is_not_timed_out_while_it_reads() -> None:
    """The timeout bounds each wait for room, not the batch: 16 MB to a receiver reading
    ~10 MB/s takes over a second, with room every ~0.2 s (the kernel calls a socket writable
    once half its send buffer, at most 4 MiB here, is free), and must not fail at 0.6 s:
    that would send again what the receiver has (the duplicates seen under load)."""
    receiver = _Receiver(chunk=256 << 10, pause=0.02)
    try:
        sink = SyslogSink(receiver.url, {}, timeout=0.6)
        lines = _big_lines(800, 20_000)
        began = time.monotonic()
        sink.send(META, [Message(time.time_ns(), "stdout", line) for line in lines])
        assert time.monotonic() - began > 0.6  # longer than the timeout, yet no failure
        sink.close()
        assert wait_until(lambda: len(receiver.messages()) == 800, 20)
        assert receiver.messages() == lines and len(receiver.conns) == 1
    finally:
        receiver.close()


def test_a_batch_taken_in_part_is_saved_up_to_that_part(tmp_path: Path) -> None:
    """A receiver that stops reading: the send times out with some frames handed over whole;
    the sink says how many, the runner saves the position after them, and the next round sends
    only the rest. Every line arrives as a whole message exactly once."""
    from dockplug.drivers.log.forwarder import Forwarders, SinkRunner

    receiver = _Receiver(chunk=1 << 20, pause=0)
    receiver.reading.clear()
    try:
        log = SegmentLog(tmp_path / "c", 1 << 30, 3)
        lines = _big_lines(800)
        t = time.time_ns()
        log.append([encode(LogEntry("stdout", t + i, line)) for i, line in enumerate(lines)])
        container = SimpleNamespace(id="c" * 64, info={}, log=log, running=False, entries=800,
                                    settings=LogSettings())  # fmt: skip
        owner = SimpleNamespace(state=None, containers={})
        forwarders = Forwarders(owner, (), 0.05, 16 << 20, 0.2)  # type: ignore[arg-type]
        runner = SinkRunner(forwarders, receiver.url, receiver.url, {})
        runner.sink = SyslogSink(receiver.url, {}, timeout=0.3)
        route = Route(container, log.start(), 0, Cursor(log, log.start()))  # type: ignore[arg-type]
        runner.routes[container.id] = route
        with pytest.raises(SinkError, match="after") as failed:
            runner._round()
        taken = failed.value.taken
        assert 0 < taken < 800, taken
        assert route.sent == taken and route.committed > log.start()
        receiver.reading.set()  # it reads again: the first connection's bytes, then the rest
        assert runner._round() and route.sent == 800
        runner.sink.close()
        assert wait_until(lambda: len(receiver.messages()) >= 800, 20)
        assert receiver.messages() == lines and len(receiver.conns) == 2
    finally:
        receiver.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a disk that really fills (ENOSPC), not a simulated error."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_drops_entries_counts_them_and_writes_a_marker(
    small_disk: Path, short_tmp: Path
) -> None:
    """The reader never stops draining the FIFO: while the disk is full, entries are counted
    as dropped; once there is room again a marker entry says how many, then logging goes on."""
    from dockplug.drivers.log.fifo import FifoReader, open_fifo

    log = SegmentLog(small_disk / "c", 1 << 30, 3)
    ballast = small_disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):  # fill the disk to the last byte
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    counts = [0, 0, 0]
    done = threading.Event()

    def count(entries: int, size: int, dropped: int) -> None:
        counts[0] += entries
        counts[1] += size
        counts[2] += dropped

    path, wfd = _fifo_writer(short_tmp)
    FifoReader(path, open_fifo(path), log, count, lambda _: done.set()).start()
    for i in range(20):
        _write(wfd, _entries(100, i * 100))
    assert wait_until(lambda: counts[0] + counts[2] == 2000, 10), counts
    lost = counts[2]
    assert lost > 1000, counts  # a few KiB of room: most of it had nowhere to go
    ballast.unlink()
    _write(wfd, _entries(10, 2000))
    os.close(wfd)
    assert done.wait(10)  # EOF: the reader drained it all and closed
    lines = [decode(p).line for p in Cursor(log, log.start())]
    mark = f"[dockplug-logs: {lost} log entries dropped: No space left on device]".encode()
    assert lines.count(mark) == 1 and lines[-11] == mark, lines[-12:]
    assert lines[-10:] == [f"line {i}".encode() for i in range(2000, 2010)]
    assert counts[0] == len(lines) - 1 and counts[2] == lost  # the marker is not an entry


class _SlowReader(http.server.BaseHTTPRequestHandler):
    """Reads a request body 256 KiB per 20 ms (~10 MB/s), as a loaded backend may."""

    sizes: list[int] = []

    def do_POST(self) -> None:
        left, got = int(self.headers["Content-Length"]), 0
        while left:
            data = self.rfile.read(min(left, 256 << 10))
            left, got = left - len(data), got + len(data)
            time.sleep(0.02)
        type(self).sizes.append(got)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_slow_http_backend_is_not_timed_out_while_it_reads() -> None:
    """The HTTP sinks' timeout bounds each wait for room too, not the body: a 16 MB push
    read over more than a second must not fail at 0.6 s (and be sent again: journal-remote
    would keep the entries of the first, cut upload)."""
    handler = type("Slow", (_SlowReader,), {"sizes": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink = HttpSink(f"loki+http://127.0.0.1:{server.server_address[1]}/loki/api/v1/push",
                        timeout=0.6)  # fmt: skip
        lines = _big_lines(800, 20_000)
        began = time.monotonic()
        sink.send(META, [Message(time.time_ns(), "stdout", line) for line in lines])
        assert time.monotonic() - began > 0.6
        assert len(handler.sizes) == 1 and handler.sizes[0] > 16_000_000
    finally:
        server.shutdown()
