"""One container's log as the driver and the forwarders both see it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from dockplug.drivers.log.config import LogSettings
from dockplug.drivers.log.fifo import FifoReader
from dockplug.drivers.log.segments import SegmentLog


@dataclass
class Container:
    """One container's log: its segments, the FIFOs being read into them, its counters."""

    id: str
    info: dict[str, Any]
    settings: LogSettings
    log: SegmentLog
    readers: set[FifoReader] = field(default_factory=set)
    entries: int = 0
    bytes: int = 0
    dropped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, entries: int, size: int, dropped: int) -> None:
        with self.lock:
            self.entries += entries
            self.bytes += size
            self.dropped += dropped

    def counters(self) -> tuple[int, int, int]:
        """(entries, bytes, dropped), read together."""
        with self.lock:
            return self.entries, self.bytes, self.dropped

    @property
    def running(self) -> bool:
        return bool(self.readers)
