"""Durable stores behind small interfaces: volume records in SQLite, and the cluster key-value
store (:mod:`dockplug.state.kv`) on SQLite (one host) or etcd (``dockplug.state.etcd_kv``)."""

from dockplug.state.kv import (
    Compacted,
    Entry,
    Event,
    EventKind,
    KVStore,
    LeaseKeeper,
    LeaseNotFound,
    StoreUnavailable,
    TxnResult,
)
from dockplug.state.sqlite import VolumeRecord, VolumeStore
from dockplug.state.sqlite_kv import SqliteKV

__all__ = [
    "Compacted",
    "Entry",
    "Event",
    "EventKind",
    "KVStore",
    "LeaseKeeper",
    "LeaseNotFound",
    "SqliteKV",
    "StoreUnavailable",
    "TxnResult",
    "VolumeRecord",
    "VolumeStore",
]
