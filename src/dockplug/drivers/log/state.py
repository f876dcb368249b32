"""dockplug-logs' state in one SQLite database (WAL) under ``--state-dir``.

What a restarted plugin needs and dockerd will not send again: the FIFOs being read (dockerd
calls StartLogging once per container start, never after a plugin restart), each container's
Info (without env values, except the keys ``--log-opt env=`` names), counters, and each sink's
position in each container's log. A position is saved only after the sink took the entries
up to it, so after a ``kill -9`` nothing before it is sent again and nothing after it is lost.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockplug.drivers.log.segments import Position

SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id       TEXT PRIMARY KEY,
    info     TEXT NOT NULL,
    entries  INTEGER NOT NULL DEFAULT 0,
    bytes    INTEGER NOT NULL DEFAULT 0,
    dropped  INTEGER NOT NULL DEFAULT 0,
    updated  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fifos (
    path       TEXT PRIMARY KEY,
    container  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    sink       TEXT NOT NULL,
    container  TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    offset     INTEGER NOT NULL,
    sent       INTEGER NOT NULL,
    PRIMARY KEY (sink, container)
);
CREATE TABLE IF NOT EXISTS sinks (
    id       TEXT PRIMARY KEY,
    url      TEXT NOT NULL,
    error    TEXT NOT NULL DEFAULT '',
    updated  REAL NOT NULL
);
"""


@dataclass
class ContainerRow:
    id: str
    info: dict[str, Any]
    entries: int = 0
    bytes: int = 0
    dropped: int = 0
    updated: float = 0.0


class LogState:
    """Thread-safe (one connection behind a lock); every change is one short transaction."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        if readonly:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30)  # fmt: skip
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # containers and FIFOs
    def save_container(self, cid: str, info: dict[str, Any]) -> None:
        self._run(
            "INSERT INTO containers (id, info, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET info = excluded.info, updated = excluded.updated",
            (cid, json.dumps(info), time.time()),
        )

    def add_fifo(self, path: str, cid: str) -> None:
        self._run("INSERT OR REPLACE INTO fifos VALUES (?, ?)", (path, cid))

    def drop_fifo(self, path: str) -> None:
        self._run("DELETE FROM fifos WHERE path = ?", (path,))

    def fifos(self) -> list[tuple[str, str]]:
        return [(p, c) for p, c in self._run("SELECT path, container FROM fifos")]

    def containers(self) -> list[ContainerRow]:
        rows = self._run("SELECT id, info, entries, bytes, dropped, updated FROM containers")
        return [ContainerRow(r[0], json.loads(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

    def save_counters(self, counters: dict[str, tuple[int, int, int]]) -> None:
        """(entries, bytes, dropped) per container: totals, written now and then."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            for cid, (entries, size, dropped) in counters.items():
                self._db.execute(
                    "UPDATE containers SET entries = ?, bytes = ?, dropped = ?, updated = ? "
                    "WHERE id = ?",
                    (entries, size, dropped, now, cid),
                )
            self._db.execute("COMMIT")

    def forget(self, cid: str) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            for table, key in (("containers", "id"), ("fifos", "container"),
                               ("positions", "container")):  # fmt: skip
                self._db.execute(f"DELETE FROM {table} WHERE {key} = ?", (cid,))
            self._db.execute("COMMIT")

    # sinks
    def save_sink(self, sink: str, url: str, error: str = "") -> None:
        self._run(
            "INSERT OR REPLACE INTO sinks VALUES (?, ?, ?, ?)", (sink, url, error, time.time())
        )

    def sinks(self) -> list[tuple[str, str, str]]:
        return [(s, u, e) for s, u, e in self._run("SELECT id, url, error FROM sinks")]

    def position(self, sink: str, cid: str) -> tuple[Position, int] | None:
        rows = self._run(
            "SELECT seq, offset, sent FROM positions WHERE sink = ? AND container = ?", (sink, cid)
        )
        return (Position(rows[0][0], rows[0][1]), rows[0][2]) if rows else None

    def save_position(self, sink: str, cid: str, pos: Position, sent: int) -> None:
        self._run(
            "INSERT OR REPLACE INTO positions VALUES (?, ?, ?, ?, ?)",
            (sink, cid, pos.seq, pos.offset, sent),
        )

    def positions(self) -> list[tuple[str, str, int]]:
        return [(s, c, n) for s, c, n in self._run("SELECT sink, container, sent FROM positions")]
