"""Forwarding from the local files: one thread per sink, each with its own saved position in
each container's log.

A sink is fed from the segments, never from the FIFO, so a slow or absent backend costs disk,
not a blocked container. Each wake (every ``flush_interval``, or when a container's logger
stops) sends what accumulated, in batches of up to ``batch_size`` bytes; the position after a
batch is saved only once the backend took it (at least once, across restarts; a batch it took
in part, as a stream sink can tell, is saved up to that part). While a backend
is away the thread backs off exponentially, with jitter, up to ``retry_max`` seconds. Lines
dockerd split at 16 KiB (partial entries sharing an id) are rejoined up to ``max-line-size``;
a position never falls inside a line being rejoined.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dockplug.drivers.log.container import Container
from dockplug.drivers.log.segments import OVERHEAD, Cursor, Position
from dockplug.drivers.log.sinks import Message, Meta, Sink, SinkError, make_sink
from dockplug.protocol.logentry import _LogEntryPb

if TYPE_CHECKING:
    from dockplug.drivers.log.state import LogState


class LogOwner(Protocol):
    """What the forwarders need of the driver: its state database and its containers."""

    state: LogState | None
    containers: dict[str, Container]


@dataclass
class Route:
    """One container as one sink reads it."""

    container: Container
    committed: Position
    sent: int  # entries up to ``committed``
    cursor: Cursor
    group: list[tuple[int, str, bytes]] = field(default_factory=list)
    group_size: int = 0
    safe: Position | None = None  # after the last complete message collected
    read: int = 0  # entries read since ``committed``
    safe_read: int = 0  # of them, up to ``safe``
    #: after each message of the last collect: (its position, entries read up to it), so a
    #: batch the sink took in part is committed up to the part it took
    marks: list[tuple[Position, int]] = field(default_factory=list)

    def rewind(self) -> None:
        self.cursor.close()
        self.cursor = Cursor(self.container.log, self.committed)
        self.group.clear()
        self.group_size = 0
        self.safe, self.read, self.safe_read = None, 0, 0

    def commit(self, pos: Position, sent: int) -> None:
        self.read -= sent - self.sent
        self.safe_read -= sent - self.sent
        self.committed, self.sent = pos, sent

    def _flush_group(self, messages: list[Message], truncated: bool) -> None:
        first = self.group[0]
        line = b"".join(piece for _, _, piece in self.group)
        messages.append(Message(first[0], first[1], line, len(self.group), truncated))
        self.group.clear()
        self.group_size = 0

    def collect(self, max_bytes: int) -> tuple[list[Message], Position | None, int]:
        """Complete messages from the cursor on: (messages, the position after them, the
        entries sent once they are taken)."""
        messages: list[Message] = []
        marks = self.marks = []
        size = 0
        cap = self.container.settings.max_line_size
        pb = _LogEntryPb()
        payloads: list[bytes] = []
        while size < max_bytes:
            payloads = self.cursor.read(max_bytes)
            if not payloads:
                break
            after = self.cursor.position
            offset = after.offset - sum(len(p) + OVERHEAD for p in payloads)
            parse, group, append = pb.ParseFromString, self.group, messages.append
            for payload in payloads:
                offset += len(payload) + OVERHEAD
                parse(payload)
                size += len(payload)
                if pb.partial and not pb.partial_log_metadata.last:
                    group.append((pb.time_nano, pb.source, pb.line))
                    self.group_size += len(pb.line)
                    if self.group_size < cap:
                        self.read += 1
                        continue
                    self._flush_group(messages, truncated=True)
                elif group:
                    group.append((pb.time_nano, pb.source, pb.line))
                    self._flush_group(messages, truncated=False)
                else:
                    append(Message(pb.time_nano, pb.source, pb.line))
                self.read += 1
                self.safe, self.safe_read = Position(after.seq, offset), self.read
                marks.append((self.safe, self.read))
        if self.group and not self.container.running and not payloads:
            # the logger stopped inside a split line: what came is all that will come
            self._flush_group(messages, truncated=True)
            self.safe, self.safe_read = self.cursor.position, self.read
            marks.append((self.safe, self.read))
        if not messages or self.safe is None:
            return [], None, 0
        return messages, self.safe, self.sent + self.safe_read


def sink_id(url: str, tls: dict[str, Any]) -> str:
    if not tls:
        return url
    digest = hashlib.sha256(json.dumps(tls, sort_keys=True).encode()).hexdigest()[:12]
    return f"{url}#{digest}"


def shown_url(url: str) -> str:
    """A sink URL fit for metrics, health and logs: no user or password."""
    scheme, sep, rest = url.partition("://")
    host, _, path = rest.partition("/")
    host = host.rpartition("@")[2]
    return f"{scheme}{sep}{host}" + (f"/{path}" if path else "")


class SinkRunner:
    """One sink's thread: the containers routed to it, in turn, as long as there is data."""

    def __init__(self, owner: Forwarders, ident: str, url: str, tls: dict[str, Any]) -> None:
        self.owner = owner
        self.id = ident
        self.url = url
        self.tls = tls
        self.sink: Sink | None = None
        self.routes: dict[str, Route] = {}
        self.lock = threading.Lock()
        self.wakeup = threading.Event()
        self.error = ""
        self.failures = 0
        self.thread = threading.Thread(target=self._run, name=f"sink-{url[:40]}", daemon=True)

    def add(self, container: Container) -> None:
        with self.lock:
            if container.id in self.routes:
                return
            state = self.owner.driver.state
            saved = state.position(self.id, container.id) if state is not None else None
            pos, sent = saved if saved is not None else (container.log.start(), 0)
            self.routes[container.id] = Route(container, pos, sent, Cursor(container.log, pos))
        self.wakeup.set()

    def remove(self, cid: str) -> None:
        with self.lock:
            route = self.routes.pop(cid, None)
        if route is not None:
            route.cursor.close()

    def _record(self, error: str) -> None:
        if error != self.error:
            self.error = error
            state = self.owner.driver.state
            if state is not None:
                state.save_sink(self.id, self.url, error)
            if error:
                print(f"sink {self.url}: {error}", file=sys.stderr)

    def _run(self) -> None:
        stop = self.owner.stopping
        self._record("")
        while not stop.is_set():
            try:
                if self.sink is None:
                    self.sink = make_sink(self.url, self.tls)
                busy = self._round()
                if self.failures:
                    self.failures = 0
                    self._record("")
            except (SinkError, OSError, ValueError) as exc:
                self.failures += 1
                self._record(str(exc))
                delay = min(self.owner.retry_max, 0.1 * 2 ** min(self.failures, 16))
                stop.wait(delay * random.uniform(0.5, 1.0))
                continue
            if not busy:
                self.wakeup.wait(self.owner.flush_interval)
                self.wakeup.clear()
        if self.sink is not None:
            self.sink.close()

    def _round(self) -> bool:
        busy = False
        with self.lock:
            routes = list(self.routes.values())
        for route in routes:
            messages, pos, sent = route.collect(self.owner.batch_size)
            if not messages or pos is None:
                continue
            c = route.container
            meta = Meta.of(c.info, c.settings.tag, c.settings.labels)
            assert self.sink is not None
            try:
                self.sink.send(meta, messages)
            except SinkError as exc:
                if 0 < exc.taken <= len(route.marks):  # the backend has the first ones
                    taken, read = route.marks[exc.taken - 1]
                    self._commit(route, taken, route.sent + read)
                route.rewind()
                raise
            except BaseException:
                route.rewind()
                raise
            self._commit(route, pos, sent)
            busy = True
        return busy

    def _commit(self, route: Route, pos: Position, sent: int) -> None:
        route.commit(pos, sent)
        state = self.owner.driver.state
        if state is not None:
            state.save_position(self.id, route.container.id, pos, route.sent)

    def lag(self) -> dict[str, int]:
        with self.lock:
            return {cid: r.container.entries - r.sent for cid, r in self.routes.items()}


class Forwarders:
    """The sinks of the plugin (``--forward``, every container) and of single containers
    (``--log-opt forward=``)."""

    def __init__(self, driver: LogOwner, urls: tuple[str, ...], flush_interval: float,
                 batch_size: int, retry_max: float) -> None:  # fmt: skip
        self.driver = driver
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.retry_max = retry_max
        self.stopping = threading.Event()
        self.started = False
        self.runners: dict[str, SinkRunner] = {}
        self.global_ids = [sink_id(u, {}) for u in urls]
        for url in urls:
            self.runners[url] = SinkRunner(self, url, url, {})
        self.lock = threading.Lock()

    def start(self) -> None:
        self.started = True
        for container in list(self.driver.containers.values()):
            self.attach(container)
        for runner in list(self.runners.values()):
            if not runner.thread.is_alive():
                runner.thread.start()

    def attach(self, container: Container) -> None:
        for ident in self.global_ids:
            self.runners[ident].add(container)
        for url in container.settings.forward:
            ident = sink_id(url, container.settings.tls)
            with self.lock:
                runner = self.runners.get(ident)
                if runner is None:
                    runner = self.runners[ident] = SinkRunner(self, ident, url,
                                                              container.settings.tls)  # fmt: skip
                    if self.started:
                        runner.thread.start()
            runner.add(container)

    def detach(self, cid: str) -> None:
        for runner in list(self.runners.values()):
            runner.remove(cid)

    def wake(self) -> None:
        for runner in list(self.runners.values()):
            runner.wakeup.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake()
        for runner in list(self.runners.values()):
            if runner.thread.is_alive():
                runner.thread.join(10)
