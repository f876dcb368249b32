"""dockplug-logs: the LogDriver. Local store first, sinks fed from the files, never a blocked
container (plugin-protocol.md §7, authz-and-logs.md "What dockerd does with a log-driver
plugin")."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dockplug.drivers.log.config import LogSettings, settings
from dockplug.drivers.log.container import Container
from dockplug.drivers.log.fifo import FifoReader, open_fifo
from dockplug.drivers.log.forwarder import Forwarders, shown_url
from dockplug.drivers.log.readlogs import stream
from dockplug.drivers.log.segments import Cursor, SegmentLog
from dockplug.drivers.log.state import LogState
from dockplug.drivers.options import parse_size
from dockplug.drivers.registry import setting_default
from dockplug.errors import InvalidRequest, PluginError
from dockplug.observe.metrics import Metrics
from dockplug.protocol.base import nonblocking
from dockplug.protocol.log import (
    LogDriver,
    ReadLogsRequest,
    StartLoggingRequest,
    StopLoggingRequest,
)

DEFAULT_STATE_DIR: Path = setting_default("logs", "state_dir")
_HEX64 = re.compile(r"[0-9a-f]{64}")
COUNTERS_EVERY = 1.0  # seconds between saves of the counters
JANITOR_EVERY = 5.0  # seconds between looks at the size cap and ages


def kept_info(req: StartLoggingRequest, opts: LogSettings) -> dict[str, Any]:
    """What is kept of Info (and sent to sinks): never an env value the operator did not name."""
    info = req.info
    env = {}
    for item in info.container_env:
        key, _, value = item.partition("=")
        if key in opts.env:
            env[key] = value
    return {
        "id": info.container_id,
        "name": info.container_name.lstrip("/"),
        "image": info.container_image_name,
        "image_id": info.container_image_id,
        "labels": dict(info.container_labels),
        "env": env,
        "config": dict(info.config),
        "created": info.container_created.isoformat() if info.container_created else "",
    }


class LogsDriver(LogDriver):
    def __init__(
        self,
        state_dir: Path = DEFAULT_STATE_DIR,
        forward: tuple[str, ...] = (),
        max_total_size: str = "10G",
        max_age: float = 7.0,
        flush_interval: float = 0.2,
        batch_size: str = "1M",
        retry_max: float = 10.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.containers_dir = self.state_dir / "containers"
        self.max_total_size = parse_size(max_total_size)
        self.max_age = max_age * 86400
        self.containers: dict[str, Container] = {}
        self.lock = threading.Lock()
        self.fifos: dict[str, FifoReader] = {}
        #: ReadLogs streams open (``docker logs``): each one's cursor and whether it follows
        self.readers: dict[Cursor, bool] = {}
        self.state: LogState | None = None
        self.forwarders = Forwarders(
            self, tuple(forward), flush_interval, parse_size(batch_size), retry_max
        )
        self._stop = threading.Event()
        self._janitor: threading.Thread | None = None
        from dockplug.drivers.log.config import parse_forward

        for url in forward:
            parse_forward(url)  # a bad --forward fails at start, not in a thread later

    # -- lifecycle ----------------------------------------------------------------------

    def startup(self) -> None:
        """Reopens the FIFOs of containers still running: dockerd never repeats StartLogging
        after a plugin restart, and their writes block once the pipe is full."""
        self.state = LogState(self.state_dir / "state.db")
        for row in self.state.containers():
            self._load(row.id, row.info, (row.entries, row.bytes, row.dropped))
        for path, cid in self.state.fifos():
            container = self.containers.get(cid)
            try:
                fd = open_fifo(path)
            except OSError:  # the container stopped while we were away: dockerd removed it
                self.state.drop_fifo(path)
                continue
            if container is not None:
                self._read(container, path, fd, resync=True)
                print(f"reattached {cid[:12]} ({path})", file=sys.stderr)
            else:
                os.close(fd)
        self.forwarders.start()
        self._janitor = threading.Thread(target=self._janitor_loop, name="logs-janitor",
                                         daemon=True)  # fmt: skip
        self._janitor.start()

    def shutdown(self) -> None:
        self._stop.set()
        self.forwarders.stop()
        if self._janitor is not None:
            self._janitor.join(5)
        self._save_counters()
        if self.state is not None:
            self.state.close()

    def declare_metrics(self, metrics: Metrics) -> None:
        """Entries, bytes and drops over all containers; each sink's lag (entries not yet
        taken by it) and failed sends."""
        metrics.gauge_fn("containers", "Containers whose log is kept", lambda: len(self.containers))
        metrics.gauge_fn("entries", "Entries read from containers' FIFOs", self._entries)
        metrics.gauge_fn("bytes", "Bytes of log lines read from containers' FIFOs", self._bytes)
        metrics.gauge_fn(
            "dropped", "Entries dropped (disk trouble: a marker is written instead)", self._dropped
        )
        metrics.gauge_fn(
            "readers", "ReadLogs streams open (docker logs), following or not",
            lambda: len(self.readers),
        )  # fmt: skip
        metrics.gauge_fn(
            "followers", "ReadLogs streams following (docker logs -f)",
            lambda: sum(list(self.readers.values())),
        )  # fmt: skip
        metrics.gauge_fn(
            "sink_lag", "Entries a sink has not taken yet, by sink", self._lags, ("sink",)
        )
        metrics.gauge_fn(
            "sink_failures", "Consecutive failed sends, by sink (0: the sink is fine)",
            self._failures, ("sink",),
        )  # fmt: skip

    def _entries(self) -> float:
        return sum(c.counters()[0] for c in list(self.containers.values()))

    def _bytes(self) -> float:
        return sum(c.counters()[1] for c in list(self.containers.values()))

    def _dropped(self) -> float:
        return sum(c.counters()[2] for c in list(self.containers.values()))

    def _lags(self) -> dict[tuple[str, ...], float]:
        return {
            (shown_url(r.url),): sum(r.lag().values())
            for r in list(self.forwarders.runners.values())
        }

    def _failures(self) -> dict[tuple[str, ...], float]:
        return {(shown_url(r.url),): r.failures for r in list(self.forwarders.runners.values())}

    def health_reasons(self) -> list[str]:
        """A sink that keeps failing: entries wait in the local store until it is back."""
        return [
            f"log sink {shown_url(r.url)} is away ({r.failures} failed sends): {r.error}"
            for r in list(self.forwarders.runners.values())
            if r.failures
        ]

    def _load(self, cid: str, info: dict[str, Any], counters: tuple[int, int, int]) -> Container:
        opts = settings(info.get("config", {}))
        log = SegmentLog(self.containers_dir / cid, opts.max_size, opts.max_file, opts.compress)
        container = Container(cid, info, opts, log)
        container.entries, container.bytes, container.dropped = counters
        self.containers[cid] = container
        return container

    # -- dockerd's calls ----------------------------------------------------------------

    def start_logging(self, req: StartLoggingRequest) -> None:
        cid = req.info.container_id
        if not _HEX64.fullmatch(cid):
            raise InvalidRequest(f"Info.ContainerID {cid[:80]!r} is not a 64-hex container id")
        opts = settings(req.info.config)  # InvalidOption lists the valid ones
        try:
            fd = open_fifo(req.file)
        except OSError as exc:
            raise PluginError(f"cannot open the log FIFO {req.file}: {exc.strerror}") from None
        info = kept_info(req, opts)
        assert self.state is not None
        with self.lock:
            container = self.containers.get(cid)
            if container is None:
                container = self._load(cid, info, (0, 0, 0))
            else:
                container.info, container.settings = info, opts
                container.log.max_size, container.log.max_file = opts.max_size, opts.max_file
                container.log.compress = opts.compress
            self.state.save_container(cid, info)
            self.state.add_fifo(req.file, cid)
            self._read(container, req.file, fd)
        self.forwarders.attach(container)

    def _read(self, container: Container, path: str, fd: int, resync: bool = False) -> None:
        reader = FifoReader(path, fd, container.log, container.count, self._eof, resync)
        container.readers.add(reader)
        self.fifos[path] = reader
        reader.start()

    def _eof(self, reader: FifoReader) -> None:
        """The FIFO is drained and closed: dockerd closed its end (after StopLogging)."""
        with self.lock:
            self.fifos.pop(reader.path, None)
            for container in self.containers.values():
                container.readers.discard(reader)
        if self.state is not None and not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.state.drop_fifo(reader.path)
        self.forwarders.wake()

    @nonblocking
    def stop_logging(self, req: StopLoggingRequest) -> None:
        """Answers at once: the reader goes on to EOF, which comes when dockerd closes its end
        right after this reply; stopping now would lose what is still in the pipe."""
        reader = self.fifos.get(req.file)
        if reader is not None:
            reader.stopping = True

    def read_logs(self, req: ReadLogsRequest) -> AsyncIterator[bytes]:
        cid = req.info.container_id
        container = self.containers.get(cid)
        if container is None:
            raise PluginError(f"no logs kept for container {cid[:12]!r}")
        return stream(container.log, req.config, lambda: container.running, self.readers)

    # -- upkeep -------------------------------------------------------------------------

    def counters(self) -> dict[str, tuple[int, int, int]]:
        with self.lock:
            return {c.id: (c.entries, c.bytes, c.dropped) for c in self.containers.values()}

    def _save_counters(self) -> None:
        if self.state is not None:
            with contextlib.suppress(Exception):
                self.state.save_counters(self.counters())

    def _janitor_loop(self) -> None:
        last = 0.0
        while not self._stop.wait(COUNTERS_EVERY):
            self._save_counters()
            if time.monotonic() - last >= JANITOR_EVERY:
                last = time.monotonic()
                try:
                    self.enforce_limits()
                except Exception as exc:  # upkeep must never stop the plugin
                    print(f"log upkeep: {exc!r}", file=sys.stderr)

    def enforce_limits(self, now: float | None = None) -> None:
        """Age and the global size cap. dockerd never says a container was removed, so a log
        whose container stopped writing ``max_age`` ago is deleted, and over the cap the
        oldest segments of any container go first (never a segment being written)."""
        now = time.time() if now is None else now
        with self.lock:
            containers = list(self.containers.values())
        for c in containers:
            mtime = _mtime(c.log)
            if not c.running and mtime and now - mtime > self.max_age:
                with self.lock:
                    self.containers.pop(c.id, None)
                c.log.remove()
                self.forwarders.detach(c.id)
                if self.state is not None:
                    self.state.forget(c.id)
        with self.lock:
            containers = list(self.containers.values())
        usage = {c.id: c.log.disk_usage() for c in containers}
        total = sum(usage.values())
        while total > self.max_total_size:
            candidates = [c for c in containers if len(c.log.segments) > 1]
            if not candidates:
                break
            oldest = min(candidates, key=lambda c: _oldest_mtime(c.log))
            freed = oldest.log.drop_oldest()
            if not freed:
                break
            total -= freed


def _mtime(log: SegmentLog) -> float:
    try:
        return max(e.stat().st_mtime for e in os.scandir(log.dir))
    except (ValueError, FileNotFoundError):
        return 0.0


def _oldest_mtime(log: SegmentLog) -> float:
    try:
        return min(e.stat().st_mtime for e in os.scandir(log.dir))
    except (ValueError, FileNotFoundError):
        return 0.0
