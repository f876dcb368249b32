"""VolumeStore: where its fsyncs happen (a Create is durable before it returns; removals and
mount counts are synced by the background thread right after) and that every commit is
visible to a fresh connection at once, which is what a restart after ``kill -9`` reads."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from dockplug.state import VolumeRecord
from dockplug.state.sqlite import IDLE_CHECKPOINT, WAL_SIZE_LIMIT
from dockplug.state.sqlite import SqliteVolumeStore as VolumeStore


class SyncSpy:
    """Records which thread ran each real sync (the fdatasync still happens)."""

    def __init__(self, store: VolumeStore) -> None:
        self.calls: list[tuple[str, float]] = []
        real = store.sync

        def spy() -> None:
            real()
            self.calls.append((threading.current_thread().name, time.monotonic()))

        store.sync = spy  # type: ignore[method-assign]


@pytest.fixture
def store(tmp_path: Path) -> VolumeStore:
    s = VolumeStore(tmp_path / "volumes.db")
    yield s  # type: ignore[misc]
    s.close()


def _rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT * FROM {table}").fetchall()


def test_a_new_volume_is_synced_before_put_returns(store: VolumeStore) -> None:
    spy = SyncSpy(store)
    store.put(VolumeRecord(name="v1", mountpoint="/x/v1", options={"uid": 1}))
    assert spy.calls and spy.calls[0][0] == threading.current_thread().name
    assert [r[0] for r in _rows(store.path, "volumes")] == ["v1"]


def test_removals_and_mount_counts_are_synced_in_the_background(store: VolumeStore) -> None:
    store.put(VolumeRecord(name="v1", mountpoint="/x/v1", options={}))
    spy = SyncSpy(store)
    store.set_mount("v1", "id-a", 2)
    store.delete("v1")
    # committed at once: a restart after kill -9 (a new connection) sees both changes
    assert _rows(store.path, "volumes") == []
    assert _rows(store.path, "mounts") == []
    assert store.wait_synced(5.0), "the background sync did not catch up within 5 s"
    assert spy.calls, "nothing was synced"
    assert all(name == "dockplug-state-sync" for name, _ in spy.calls)


def test_close_syncs_and_stops_the_background_thread(tmp_path: Path) -> None:
    s = VolumeStore(tmp_path / "volumes.db")
    s.put(VolumeRecord(name="v1", mountpoint="/x/v1", options={}))
    s.set_mount("v1", "id-a", 1)
    flusher = s._background
    s.close()
    assert not flusher.is_alive()
    reopened = VolumeStore(tmp_path / "volumes.db")
    try:
        volumes, mounts = reopened.load()
        assert [v.name for v in volumes] == ["v1"]
        assert mounts == [("v1", "id-a", 1)]
    finally:
        reopened.close()


def test_a_burst_of_lazy_commits_needs_few_syncs(store: VolumeStore) -> None:
    store.put(VolumeRecord(name="v1", mountpoint="/x/v1", options={}))
    spy = SyncSpy(store)
    for i in range(200):
        store.set_mount("v1", f"id-{i}", 1)
    assert store.wait_synced(5.0)
    assert 1 <= len(spy.calls) < 200


def test_the_wal_is_checkpointed_in_the_background(store: VolumeStore) -> None:
    store.put(VolumeRecord(name="v1", mountpoint="/x/v1", options={}))
    for i in range(3000):  # a few pages each: ~30 MB of WAL if nothing checkpointed it
        store.set_mount("v1", f"id-{i % 50}", 1 + i)
        if i % 100 == 99:  # dockerd's calls come one after another, not all at once
            assert store.wait_synced(10.0)
    size = store.wal.stat().st_size
    assert size < 12 * 1024 * 1024, f"WAL grew to {size} bytes: no checkpoint ran"


def test_the_wal_starts_over_after_a_burst(store: VolumeStore) -> None:
    store.put(VolumeRecord(name="v1", mountpoint="/x/v1", options={}))
    for i in range(3000):  # no pause at all: PASSIVE checkpoints keep falling behind
        store.set_mount("v1", f"id-{i % 50}", 1 + i)
    assert store.wait_synced(5.0)
    assert store.wal.stat().st_size > WAL_SIZE_LIMIT  # (or the test proves nothing)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(IDLE_CHECKPOINT + 0.2)  # a quiet moment: the whole WAL gets checkpointed
        store.set_mount("v1", "id-last", 1)  # and the next commit starts it over, cut down
        if store.wal.stat().st_size <= WAL_SIZE_LIMIT:
            return
    raise AssertionError(f"the WAL stayed at {store.wal.stat().st_size} bytes")


def _sync_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "dockplug-state-sync"]


def test_the_sync_thread_starts_with_the_first_commit(tmp_path: Path) -> None:
    """A plugin that has only been started (or only answers reads) runs no sync thread and
    opens no second connection; the first commit starts it, and close() works either way."""
    before = len(_sync_threads())
    idle = VolumeStore(tmp_path / "idle.db")
    assert len(_sync_threads()) == before
    idle.close()
    s = VolumeStore(tmp_path / "volumes.db")
    try:
        assert len(_sync_threads()) == before
        s.put(VolumeRecord(name="v", mountpoint=str(tmp_path / "v"), options={}))
        assert len(_sync_threads()) == before + 1
        s.set_mount("v", "id1", 1)  # a lazily synced commit: the thread syncs it
        deadline = time.monotonic() + 5
        while _rows(tmp_path / "volumes.db", "mounts") == [] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _rows(tmp_path / "volumes.db", "mounts")
    finally:
        s.close()
    assert len(_sync_threads()) == before
