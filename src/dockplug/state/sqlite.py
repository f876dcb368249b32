"""The embedded :class:`~dockplug.state.volumes.VolumeStore`: one SQLite database (WAL).

Each change is one transaction, so a ``kill -9`` at any instant leaves either the old or the new
state on disk, never a mix. The driver keeps an in-memory copy for Get/List and writes through.

Power loss is a separate question, answered per kind of change. A new volume is fsynced before
Create answers (as ``synchronous=FULL`` would): once dockerd is told it exists, it exists. Removals
and mount counts are committed at once but fsynced by a background thread right after the
reply: a power cut in that fraction of a millisecond can bring back a removed volume (reconcile
then recreates its folder empty) or a mount count (after a power cut no container runs, and
``dockplug local gc`` clears counts). That halves the fsyncs on dockerd's hot path.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from dockplug.state.durable import fsync_dir
from dockplug.state.volumes import VolumeRecord, VolumeStore

SYNC_DELAY = 0.002  # seconds from a lazily synced commit to its fsync
CHECKPOINT_EVERY = 500  # commits between checkpoints (a few pages each: a WAL of ~4 MiB)
IDLE_CHECKPOINT = 0.5  # seconds without commits after which the WAL is checkpointed
CHECKPOINT_RETRY = 0.05  # seconds before another try when commits kept a checkpoint short
WAL_SIZE_LIMIT = 8 * 1024 * 1024  # the WAL file is cut back to this when it starts over


def _to_stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


SCHEMA = """
CREATE TABLE IF NOT EXISTS volumes (
    name        TEXT PRIMARY KEY,
    mountpoint  TEXT NOT NULL,
    owned       INTEGER NOT NULL,
    options     TEXT NOT NULL,
    extra       TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trash (
    path    TEXT PRIMARY KEY,
    volume  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mounts (
    volume  TEXT NOT NULL REFERENCES volumes(name) ON DELETE CASCADE,
    id      TEXT NOT NULL,
    count   INTEGER NOT NULL CHECK (count > 0),
    PRIMARY KEY (volume, id)
);
"""


class SqliteVolumeStore(VolumeStore):
    """Volumes and mount counts in one SQLite file; thread-safe (one connection behind a lock).

    The lock is only ever held for SQLite's in-memory work and its writes to the WAL, never
    across an fsync or a checkpoint (those run outside it, or on the background thread), so
    the event loop may take it without stalling on the disk.
    """

    def __init__(self, path: Path, on_error: Callable[[str], None] = _to_stderr) -> None:
        self.path = Path(path)
        self.wal = self.path.with_name(self.path.name + "-wal")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._wal_inode = -1
        self._db = self._connect()
        os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        # checkpoints happen on the background thread, not inside some request's commit
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")  # after a burst
        self._db.executescript(SCHEMA)
        self._on_error = on_error
        self._cond = threading.Condition()
        self._requested = self._synced = 0  # generations of lazily synced commits
        self._commits_since_checkpoint = 0
        self._closing = False
        # started by the first commit: a store that only serves reads (a plugin that has not
        # been called yet) has nothing to sync or checkpoint, and starting the thread and its
        # connection cost ~3 ms and ~0.5 MiB before the socket could listen
        self._background: threading.Thread | None = None

    def _start_background(self) -> None:
        with self._cond:
            if self._background is None and not self._closing:
                self._background = threading.Thread(
                    target=self._background_loop, name="dockplug-state-sync", daemon=True
                )
                self._background.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        # commits write the WAL; fsyncs are ours to place (see the module docstring)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def sync(self) -> None:
        """Makes every committed change durable (fdatasync of the WAL, where commits live)."""
        try:
            fd = os.open(self.wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # no WAL: everything is checkpointed (and synced) in the database file
        try:
            os.fdatasync(fd)  # also flushes the size when the WAL grew
            inode = os.fstat(fd).st_ino
            if inode != self._wal_inode:  # a new WAL file: its directory entry must last too
                fsync_dir(self.path.parent)
                self._wal_inode = inode
        finally:
            os.close(fd)

    def _committed(self, durable: bool) -> None:
        """After each commit: sync it now (durable) or soon, and checkpoint now and then."""
        if self._background is None:
            self._start_background()
        if durable:
            self.sync()
        with self._cond:
            self._commits_since_checkpoint += 1
            if not durable:
                self._requested += 1
            if not durable or self._commits_since_checkpoint >= CHECKPOINT_EVERY:
                self._cond.notify_all()

    def _background_loop(self) -> None:
        checkpointer = self._connect()
        try:
            while self._background_turn(checkpointer):
                pass
        finally:
            checkpointer.close()

    def _background_turn(self, checkpointer: sqlite3.Connection) -> bool:
        with self._cond:
            # with commits since the last checkpoint, a quiet moment is the time for one:
            # the WAL can only start over once a checkpoint has copied all of it
            woke = self._cond.wait_for(
                lambda: (
                    self._requested > self._synced
                    or self._commits_since_checkpoint >= CHECKPOINT_EVERY
                    or self._closing
                ),
                timeout=IDLE_CHECKPOINT if self._commits_since_checkpoint else None,
            )
            if self._closing:
                return False
            target = self._requested
            checkpoint = not woke or self._commits_since_checkpoint >= CHECKPOINT_EVERY
            if checkpoint:
                self._commits_since_checkpoint = 0
        # not in the same instant as the reply that follows the commit: both need the
        # interpreter, and the reply is what dockerd waits for
        time.sleep(SYNC_DELAY)
        try:
            self.sync()
            if checkpoint:
                # copies the WAL into the database (fsyncing both); the next commit then
                # starts the WAL over instead of growing it. PASSIVE never blocks a writer,
                # so a commit landing meanwhile can leave it short: then try again soon
                busy, frames, copied = checkpointer.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)"
                ).fetchone()
                if busy or copied < frames:
                    with self._cond:
                        self._commits_since_checkpoint = max(
                            self._commits_since_checkpoint, CHECKPOINT_EVERY
                        )
                        self._cond.wait(CHECKPOINT_RETRY)
        except (OSError, sqlite3.Error) as exc:  # retried; never kill the thread
            self._on_error(f"state: sync of {self.path} failed: {exc}")
            with self._cond:
                self._cond.wait(1.0)
            return True
        with self._cond:
            self._synced = max(self._synced, target)
            self._cond.notify_all()
        return True

    def wait_synced(self, timeout: float = 5.0) -> bool:
        """True once every change committed so far has reached the disk."""
        with self._cond:
            target = self._requested
            return self._cond.wait_for(lambda: self._synced >= target, timeout)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            background = self._background
        if background is not None:
            background.join(timeout=10)
        with self._lock:
            self.sync()
            self._db.close()  # the last connection checkpoints and removes the WAL

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
        self._committed(durable=True)

    def delete(self, name: str, trash: str | None = None) -> None:
        """Forgets a volume (its mounts go by ON DELETE CASCADE) and, in the same transaction,
        notes ``trash``: storage to free afterwards, and again after a crash if need be."""
        with self._lock:
            if trash is None:
                self._db.execute("DELETE FROM volumes WHERE name = ?", (name,))
            else:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.execute("DELETE FROM volumes WHERE name = ?", (name,))
                    self._db.execute("INSERT OR REPLACE INTO trash VALUES (?, ?)", (trash, name))
        self._committed(durable=False)

    def trash(self) -> list[tuple[str, str]]:
        """(path, volume) of storage removed volumes left to free."""
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute("SELECT path, volume FROM trash")]

    def forget_trash(self, path: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM trash WHERE path = ?", (path,))
        self._committed(durable=False)

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
        self._committed(durable=False)

    def clear_mounts(self, volume: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM mounts WHERE volume = ?", (volume,))
        self._committed(durable=False)
