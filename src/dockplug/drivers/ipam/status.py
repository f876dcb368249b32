"""What ``dockplug net status`` shows: pools, addresses per host, stale records, store health.

Read straight from the key-value store, so the same report comes from the running plugin
(``/DockplugNet.Status``) or from ``dockplug net status --etcd ...`` on any machine.
"""

from __future__ import annotations

import json
import time
from typing import Any

from dockplug.drivers.ipam.allocator import Allocator, pool_id
from dockplug.drivers.ipam.records import Allocation, Heartbeat, PoolRecord, UserRecord


async def gather(allocator: Allocator, grace: float) -> dict[str, Any]:
    """The cluster as the store holds it; a store that cannot be read gives ``health`` only."""
    store, keys = allocator.store, allocator.keys
    health = await store.health()
    report: dict[str, Any] = {
        "store": {
            "name": store.name,
            "ok": health.ok,
            "revision": health.revision,
            "latency_ms": round(health.latency * 1000, 1),
            "error": health.error,
        },
        "hosts": [],
        "pools": [],
        "gone": [],
    }
    if not health.ok:
        return report
    now = time.time()
    beats, _ = await store.range(keys.hosts)
    alive = {}
    for e in beats:
        hb = Heartbeat.load(e.value)
        alive[hb.host] = {"host": hb.host, "pid": hb.pid, "up_s": round(now - hb.started)}
    gones, _ = await store.range(keys.gones)
    for e in gones:
        since = float(json.loads(e.value).get("since", now))
        host = e.key[len(keys.gones) :]
        report["gone"].append(
            {
                "host": host,
                "missing_s": round(now - since),
                "reclaim_in_s": max(0, round(grace - (now - since))),
            }
        )
    entries, _ = await store.range(keys.spaces)
    pools: dict[str, dict[str, Any]] = {}
    owners: set[str] = set()
    for e in entries:
        parsed = keys.parse(e.key)
        if parsed is None:
            continue
        space, kind, net, rest = parsed
        pid = pool_id(space, net)
        if kind == "pools":
            rec = PoolRecord.load(e.value)
            pools.setdefault(pid, {}).update(
                {
                    "id": pid,
                    "space": space,
                    "pool": rec.pool,
                    "range": rec.range,
                    "private": rec.private,
                    "created_by": rec.created_by,
                }
            )
            continue
        info = pools.setdefault(pid, {"id": pid, "space": space, "pool": str(net)})
        if kind == "users":
            info.setdefault("users", {})[rest] = UserRecord.load(e.value).count
            owners.add(rest)
        elif kind == "gateways":
            info["gateway"] = e.value.decode()
        elif kind == "addrs":
            alloc = Allocation.load(e.value)
            if alloc.kind == "gateway":
                continue
            owners.add(alloc.host)
            per_host = info.setdefault("allocated", {})
            per_host[alloc.host] = per_host.get(alloc.host, 0) + 1
    for info in pools.values():
        info.setdefault("users", {})
        info.setdefault("allocated", {})
        info["orphan"] = "range" not in info  # records left of a pool that is gone
    report["pools"] = sorted(pools.values(), key=lambda p: (p["space"], p["pool"]))
    report["hosts"] = [
        alive.get(h, {"host": h, "pid": None, "up_s": None}) | {"alive": h in alive}
        for h in sorted(owners | set(alive))
    ]
    return report
