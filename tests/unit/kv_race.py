"""Racers for the key-value contract tests: create-if-absent and compare-and-swap on the same keys
from several threads or processes at once, as allocators on several hosts do.

As a script (one racing process): ``python kv_race.py SPEC_JSON`` prints ``ready``, waits for a
line on stdin (so that every process starts at once), races, and prints its result as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from dockplug.state.kv import KVStore, Put, absent, mod_revision_is


def open_store(spec: dict[str, Any]) -> KVStore:
    """A new client of the store SPEC names: {"kind": "sqlite", "path": ...} or
    {"kind": "etcd", "endpoints": ...}."""
    if spec["kind"] == "sqlite":
        from dockplug.state.sqlite_kv import SqliteKV

        return SqliteKV(spec["path"])
    from dockplug.state.etcd_kv import EtcdKV

    return EtcdKV(spec["endpoints"])


async def race(
    store: KVStore, me: str, keys: list[str], counter: str, increments: int
) -> dict[str, Any]:
    """Tries to create every key of KEYS (value ME), then adds INCREMENTS to the integer at
    COUNTER by compare-and-swap on its mod revision, retrying each lost swap."""
    wins = []
    for key in keys:
        result = await store.txn([absent(key)], [Put(key, me.encode())])
        if result.succeeded:
            wins.append(key)
    conflicts = 0
    for _ in range(increments):
        while True:
            entry = await store.get(counter)
            if entry is None:
                result = await store.txn([absent(counter)], [Put(counter, b"1")])
            else:
                value = str(int(entry.value) + 1).encode()
                result = await store.txn(
                    [mod_revision_is(counter, entry.mod_revision)], [Put(counter, value)]
                )
            if result.succeeded:
                break
            conflicts += 1
    return {"me": me, "wins": wins, "conflicts": conflicts}


def main() -> None:
    spec = json.loads(sys.argv[1])

    async def run() -> dict[str, Any]:
        store = open_store(spec)
        try:
            await store.health()  # connected before the start line
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            return await race(store, spec["me"], spec["keys"], spec["counter"], spec["increments"])
        finally:
            await store.close()

    print(json.dumps(asyncio.run(run())), flush=True)


if __name__ == "__main__":
    main()
