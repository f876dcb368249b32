"""Create-if-absent transactions per second on each key-value store, side by side.

The cluster IPAM allocates an address with one transaction, ``txn([absent(key)], [Put(key,
owner)])``; this script measures that call, closed-loop, on every store it can start in the same
run: the SQLite store (``durable``: fsync per commit, the default; ``fast``: ``durable=False``)
and real etcd 3.4 and 3.5 servers (one member on 127.0.0.1, started here with a data dir in
``--dir``). For each it runs ``--conns`` concurrent callers on one client (default 1 and 8), each
with one call in flight, for ``--duration`` seconds after ``--warmup`` seconds, every caller on
keys of its own (each transaction creates a new key, so every one succeeds, as an allocation on
a free address does), plus a ``race`` row: the callers all try the same keys, one wins each.

    python bench/kv_bench.py [--duration 3] [--conns 1,8] [--json out.json]

It is a benchmark, not a test: it never fails on a slow number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from dockplug.state.etcd_kv import EtcdKV
from dockplug.state.kv import KVStore, Put, absent
from dockplug.state.sqlite_kv import SqliteKV
from dockplug.testing.etcd import EtcdServer, find_etcd


@dataclass
class Row:
    store: str
    mode: str
    conns: int
    txns: int
    won: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    store: KVStore, name: str, conns: int, race: bool, warmup: float, duration: float
) -> Row:
    run = f"bench/{time.monotonic_ns()}"
    latencies: list[float] = []
    won = 0
    measuring = False
    stop_at = time.monotonic() + warmup + duration

    async def caller(me: int) -> None:
        nonlocal won
        i = 0
        while time.monotonic() < stop_at:
            key = f"{run}/{i}" if race else f"{run}/{me}/{i}"
            i += 1
            start = time.perf_counter()
            result = await store.txn([absent(key)], [Put(key, b"owner")])
            if measuring:
                latencies.append(time.perf_counter() - start)
                won += result.succeeded

    async def clock() -> float:
        nonlocal measuring
        await asyncio.sleep(warmup)
        measuring = True
        began = time.monotonic()
        await asyncio.sleep(max(stop_at - time.monotonic(), 0))
        return time.monotonic() - began

    *_, seconds = await asyncio.gather(*(caller(i) for i in range(conns)), clock())
    await store.delete_prefix(run + "/")
    return Row(
        name,
        "race" if race else "fresh keys",
        conns,
        len(latencies),
        won,
        round(seconds, 2),
        round(len(latencies) / seconds, 1),
        round(percentile(latencies, 0.5) * 1000, 3),
        round(percentile(latencies, 0.99) * 1000, 3),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--conns", default="1,8")
    parser.add_argument("--dir", default=None, help="where the stores keep their files")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    conns = [int(c) for c in args.conns.split(",")]
    base = Path(args.dir or tempfile.mkdtemp(prefix="dp-kvbench-"))
    rows: list[Row] = []

    with ExitStack() as stack:
        stores: list[tuple[str, Callable[[], KVStore]]] = [
            ("sqlite durable", lambda: SqliteKV(base / "durable.db")),
            ("sqlite fast", lambda: SqliteKV(base / "fast.db", durable=False)),
        ]
        for series in ("3.4", "3.5"):
            binary, reason = find_etcd(series)
            if binary is None:
                print(f"etcd {series} skipped: {reason}", file=sys.stderr)
                continue
            server = EtcdServer(binary, root=Path(tempfile.mkdtemp(prefix="etcd-", dir=base)))
            stack.enter_context(server)
            server.start()
            label = f"etcd {server.version}"
            stores.append((label, lambda endpoint=server.endpoint: EtcdKV(endpoint)))

        async def run_all() -> None:
            for name, opener in stores:
                store = opener()
                try:
                    for n in conns:
                        for race in (False, True):
                            if race and n == 1:
                                continue  # one caller races no one
                            row = await measure(store, name, n, race, args.warmup, args.duration)
                            rows.append(row)
                            print(
                                f"  {name:16} {row.mode:10} conns={n}: {row.per_second:8.1f}/s",
                                file=sys.stderr,
                            )
                finally:
                    await store.close()

        asyncio.run(run_all())

    print(f"\ncreate-if-absent txn, {platform.node()}, Python {platform.python_version()}")
    print(f"files in {base} (etcd data dirs too); {args.duration:g} s per row\n")
    header = ("store", "mode", "conns", "txn/s", "p50 ms", "p99 ms", "won")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(
            f"| {r.store} | {r.mode} | {r.conns} | {r.per_second:,.0f} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {r.won}/{r.txns} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    median = statistics.median(r.per_second for r in rows) if rows else 0
    print(f"\n{len(rows)} rows; median {median:,.0f} txn/s")


if __name__ == "__main__":
    main()
