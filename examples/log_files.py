"""A logging driver: every container's output goes to files under a base directory, one
readable ``<container>.log`` and one ``<container>.frames`` that ``docker logs`` reads back.

Run ``sudo python examples/log_files.py [NAME] [BASE_DIR]``, then
``docker run --log-driver NAME busybox echo hi`` and ``docker logs`` on that container.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dockplug
from dockplug.protocol.log import EMPTY_ENTRY, FrameReader, frame
from dockplug.protocol.logentry import LogEntry, decode, encode


class Container:
    """One container's files; a lock, because a FIFO reader and ReadLogs share them."""

    def __init__(self, base: Path, container_id: str) -> None:
        self.text = base / f"{container_id}.log"
        self.frames = base / f"{container_id}.frames"
        self.lock = threading.Lock()
        self.readers = 0  # FIFOs being read for this container right now

    def append(self, payloads: list[bytes]) -> None:
        lines = []
        for payload in payloads:
            entry = decode(payload)
            stamp = datetime.fromtimestamp(entry.time_nano / 1e9, UTC).isoformat()
            text = entry.line.decode("utf-8", "replace")
            lines.append(f"{stamp} {entry.source}{' partial' if entry.partial else ''} {text}\n")
        with self.lock:
            with self.frames.open("ab") as out:
                out.write(b"".join(frame(p) for p in payloads))
            with self.text.open("a", encoding="utf-8") as out:
                out.writelines(lines)

    def entries(self) -> list[tuple[bytes, LogEntry]]:
        """(payload, entry) for every record stored so far."""
        with self.lock:
            try:
                data = self.frames.read_bytes()
            except FileNotFoundError:
                return []
        return [(p, decode(p)) for p in FrameReader().feed(data)]


def _for_docker_logs(entry: LogEntry) -> bytes:
    """A framed entry for ReadLogs. The FIFO's lines come without their newline and dockerd
    prints ReadLogs lines as they are, so complete lines get it back (as json-file stores them)."""
    meta = entry.partial_log_metadata
    if not entry.partial or (meta is not None and meta.last):
        entry = dataclasses.replace(entry, line=entry.line + b"\n")
    return frame(encode(entry))


class FilesDriver(dockplug.LogDriver):
    def __init__(self, base: str = "/var/lib/dockplug/logs") -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.containers: dict[str, Container] = {}
        self.lock = threading.Lock()

    def _container(self, container_id: str) -> Container:
        if not container_id or not all(c in "0123456789abcdef" for c in container_id):
            raise dockplug.InvalidRequest(f"bad ContainerID {container_id!r}")
        with self.lock:
            if container_id not in self.containers:
                self.containers[container_id] = Container(self.base, container_id)
            return self.containers[container_id]

    def start_logging(self, req: Any) -> None:
        container = self._container(req.info.container_id)
        # dockerd holds the FIFO open read-write, so this open never waits for a writer
        fd = os.open(req.file, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(fd, True)
        with container.lock:
            container.readers += 1
        name = f"log-{req.info.container_id[:12]}"
        threading.Thread(target=self._read, args=(fd, container), name=name, daemon=True).start()

    def _read(self, fd: int, container: Container) -> None:
        """Reads until EOF, which comes once dockerd closed its end after StopLogging."""
        reader = FrameReader()
        try:
            while chunk := os.read(fd, 1 << 16):
                if payloads := reader.feed(chunk):
                    container.append(payloads)
        except Exception as exc:  # a broken stream must not take the plugin down
            print(f"log stream of {container.text.stem[:12]} stopped: {exc}", file=sys.stderr)
        finally:
            os.close(fd)
            with container.lock:
                container.readers -= 1

    def stop_logging(self, req: Any) -> None:
        """Nothing to wait for: the reader drains the FIFO to EOF on its own."""

    def read_logs(self, req: Any) -> Iterator[bytes]:
        # checked here, not in the generator: once streaming starts the status is 200
        container = self._container(req.info.container_id)
        return self._stream(container, req.config)

    def _stream(self, container: Container, config: Any) -> Iterator[bytes]:
        since = config.since.timestamp() * 1e9 if config.since else None
        until = config.until.timestamp() * 1e9 if config.until else None

        def wanted(entry: LogEntry) -> bool:
            return (since is None or entry.time_nano >= since) and (
                until is None or entry.time_nano <= until
            )

        found = [e for _, e in container.entries() if wanted(e)]
        if config.tail >= 0:
            found = found[-config.tail :] if config.tail else []
        yield from (_for_docker_logs(e) for e in found)
        sent = len(container.entries())
        idle = 0
        while config.follow and container.readers:  # until the container's logger stops
            time.sleep(0.2)
            fresh = container.entries()[sent:]
            sent += len(fresh)
            idle = 0 if fresh else idle + 1
            yield from (_for_docker_logs(e) for _, e in fresh if wanted(e))
            if idle == 5:  # dockerd notices that docker logs -f left only at the next entry
                idle = 0
                yield EMPTY_ENTRY


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "logfiles"
    dockplug.run(FilesDriver(*sys.argv[2:3]), name=name)
