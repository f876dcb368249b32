"""Where answers are remembered: interfaces first, then their implementations.

- ``volumes``: :class:`VolumeRecord` and the :class:`VolumeStore` interface; ``sqlite`` is
  the embedded implementation (one host, crash-safe).
- ``kv``: the cluster key-value store interface (:class:`KVStore`: revisions, transactions
  with compares, leases, watches from a revision); ``sqlite_kv`` implements it on one host,
  ``etcd_kv`` across hosts.
- ``durable``: crash-safe file helpers; ``secrets``: the 0600 secrets store.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dockplug.lazy import lazy_exports

if TYPE_CHECKING:
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
    from dockplug.state.volumes import VolumeRecord, VolumeStore

# Names load on first use: ``dockplug serve local`` needs the volume store, not the cluster
# key-value interface (asyncio-based, ~10 ms of imports before the socket could listen).
_EXPORTS = {
    **dict.fromkeys(
        ("Compacted", "Entry", "Event", "EventKind", "KVStore", "LeaseKeeper", "LeaseNotFound",
         "StoreUnavailable", "TxnResult"),
        "dockplug.state.kv",
    ),
    "VolumeRecord": "dockplug.state.volumes",
    "VolumeStore": "dockplug.state.volumes",
}  # fmt: skip

__all__ = [
    "Compacted",
    "Entry",
    "Event",
    "EventKind",
    "KVStore",
    "LeaseKeeper",
    "LeaseNotFound",
    "StoreUnavailable",
    "TxnResult",
    "VolumeRecord",
    "VolumeStore",
    "open_volume_store",
]


def open_volume_store(state_dir: Path) -> VolumeStore:
    """The volume store of a driver whose state lives in STATE_DIR (the embedded default)."""
    from dockplug.state.sqlite import SqliteVolumeStore

    return SqliteVolumeStore(Path(state_dir) / "volumes.db")


__getattr__ = lazy_exports(__name__, _EXPORTS)
