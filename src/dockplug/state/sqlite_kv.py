"""The embedded key-value store: one SQLite file (WAL) for the plugins of one host.

The same revisions, transactions, leases and watches as etcd (:mod:`dockplug.state.kv`), for a
plugin that runs on one host, or for tests, without a cluster. Any number of threads and
processes may open the same file:

- every change runs in a ``BEGIN IMMEDIATE`` transaction, which takes SQLite's write lock for
  the whole file: the revision counter in ``meta`` moves by one per changing transaction, in
  commit order, and of several create-if-absent racers exactly one finds the key absent;
- each change also writes rows to ``events`` (the changelog) in the same transaction, so a
  watch reads every change after its revision, in order, from the file: other processes' changes
  are found by polling (every ``poll_interval``), this process's are announced at once;
- the changelog keeps ``history`` revisions; a watch from an older revision raises
  :class:`~dockplug.state.kv.Compacted`, as etcd's does after a compaction;
- leases carry a wall-clock expiry (so a host that was down for longer than the TTL finds its
  keys gone, as its peers would in etcd); every open store sweeps expired leases and deletes
  their keys as DELETE events.

SQLite calls block, so they run on one worker thread per store, never on the event loop; each
has a deadline, and SQLite's busy wait (another process holding the write lock) is bounded by it.
With ``durable=True`` (the default) every commit is fsynced before the call returns
(``synchronous=FULL``): an address handed out is not handed out again after a power cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import os
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from dockplug.state.kv import (
    DEFAULT_TIMEOUT,
    Compacted,
    Compare,
    Delete,
    Entry,
    Event,
    EventKind,
    Health,
    KVStore,
    LeaseNotFound,
    Op,
    OpResult,
    Put,
    StoreUnavailable,
    TxnResult,
    check_key,
    check_ops,
    prefix_end,
)

T = TypeVar("T")

HISTORY = 10_000  # revisions of changelog kept for watches
TRIM_EVERY = 128  # revisions between trims of the changelog
POLL_INTERVAL = 0.05  # seconds between looks for other processes' changes and expired leases
WATCH_BATCH = 256  # revisions a watch reads at a time
WATCH_FALLBACK = 1.0  # seconds a watch waits for news before it looks anyway
JOB_GRACE = 1.0  # seconds past its deadline before a call stops waiting for a hung disk
SWEEP_BUSY_MS = 200  # how long the lease sweeper waits for the write lock (it tries again)
WAL_SIZE_LIMIT = 8 * 1024 * 1024

_PUT, _DELETE = 0, 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('compact_revision', 0), ('next_lease', 1);
CREATE TABLE IF NOT EXISTS kv (
    key              BLOB PRIMARY KEY,
    value            BLOB NOT NULL,
    create_revision  INTEGER NOT NULL,
    mod_revision     INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    lease            INTEGER
);
CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS leases (
    id       INTEGER PRIMARY KEY,
    ttl      INTEGER NOT NULL,
    expires  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_expires ON leases(expires);
CREATE TABLE IF NOT EXISTS events (
    id               INTEGER PRIMARY KEY,
    revision         INTEGER NOT NULL,
    kind             INTEGER NOT NULL,
    key              BLOB NOT NULL,
    value            BLOB NOT NULL,
    create_revision  INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    lease            INTEGER
);
CREATE INDEX IF NOT EXISTS events_revision ON events(revision);
"""

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}


def _to_stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


def _key_range(prefix: bytes) -> tuple[str, tuple[bytes, ...]]:
    """SQL condition and parameters for "key starts with PREFIX" (keys are BLOBs: byte order)."""
    if not prefix:
        return "1", ()
    end = prefix_end(prefix)
    if end is None:
        return "key >= ?", (prefix,)
    return "key >= ? AND key < ?", (prefix, end)


def _entry(row: Sequence[Any]) -> Entry:
    key, value, create, mod, version, lease = row
    return Entry(bytes(key).decode(), bytes(value), create, mod, version, lease)


class _Waiters:
    """The watches of this process on one file, woken when it changes (from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def add(self, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._lock:
            self._waiters.add(waiter)

    def discard(self, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(event.set)


_files_lock = threading.Lock()
_files: dict[str, _Waiters] = {}


def _waiters_for(path: Path) -> _Waiters:
    with _files_lock:
        return _files.setdefault(os.path.realpath(path), _Waiters())


class _Writer:
    """One write transaction (``BEGIN IMMEDIATE`` already run): applies operations with the
    revision that follows the store's, which it takes only once something changes."""

    def __init__(self, db: sqlite3.Connection, store: str) -> None:
        self.db = db
        self.store = store
        self.base: int = db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        self.changed = False
        self.now = time.time()

    @property
    def revision(self) -> int:
        return self.base + 1 if self.changed else self.base

    def _next(self) -> int:
        self.changed = True
        return self.base + 1

    def read(self, key: bytes, prefix: bool) -> tuple[Entry, ...]:
        cols = "key, value, create_revision, mod_revision, version, lease"
        if prefix:
            cond, args = _key_range(key)
            rows = self.db.execute(f"SELECT {cols} FROM kv WHERE {cond} ORDER BY key", args)
        else:
            rows = self.db.execute(f"SELECT {cols} FROM kv WHERE key = ?", (key,))
        return tuple(_entry(r) for r in rows)

    def compare(self, c: Compare) -> bool:
        found = self.read(check_key(c.key), False)
        entry = found[0] if found else None
        if c.target == "value":
            if entry is None:  # etcd: a value comparison on a missing key always fails
                return False
            actual: bytes | int = entry.value
        elif c.target == "version":
            actual = entry.version if entry else 0
        elif c.target == "create_revision":
            actual = entry.create_revision if entry else 0
        else:
            actual = entry.mod_revision if entry else 0
        if isinstance(actual, bytes) != isinstance(c.operand, bytes):
            raise TypeError(f"compare of {c.target} needs a {type(actual).__name__}: {c!r}")
        return _OPS[c.op](actual, c.operand)

    def put(self, key: bytes, value: bytes, lease: int | None) -> None:
        if lease is not None:
            alive = self.db.execute(
                "SELECT 1 FROM leases WHERE id = ? AND expires > ?", (lease, self.now)
            ).fetchone()
            if alive is None:
                raise LeaseNotFound(self.store, lease)
        revision = self._next()
        row = self.db.execute(
            "SELECT create_revision, version FROM kv WHERE key = ?", (key,)
        ).fetchone()
        create, version = (row[0], row[1] + 1) if row else (revision, 1)
        self.db.execute(
            "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)",
            (key, value, create, revision, version, lease),
        )
        self.db.execute(
            "INSERT INTO events (revision, kind, key, value, create_revision, version, lease)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (revision, _PUT, key, value, create, version, lease),
        )

    def delete_keys(self, keys: list[bytes]) -> int:
        if not keys:
            return 0  # etcd: a delete that deletes nothing is no change and takes no revision
        revision = self._next()
        self.db.executemany(
            "INSERT INTO events (revision, kind, key, value, create_revision, version, lease)"
            " VALUES (?, ?, ?, x'', 0, 0, NULL)",
            [(revision, _DELETE, k) for k in keys],
        )
        self.db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in keys])
        return len(keys)

    def delete(self, key: bytes, prefix: bool) -> int:
        if prefix:
            cond, args = _key_range(key)
            keys = [
                r[0] for r in self.db.execute(f"SELECT key FROM kv WHERE {cond} ORDER BY key", args)
            ]
        else:
            keys = [r[0] for r in self.db.execute("SELECT key FROM kv WHERE key = ?", (key,))]
        return self.delete_keys(keys)

    def end_lease(self, lease: int) -> None:
        keys = [r[0] for r in self.db.execute("SELECT key FROM kv WHERE lease = ?", (lease,))]
        self.delete_keys(keys)
        self.db.execute("DELETE FROM leases WHERE id = ?", (lease,))

    def apply(self, op: Op) -> OpResult:
        if isinstance(op, Put):
            self.put(check_key(op.key), op.value, op.lease)
            return OpResult()
        key = op.key.encode() if op.prefix else check_key(op.key)
        if isinstance(op, Delete):
            return OpResult(deleted=self.delete(key, op.prefix))
        return OpResult(entries=self.read(key, op.prefix))

    def commit(self, history: int) -> None:
        if self.changed:
            revision = self.base + 1
            self.db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
            if revision % TRIM_EVERY == 0:
                _compact(self.db, revision - history)
        self.db.execute("COMMIT")


def _compact_revision(db: sqlite3.Connection) -> int:
    """Events before this revision are gone."""
    value: int = db.execute("SELECT value FROM meta WHERE name = 'compact_revision'").fetchone()[0]
    return value


def _compact(db: sqlite3.Connection, floor: int) -> None:
    if floor > _compact_revision(db):
        db.execute("DELETE FROM events WHERE revision < ?", (floor,))
        db.execute("UPDATE meta SET value = ? WHERE name = 'compact_revision'", (floor,))


class SqliteKV(KVStore):
    """The key-value store in the SQLite file PATH (created, with its folder, if missing).

    The constructor runs SQLite work on the calling thread (once, at start-up; in a running
    event loop use ``await SqliteKV.open(path)``); every call after that runs on the store's
    worker thread. ``timeout`` is the default deadline of each call.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        history: int = HISTORY,
        durable: bool = True,
        poll_interval: float = POLL_INTERVAL,
        on_error: Callable[[str], None] = _to_stderr,
    ) -> None:
        if history < TRIM_EVERY:
            raise ValueError(f"history must keep at least {TRIM_EVERY} revisions, not {history}")
        self.path = Path(path)
        self.name = f"SQLite store {self.path}"
        self.timeout = timeout
        self.history = history
        self._durable = durable
        self._poll = poll_interval
        self._on_error = on_error
        self._lock = threading.Lock()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._db = self._connect(timeout)
            os.chmod(self.path, 0o600)
            self._prepare(time.monotonic() + timeout)
        except sqlite3.Error as exc:
            raise self._unavailable(exc, timeout) from exc
        self._waiters = _waiters_for(self.path)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dockplug-kv")
        self._stop = threading.Event()
        self._ticker = threading.Thread(
            target=self._tick_loop, name="dockplug-kv-tick", daemon=True
        )
        self._ticker.start()

    def _prepare(self, deadline: float) -> None:
        """WAL mode and the schema, retried until DEADLINE while another client does the same:
        when several clients open a new file at once, SQLite answers some of them SQLITE_BUSY
        at once, without its busy wait, while the file turns WAL under them."""
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
                self._db.execute("BEGIN IMMEDIATE")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                time.sleep(0.01)

    @classmethod
    async def open(cls, path: Path | str, **kw: Any) -> SqliteKV:
        """Opens the store on a worker thread (opening may wait for another process's lock)."""
        return await asyncio.to_thread(functools.partial(cls, path, **kw))

    def _connect(self, timeout: float) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=timeout
        )
        db.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'NORMAL'}")
        return db

    def _unavailable(self, exc: sqlite3.Error, seconds: float) -> StoreUnavailable:
        text = str(exc)
        if _busy(exc):
            return StoreUnavailable(
                f"{self.name} stayed locked by another thread or process for {seconds:g} s: "
                f"find what holds it (fuser {self.path}) or give the call a longer timeout"
            )
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
            return StoreUnavailable(
                f"{self.name} is not an SQLite database ({text}): move it aside or restore it"
            )
        return StoreUnavailable(
            f"{self.name} failed: {text}: check that {self.path.parent} is writable and its "
            "disk has space"
        )

    # --- running SQLite work off the event loop, within a deadline --------------------------

    def _job(self, fn: Callable[[sqlite3.Connection], T], deadline: float, seconds: float) -> T:
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"{self.name} is closed")
            left = deadline - time.monotonic()
            if left <= 0:  # the deadline passed while it waited for the worker thread
                raise StoreUnavailable(
                    f"{self.name} is busy: the call waited {seconds:g} s for its turn; "
                    "give it a longer timeout or make fewer calls at once"
                )
            db = self._db
            db.execute(f"PRAGMA busy_timeout = {max(1, int(left * 1000))}")
            try:
                return fn(db)
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._unavailable(exc, seconds) from exc
                raise

    async def _call(self, fn: Callable[[sqlite3.Connection], T], timeout: float | None) -> T:
        if self._closed:
            raise StoreUnavailable(f"{self.name} is closed")
        seconds = self._deadline(timeout)
        deadline = time.monotonic() + seconds
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._job, fn, deadline, seconds
        )
        try:
            return await asyncio.wait_for(future, seconds + JOB_GRACE)
        except TimeoutError:
            raise StoreUnavailable(
                f"{self.name} did not answer within {seconds:g} s, its disk may hang: the "
                f"outcome of the call is unknown; check the file system of {self.path}"
            ) from None

    def _write(self, body: Callable[[_Writer], T]) -> Callable[[sqlite3.Connection], T]:
        def run(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            writer = _Writer(db, self.name)
            result = body(writer)
            writer.commit(self.history)
            if writer.changed:
                self._waiters.notify()
            return result

        return run

    # --- the interface -------------------------------------------------------------------------

    async def get(self, key: str, *, timeout: float | None = None) -> Entry | None:
        raw = check_key(key)

        def read(db: sqlite3.Connection) -> Entry | None:
            row = db.execute(
                "SELECT key, value, create_revision, mod_revision, version, lease FROM kv"
                " WHERE key = ?",
                (raw,),
            ).fetchone()
            return None if row is None else _entry(row)

        return await self._call(read, timeout)

    async def range(self, prefix: str, *, timeout: float | None = None) -> tuple[list[Entry], int]:
        cond, args = _key_range(prefix.encode())

        def read(db: sqlite3.Connection) -> tuple[list[Entry], int]:
            db.execute("BEGIN")  # one snapshot for the rows and the revision
            rows = db.execute(
                "SELECT key, value, create_revision, mod_revision, version, lease FROM kv"
                f" WHERE {cond} ORDER BY key",
                args,
            ).fetchall()
            revision = db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
            db.execute("COMMIT")
            return [_entry(r) for r in rows], revision

        return await self._call(read, timeout)

    async def put(
        self, key: str, value: bytes, lease: int | None = None, *, timeout: float | None = None
    ) -> int:
        raw = check_key(key)
        data = bytes(value)

        def run(w: _Writer) -> int:
            w.put(raw, data, lease)
            return w.revision

        return await self._call(self._write(run), timeout)

    async def delete(self, key: str, *, timeout: float | None = None) -> bool:
        raw = check_key(key)
        return await self._call(self._write(lambda w: w.delete(raw, False) > 0), timeout)

    async def delete_prefix(self, prefix: str, *, timeout: float | None = None) -> int:
        raw = prefix.encode()
        return await self._call(self._write(lambda w: w.delete(raw, True)), timeout)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        check_ops(success)
        check_ops(failure)
        compares, success, failure = tuple(compares), tuple(success), tuple(failure)

        def run(w: _Writer) -> TxnResult:
            succeeded = all(w.compare(c) for c in compares)
            results = tuple(w.apply(op) for op in (success if succeeded else failure))
            return TxnResult(succeeded, w.revision, results)

        return await self._call(self._write(run), timeout)

    async def grant(self, ttl: int, *, timeout: float | None = None) -> int:
        if ttl < 1:
            raise ValueError(f"a lease's ttl is a whole number of seconds >= 1, not {ttl}")

        def run(w: _Writer) -> int:
            lease: int = w.db.execute(
                "UPDATE meta SET value = value + 1 WHERE name = 'next_lease' RETURNING value - 1"
            ).fetchone()[0]
            w.db.execute("INSERT INTO leases VALUES (?, ?, ?)", (lease, ttl, w.now + ttl))
            return lease

        return await self._call(self._write(run), timeout)

    async def keep_alive(self, lease: int, *, timeout: float | None = None) -> int:
        def run(w: _Writer) -> int:
            row = w.db.execute(
                "UPDATE leases SET expires = ? + ttl WHERE id = ? AND expires > ? RETURNING ttl",
                (w.now, lease, w.now),
            ).fetchone()
            if row is None:
                raise LeaseNotFound(self.name, lease)
            ttl: int = row[0]
            return ttl

        return await self._call(self._write(run), timeout)

    async def revoke(self, lease: int, *, timeout: float | None = None) -> None:
        def run(w: _Writer) -> None:
            if w.db.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone() is None:
                raise LeaseNotFound(self.name, lease)
            w.end_lease(lease)

        await self._call(self._write(run), timeout)

    async def compact(self, revision: int, *, timeout: float | None = None) -> None:
        def run(w: _Writer) -> None:
            if revision > w.base:
                raise ValueError(f"cannot compact to {revision}: the store is at {w.base}")
            _compact(w.db, revision)

        await self._call(self._write(run), timeout)

    async def health(self, *, timeout: float | None = None) -> Health:
        start = time.monotonic()
        try:
            revision = await self._call(_revision, timeout)
        except StoreUnavailable as exc:
            return Health(False, self.name, None, time.monotonic() - start, str(exc))
        return Health(True, self.name, revision, time.monotonic() - start)

    async def _events(
        self, prefix: str, start_revision: int | None, timeout: float
    ) -> AsyncGenerator[Event | None, None]:
        if start_revision is not None and start_revision < 0:
            raise ValueError(f"start_revision must be >= 0, not {start_revision}")
        raw = prefix.encode()
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        self._waiters.add(waiter)
        try:
            if not start_revision:
                next_revision = await self._call(_revision, timeout) + 1
            else:
                next_revision = start_revision
                await self._call(functools.partial(self._check_start, start_revision), timeout)
            yield None  # established
            while not self._closed:
                waiter[1].clear()  # before the read: a change after it sets it again
                read = functools.partial(self._read_events, raw, next_revision)
                try:
                    events, next_revision, caught_up = await self._call(read, timeout)
                except StoreUnavailable:
                    if self._closed:
                        return
                    raise
                for event in events:
                    yield event
                if caught_up and not self._closed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waiter[1].wait(), WATCH_FALLBACK)
        finally:
            self._waiters.discard(waiter)

    def _check_start(self, start: int, db: sqlite3.Connection) -> None:
        compacted = _compact_revision(db)
        if start < compacted:
            raise Compacted(self.name, start, compacted)

    def _read_events(
        self, prefix: bytes, start: int, db: sqlite3.Connection
    ) -> tuple[list[Event], int, bool]:
        """The events of up to WATCH_BATCH revisions from START, the revision to read next
        and whether that reached the store's current revision."""
        cond, args = _key_range(prefix)
        db.execute("BEGIN")
        current = _revision(db)
        compacted = db.execute("SELECT value FROM meta WHERE name = 'compact_revision'").fetchone()[
            0
        ]
        if start < compacted:
            db.execute("COMMIT")
            raise Compacted(self.name, start, compacted)
        last = min(current, start + WATCH_BATCH - 1)
        rows = db.execute(
            "SELECT revision, kind, key, value, create_revision, version, lease FROM events"
            f" WHERE revision BETWEEN ? AND ? AND {cond} ORDER BY id",
            (start, last, *args),
        ).fetchall()
        db.execute("COMMIT")
        events = []
        for revision, kind, key, value, create, version, lease in rows:
            name = bytes(key).decode()
            if kind == _PUT:
                entry = Entry(name, bytes(value), create, revision, version, lease)
                events.append(Event(EventKind.PUT, entry, revision))
            else:
                events.append(Event(EventKind.DELETE, Entry(name, b"", 0, revision, 0), revision))
        return events, max(start, last + 1), last >= current

    # --- the background thread: other processes' changes, expired leases ----------------------

    def _tick_loop(self) -> None:
        try:
            db = self._connect(self.timeout)
        except sqlite3.Error as exc:
            self._on_error(f"{self.name}: the lease sweeper cannot open the file: {exc}")
            return
        seen = -1
        try:
            while not self._stop.wait(self._poll):
                try:
                    revision = _revision(db)
                    if revision != seen:  # maybe another process's change: wake the watches
                        seen = revision
                        self._waiters.notify()
                    soonest = db.execute("SELECT MIN(expires) FROM leases").fetchone()[0]
                    if soonest is not None and soonest <= time.time():
                        self._sweep(db)
                except sqlite3.Error as exc:  # locked by a long writer, or worse: try again
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    if not _busy(exc):
                        self._on_error(f"{self.name}: lease sweep failed: {exc}")
        finally:
            db.close()

    def _sweep(self, db: sqlite3.Connection) -> None:
        """Ends every expired lease and deletes its keys (one revision for the lot)."""
        db.execute(f"PRAGMA busy_timeout = {SWEEP_BUSY_MS}")
        db.execute("BEGIN IMMEDIATE")
        writer = _Writer(db, self.name)
        expired = [
            r[0] for r in db.execute("SELECT id FROM leases WHERE expires <= ?", (writer.now,))
        ]
        for lease in expired:
            writer.end_lease(lease)
        writer.commit(self.history)
        if writer.changed:
            self._waiters.notify()

    async def close(self) -> None:
        if self._closed:
            return
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=10)
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=True)
        self._waiters.notify()  # open watches see the store closed and end
        with self._lock:
            self._db.close()


def _busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock (worth a retry)."""
    text = str(exc)
    return "locked" in text or "busy" in text


def _revision(db: sqlite3.Connection) -> int:
    value: int = db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
    return value
