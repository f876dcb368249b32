"""LogDriver checks (plugin-protocol.md §7): dockerd's side of a container's log stream. The
harness makes a real FIFO the way dockerd does (mkfifo 0700, held open O_RDWR|O_NONBLOCK), sends
StartLogging, writes length-framed LogEntry records into it, and expects the plugin to drain it
(a plugin that stops reading blocks the container). With ``Cap.ReadLogs`` it reads the entries
back through ReadLogs, while the logger runs and after it stopped (``docker logs``).

The plugin must see the FIFO at the same path, so these checks need a unix socket on this host.
Option (``--opt``): ``fifo_dir`` (default /run/docker/logging when writable, like dockerd's).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import termios
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dockplug.client import Reply
from dockplug.conformance.checks import (
    Check,
    Context,
    Outcome,
    Skip,
    announces,
    check,
    describe,
    failed,
    lowered,
    passed,
    reply_format,
    reply_json,
    short,
    warned,
)
from dockplug.conformance.robustness import reject_garbage
from dockplug.conformance.shapes import casing_problems
from dockplug.protocol.log import FrameError, FrameReader, frame
from dockplug.protocol.logentry import EntryError, LogEntry, PartialMetadata, decode, encode

CHECKS: list[Check] = []
_P = "LogDriver."
ZERO_TIME = "0001-01-01T00:00:00Z"
TOTAL = 1 << 20  # more than a pipe holds (64 KiB): the plugin must read while we write
SPLIT = 16 * 1024  # dockerd's copier splits longer lines into partial entries


def _hex() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


@dataclass
class Stream:
    """One container's FIFO, as dockerd holds it."""

    path: str
    fd: int
    info: dict[str, Any]
    started: bool = False
    stopped: bool = False


@dataclass
class LogContext(Context):
    fifo_dir: str = ""
    streams: list[Stream] = field(default_factory=list)

    def _dir(self) -> str:
        if self.address.scheme != "unix":
            raise Skip("the plugin is reached over TCP: it cannot open a FIFO on this host")
        if not self.fifo_dir:
            wanted = self.opts.get("fifo_dir")
            base = "/run/docker/logging"
            if wanted is None and os.access(base, os.W_OK):
                wanted = base
            if wanted is not None:
                os.makedirs(wanted, exist_ok=True)
                self.fifo_dir = tempfile.mkdtemp(prefix=self.prefix, dir=wanted)
            else:
                self.fifo_dir = tempfile.mkdtemp(prefix=self.prefix)
        return self.fifo_dir

    def info(self, container_id: str | None = None) -> dict[str, Any]:
        """dockerd's logger.Info for a busybox container, ``--log-opt`` values included."""
        cid = container_id or _hex()
        return {
            "Config": {"mode": "blocking", "max-buffer-size": "1m", "tag": "{{.Name}}"},
            "ContainerID": cid,
            "ContainerName": "/" + self.name(cid[:6]),
            "ContainerEntrypoint": "sh",
            "ContainerArgs": ["-c", "echo hello"],
            "ContainerImageID": "sha256:" + "b" * 64,
            "ContainerImageName": "busybox",
            "ContainerCreated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z"),
            "ContainerEnv": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "ContainerLabels": {"com.example": "dpcheck"},
            "LogPath": "",
            "DaemonName": "docker",
        }

    def open_stream(self, info: dict[str, Any] | None = None) -> Stream:
        """A new FIFO, made and opened as dockerd's openPluginStream does."""
        path = os.path.join(self._dir(), _hex())
        os.mkfifo(path, 0o700)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        stream = Stream(path, fd, info or self.info())
        self.streams.append(stream)
        return stream

    def start(self, stream: Stream) -> Reply:
        body = {"File": stream.path, "Info": stream.info}
        reply = self.call(_P + "StartLogging", body, expect_ok=True)
        stream.started = self.error(reply) is None
        return reply

    def stop(self, stream: Stream) -> Reply:
        """StopLogging, then what dockerd does next: close its end and remove the FIFO."""
        reply = self.call(_P + "StopLogging", {"File": stream.path}, expect_ok=True)
        stream.stopped = True
        self.drop(stream)
        return reply

    def drop(self, stream: Stream) -> None:
        if stream.fd >= 0:
            os.close(stream.fd)
            stream.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stream.path)

    def cleanup(self) -> list[str]:
        left: list[str] = []
        for stream in self.streams:
            if stream.started and not stream.stopped:
                try:
                    if (err := self.error(self.stop(stream))) is not None:
                        left.append(f"StopLogging {stream.path}: {err[:120]}")
                except Exception as exc:
                    left.append(f"StopLogging {stream.path}: {exc!r}")
            self.drop(stream)
        if self.fifo_dir:
            shutil.rmtree(self.fifo_dir, ignore_errors=True)
        return left


def pending(fd: int) -> int:
    """Bytes written into the pipe that nobody has read yet."""
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(buf, "little")


def entries(cid: str) -> list[LogEntry]:
    """What a container writes: short and empty lines, stderr, unicode, and one long line split
    into partial entries the way dockerd's copier does; then filler to pass 1 MiB."""
    base = time.time_ns()
    out = [
        LogEntry("stdout", base, f"hello from {cid[:12]}".encode()),
        LogEntry("stderr", base + 1, b"warning: on stderr"),
        LogEntry("stdout", base + 2, b""),
        LogEntry("stdout", base + 3, "ünïcode ✓ 漢字".encode()),
    ]
    long_id = uuid.uuid4().hex
    long_line = b"x" * (2 * SPLIT + 100)
    pieces = [long_line[i : i + SPLIT] for i in range(0, len(long_line), SPLIT)]
    for i, piece in enumerate(pieces):
        meta = PartialMetadata(last=i == len(pieces) - 1, id=long_id, ordinal=i + 1)
        out.append(LogEntry("stdout", base + 4 + i, piece, partial=True, partial_log_metadata=meta))
    n = len(out)
    size = sum(len(e.line) for e in out)
    while size < TOTAL:
        line = f"line {n:06d} ".encode() + b"." * 1000
        out.append(LogEntry("stdout" if n % 5 else "stderr", base + n + 10, line))
        size += len(line)
        n += 1
    out.append(LogEntry("stdout", base + n + 10, b"the last line"))
    return out


def write_all(stream: Stream, data: bytes, deadline: float) -> tuple[int, float]:
    """Writes like dockerd's copier (non-blocking fd, retry when the pipe is full); returns
    (bytes written, seconds spent waiting for the plugin to read)."""
    view = memoryview(data)
    done = 0
    waited = 0.0
    while done < len(data):
        try:
            done += os.write(stream.fd, view[done : done + 65536])
        except BlockingIOError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
            waited += 0.005
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                break
            raise
    return done, waited


def _stream(ctx: LogContext, key: str) -> Stream:
    stream: Stream | None = ctx.state.get(key)
    if stream is None or not stream.started:
        raise Skip("StartLogging failed (L03)")
    return stream


def _read_logs(ctx: LogContext, info: dict[str, Any], tail: int = -1) -> list[LogEntry] | str:
    """ReadLogs without follow: the decoded entries, or the evidence of what went wrong."""
    config = {"Since": ZERO_TIME, "Until": ZERO_TIME, "Tail": tail, "Follow": False}
    reply = ctx.call(_P + "ReadLogs", {"Info": info, "Config": config}, expect_ok=True)
    if reply.status != 200:
        return f"ReadLogs: {describe(reply)}"
    reader = FrameReader()
    try:
        payloads = reader.feed(reply.raw)
        reader.close()
        return [decode(p) for p in payloads]
    except (FrameError, EntryError) as exc:
        return (
            f"ReadLogs answered {len(reply.raw)} bytes that are not framed LogEntry records: {exc}"
        )


def as_read(entry: LogEntry) -> bytes:
    """The line as ReadLogs must return it: with its ``\n`` again unless it is a partial piece
    before the last. dockerd writes ReadLogs lines to ``docker logs`` as they are (its json-file
    driver stores the newline the same way), so lines without it run together."""
    meta = entry.partial_log_metadata
    complete = not entry.partial or (meta is not None and meta.last)
    return entry.line + b"\n" if complete else entry.line


def _same(got: list[LogEntry], want: list[LogEntry]) -> str | None:
    """None if ``got`` has ``want``'s lines, sources and times in order, else the difference."""
    if len(got) != len(want):
        extra = f"; first got {short(got[0].line, 40)}" if got else ""
        return f"{len(got)} entries back, {len(want)} written{extra}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if (g.source, g.time_nano) == (w.source, w.time_nano) and g.line == w.line != as_read(w):
            return (
                f"entry {i}: {short(g.line, 40)!r} came back without its trailing newline; "
                "docker logs prints ReadLogs lines as they are, so they run together"
            )
        if (g.line, g.source, g.time_nano) != (as_read(w), w.source, w.time_nano):
            return (
                f"entry {i}: got {g.source} {g.time_nano} {short(g.line, 40)!r}, "
                f"wrote {w.source} {w.time_nano} {short(w.line, 40)!r}"
            )
    return None


@check(CHECKS, "L01", "Activate announces LogDriver", "protocol §2")
def activate(ctx: LogContext) -> Outcome:
    return announces(ctx, "LogDriver")


@check(CHECKS, "L02", 'Capabilities (empty body) under "Cap"', "protocol §7.1")
def capabilities(ctx: LogContext) -> Outcome:
    reply = ctx.call(_P + "Capabilities")
    ctx.state["read_logs"] = False
    if reply.status == 404:
        return passed("404: optional; dockerd assumes ReadLogs false (it keeps its own cache)")
    if ctx.error(reply) is not None:
        return warned(f"{describe(reply)}; dockerd assumes ReadLogs false")
    data = reply_json(reply)
    if not isinstance(data, dict):
        return failed(f"HTTP 200 but not a JSON object: {describe(reply)}")
    problems = casing_problems(data, ("Cap", "Err"), "reply")
    cap = lowered(data).get("cap")
    if "readlogs" in lowered(data) and cap is None:
        return failed(
            f'top-level "ReadLogs" (as the docs show) is not read by dockerd: nest it as '
            f'{{"Cap": {{"ReadLogs": true}}}} ({describe(reply)})'
        )
    if cap is not None and not isinstance(cap, dict):
        problems.append(f"Cap is {cap!r:.40}, not an object")
    read_logs = lowered(cap).get("readlogs", False)
    problems += casing_problems(cap, ("ReadLogs",), "Cap") if isinstance(cap, dict) else []
    if not isinstance(read_logs, bool):
        problems.append(f"ReadLogs is {read_logs!r:.40}, not a boolean")
    if problems:
        return failed("; ".join(problems))
    ctx.state["read_logs"] = read_logs
    return passed(f"ReadLogs {read_logs}")


@check(CHECKS, "L03", "StartLogging with a real FIFO and dockerd's Info", "protocol §7.1-7.2")
def start(ctx: LogContext) -> Outcome:
    stream = ctx.open_stream()
    ctx.state["main"] = stream
    reply = ctx.start(stream)
    if ctx.error(reply) is not None:
        return failed(f"StartLogging: {describe(reply)}")
    if not isinstance(reply_json(reply), dict):
        return failed(f"HTTP 200 but not a JSON object: {describe(reply)}")
    return passed(f"{stream.path}: {describe(reply)}")


@check(CHECKS, "L04", "The plugin drains 1 MiB of framed entries", "protocol §7.2-7.3")
def drain(ctx: LogContext) -> Outcome:
    stream = _stream(ctx, "main")
    written = entries(stream.info["ContainerID"])
    data = b"".join(frame(encode(e)) for e in written)
    started = time.monotonic()
    deadline = started + min(ctx.timeout, 20.0)
    done, waited = write_all(stream, data, deadline)
    if done < len(data):
        return failed(
            f"the pipe stayed full after {done} of {len(data)} bytes: the plugin stopped reading "
            "and the container's writes would block"
        )
    while (left := pending(stream.fd)) and time.monotonic() < deadline:
        time.sleep(0.01)
    if left:
        return failed(f"{left} bytes still unread in the FIFO after {min(ctx.timeout, 20.0):g}s")
    ctx.state["written"] = written
    took = time.monotonic() - started
    return passed(
        f"{len(written)} entries, {len(data)} bytes read in {took:.2f}s "
        f"(the pipe was full for {waited:.2f}s of it)"
    )


def _written(ctx: LogContext) -> tuple[Stream, list[LogEntry]]:
    """The main stream and the entries L04 wrote into it, for the ReadLogs checks."""
    if not ctx.state.get("read_logs"):
        raise Skip("Capabilities does not announce ReadLogs")
    stream = _stream(ctx, "main")
    written: list[LogEntry] | None = ctx.state.get("written")
    if written is None:
        raise Skip("nothing was written (L04)")
    return stream, written


@check(CHECKS, "L05", "ReadLogs while running returns what was written", "protocol §7.1, §7.3")
def read_running(ctx: LogContext) -> Outcome:
    stream, written = _written(ctx)
    deadline = time.monotonic() + min(ctx.timeout, 10.0)
    while True:  # the plugin decodes asynchronously: give it a moment to catch up
        got = _read_logs(ctx, stream.info)
        if isinstance(got, str):
            return failed(got)
        if len(got) >= len(written) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if (diff := _same(got, written)) is not None:
        return failed(diff)
    return passed(f"{len(got)} entries back, in order, sources and times intact")


@check(CHECKS, "L06", "ReadLogs honours Tail", "protocol §7.1")
def read_tail(ctx: LogContext) -> Outcome:
    stream, written = _written(ctx)
    got = _read_logs(ctx, stream.info, tail=3)
    if isinstance(got, str):
        return failed(got)
    if (diff := _same(got, written[-3:])) is not None:
        return warned(f"Tail 3: {diff} (docker logs --tail 3 shows more)")
    return passed("Tail 3: the last three entries")


@check(CHECKS, "L07", "StopLogging answers promptly", "protocol §7.2")
def stop(ctx: LogContext) -> Outcome:
    stream = _stream(ctx, "main")
    started = time.monotonic()
    reply = ctx.stop(stream)
    took = time.monotonic() - started
    if ctx.error(reply) is not None:
        return failed(f"StopLogging: {describe(reply)}")
    if took > 2.0:
        return warned(f"StopLogging took {took:.1f}s: docker stop waits for it")
    return passed(f"{describe(reply)} in {took * 1000:.0f} ms")


@check(CHECKS, "L08", "docker logs after stop: StartLogging, ReadLogs, StopLogging", "§7.2")
def logs_after_stop(ctx: LogContext) -> Outcome:
    if not ctx.state.get("read_logs"):
        raise Skip("Capabilities does not announce ReadLogs")
    main: Stream | None = ctx.state.get("main")
    written: list[LogEntry] | None = ctx.state.get("written")
    if main is None or written is None or not main.stopped:
        raise Skip("the first logger did not run and stop (L03-L07)")
    stream = ctx.open_stream(dict(main.info))  # same container, a new FIFO, no data
    reply = ctx.start(stream)
    if ctx.error(reply) is not None:
        return failed(f"StartLogging for docker logs: {describe(reply)}")
    got = _read_logs(ctx, stream.info)
    stopped = ctx.stop(stream)
    if isinstance(got, str):
        return failed(got)
    if (diff := _same(got, written)) is not None:
        return failed(f"after the container stopped: {diff}")
    if ctx.error(stopped) is not None:
        return failed(f"StopLogging: {describe(stopped)}")
    return passed(f"{len(got)} entries, the second StartLogging did not wipe them")


@check(CHECKS, "L09", "Two containers at once: streams do not mix", "protocol §7.2")
def two_containers(ctx: LogContext) -> Outcome:
    a, b = ctx.open_stream(), ctx.open_stream()
    for s in (a, b):
        if ctx.error(reply := ctx.start(s)) is not None:
            return failed(f"StartLogging: {describe(reply)}")
    now = time.time_ns()
    lines = {s.path: [LogEntry("stdout", now + i, f"{s.path[-6:]} {i}".encode()) for i in range(50)]
             for s in (a, b)}  # fmt: skip
    for i in range(50):  # interleaved, as two busy containers would write
        for s in (a, b):
            write_all(s, frame(encode(lines[s.path][i])), time.monotonic() + 5)
    deadline = time.monotonic() + min(ctx.timeout, 10.0)
    while (pending(a.fd) or pending(b.fd)) and time.monotonic() < deadline:
        time.sleep(0.01)
    if pending(a.fd) or pending(b.fd):
        return failed("the FIFOs were not drained")
    if not ctx.state.get("read_logs"):
        for s in (a, b):
            ctx.stop(s)
        return passed("both FIFOs drained (no ReadLogs to compare contents)")
    results = {}
    deadline = time.monotonic() + min(ctx.timeout, 10.0)
    for s in (a, b):
        while True:
            got = _read_logs(ctx, s.info)
            if isinstance(got, str) or len(got) >= 50 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        results[s.path] = got
        ctx.stop(s)
    for s in (a, b):
        got = results[s.path]
        if isinstance(got, str):
            return failed(got)
        if (diff := _same(got, lines[s.path])) is not None:
            return failed(f"container {s.info['ContainerID'][:12]}: {diff}")
    return passed("50 interleaved entries each, every one back under its own container")


@check(CHECKS, "L10", "StartLogging of a missing FIFO fails", "protocol §7.2")
def missing_fifo(ctx: LogContext) -> Outcome:
    path = os.path.join(ctx._dir(), _hex())
    stream = Stream(path, -1, ctx.info())
    ctx.streams.append(stream)
    reply = ctx.start(stream)
    if ctx.error(reply) is None:
        return warned(f"{describe(reply)}: accepted a FIFO that does not exist (no data will come)")
    return passed(describe(reply))


@check(CHECKS, "L11", "StopLogging of an unknown FIFO keeps the plugin up", "protocol §7.1")
def stop_unknown(ctx: LogContext) -> Outcome:
    path = os.path.join("/run/docker/logging", _hex())
    reply = ctx.call(_P + "StopLogging", {"File": path})
    if not ctx.alive():
        return failed(f"{describe(reply)}; the plugin no longer answers Activate")
    return passed(describe(reply))


@check(CHECKS, "L12", "Replies: exactly 200 + JSON, Err on error", "protocol §1.6")
def replies(ctx: LogContext) -> Outcome:
    return reply_format(ctx, streaming=(_P + "ReadLogs",))


@check(CHECKS, "L13", "Bad bodies get an error; the plugin stays up", "protocol §1.6")
def garbage(ctx: LogContext) -> Outcome:
    endpoints = {
        _P + "StartLogging": (True, {"File": "str", "Info": "struct"}),
        _P + "StopLogging": (False, {"File": "str"}),
        _P + "ReadLogs": (False, {"Info": "struct", "Config": "struct"}),
    }
    return reject_garbage(ctx, endpoints)
