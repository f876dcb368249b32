"""Durable volume state in one SQLite database (WAL, synchronous=FULL).

Each change is one transaction, so a ``kill -9`` at any instant leaves either the old or the new
state on disk, never a mix. The driver keeps an in-memory copy for Get/List and writes through.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS volumes (
    name        TEXT PRIMARY KEY,
    mountpoint  TEXT NOT NULL,
    owned       INTEGER NOT NULL,
    options     TEXT NOT NULL,
    extra       TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mounts (
    volume  TEXT NOT NULL REFERENCES volumes(name) ON DELETE CASCADE,
    id      TEXT NOT NULL,
    count   INTEGER NOT NULL CHECK (count > 0),
    PRIMARY KEY (volume, id)
);
"""


@dataclass
class VolumeRecord:
    """What a driver remembers about one volume.

    ``owned`` volumes live in storage the driver created (it may delete their data on Remove);
    others (a user's ``mountpoint``) are only forgotten. ``extra`` is driver-specific.
    """

    name: str
    mountpoint: str
    options: dict[str, Any]
    owned: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class VolumeStore:
    """Volumes and mount counts; thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30
        )
        os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def load(self) -> tuple[list[VolumeRecord], list[tuple[str, str, int]]]:
        """All volumes and all (volume, mount id, count) rows."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, mountpoint, owned, options, extra, created_at FROM volumes"
            ).fetchall()
            mounts = self._db.execute("SELECT volume, id, count FROM mounts").fetchall()
        volumes = [
            VolumeRecord(
                name=r[0],
                mountpoint=r[1],
                owned=bool(r[2]),
                options=json.loads(r[3]),
                extra=json.loads(r[4]),
                created_at=datetime.fromisoformat(r[5]),
            )
            for r in rows
        ]
        return volumes, [(m[0], m[1], int(m[2])) for m in mounts]

    def put(self, rec: VolumeRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO volumes VALUES (?, ?, ?, ?, ?, ?)",
                (
                    rec.name,
                    rec.mountpoint,
                    int(rec.owned),
                    json.dumps(rec.options, sort_keys=True),
                    json.dumps(rec.extra, sort_keys=True),
                    rec.created_at.isoformat(),
                ),
            )

    def delete(self, name: str) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM mounts WHERE volume = ?", (name,))
            self._db.execute("DELETE FROM volumes WHERE name = ?", (name,))

    def set_mount(self, volume: str, mount_id: str, count: int) -> None:
        with self._lock:
            if count > 0:
                self._db.execute(
                    "INSERT OR REPLACE INTO mounts VALUES (?, ?, ?)", (volume, mount_id, count)
                )
            else:
                self._db.execute(
                    "DELETE FROM mounts WHERE volume = ? AND id = ?", (volume, mount_id)
                )

    def clear_mounts(self, volume: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM mounts WHERE volume = ?", (volume,))
