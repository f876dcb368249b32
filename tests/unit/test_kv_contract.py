"""The key-value store contract: one suite, every implementation.

Each test runs on the SQLite store and on real etcd 3.4 and 3.5 servers (marked ``etcd``;
skipped with the reason where that etcd cannot run). What the cluster drivers rely on: one
winner per create-if-absent among threads and processes, no lost compare-and-swap update,
revisions that only grow, leases that take their keys with them, watches that deliver every
change after a revision in order (or say Compacted), and deadlines that turn a store that does
not answer into StoreUnavailable instead of a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kv_race import open_store, race

from dockplug.errors import ConfigError
from dockplug.state.etcd_kv import EtcdKV
from dockplug.state.kv import (
    Compacted,
    Compare,
    Delete,
    Event,
    EventKind,
    Get,
    KVStore,
    LeaseNotFound,
    Put,
    StoreUnavailable,
    absent,
    mod_revision_is,
    present,
    value_is,
    version_is,
)
from dockplug.state.sqlite_kv import SqliteKV
from dockplug.testing.etcd import EtcdServer

T = TypeVar("T")
RACE = Path(__file__).with_name("kv_race.py")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@dataclass
class Backend:
    """One implementation under test: how to open clients of one store, and how to make the
    store stop answering."""

    name: str
    spec: dict[str, Any]
    server: EtcdServer | None = None
    stores: list[KVStore] = field(default_factory=list)

    def run(self, body: Callable[[], Awaitable[T]]) -> T:
        """Runs BODY in a new event loop and closes the stores it opened, in that loop."""

        async def main() -> T:
            try:
                return await body()
            finally:
                while self.stores:
                    await self.stores.pop().close()

        return asyncio.run(main())

    def open(self, **kw: Any) -> KVStore:
        if self.spec["kind"] == "sqlite":
            store: KVStore = SqliteKV(self.spec["path"], **kw)
        else:
            store = EtcdKV(self.spec["endpoints"], **kw)
        self.stores.append(store)
        return store

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        """etcd: SIGSTOP. SQLite: another process holds the write lock."""
        if self.server is not None:
            with self.server.paused():
                yield
            return
        holder = sqlite3.connect(self.spec["path"], isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("etcd", id="etcd-3.4", marks=pytest.mark.etcd),
    pytest.param("etcd35", id="etcd-3.5", marks=pytest.mark.etcd),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        b = Backend("sqlite", {"kind": "sqlite", "path": str(tmp_path / "kv.db")})
    else:
        server: EtcdServer = request.getfixturevalue(request.param)
        b = Backend(request.param, {"kind": "etcd", "endpoints": server.endpoint}, server)
        run(_wipe(b))
    yield b


async def _wipe(b: Backend) -> None:
    store = EtcdKV(b.spec["endpoints"])
    await store.delete_prefix("")
    await store.close()


async def collect(events: Any, count: int, timeout: float = 5.0) -> list[Event]:
    got: list[Event] = []

    async def take() -> None:
        async for event in events:
            got.append(event)
            if len(got) == count:
                return

    try:
        await asyncio.wait_for(take(), timeout)
    except TimeoutError:
        pytest.fail(f"watch delivered {len(got)} of {count} events in {timeout} s: {got}")
    return got


def summary(events: list[Event]) -> list[tuple[str, str, bytes, int]]:
    return [(e.kind.value, e.entry.key, e.entry.value, e.revision) for e in events]


# --- keys, entries and revisions -------------------------------------------------------------


def test_put_get_keep_create_revision_and_count_versions(backend: Backend) -> None:
    async def body() -> None:
        store = backend.open()
        assert await store.get("a/1") is None
        first = await store.put("a/1", b"one")
        second = await store.put("a/1", b"two")
        assert second == first + 1
        entry = await store.get("a/1")
        assert entry is not None
        assert (entry.value, entry.create_revision, entry.mod_revision, entry.version) == (
            b"two",
            first,
            second,
            2,
        )
        assert entry.lease is None

    backend.run(body)


def test_revisions_move_once_per_change_and_never_for_no_change(backend: Backend) -> None:
    async def body() -> None:
        store = backend.open()
        r1 = await store.put("r/a", b"1")
        assert not await store.delete("r/missing")
        assert await store.delete_prefix("r/none/") == 0
        _, now = await store.range("r/")
        assert now == r1  # deleting nothing changed nothing
        both = await store.txn([], [Put("r/b", b"2"), Put("r/c", b"3")])
        assert both.revision == r1 + 1  # one transaction, one revision
        b, c = await store.get("r/b"), await store.get("r/c")
        assert b is not None and c is not None and b.mod_revision == c.mod_revision == r1 + 1
        assert await store.delete_prefix("r/") == 3
        _, after = await store.range("r/")
        assert after == r1 + 2
        assert await store.put("r/a", b"again") == r1 + 3
        recreated = await store.get("r/a")
        assert recreated is not None and recreated.create_revision == r1 + 3
        assert recreated.version == 1

    backend.run(body)


def test_range_returns_the_prefix_in_key_order_with_the_revision(backend: Backend) -> None:
    async def body() -> None:
        store = backend.open()
        for key in ("p/b", "p/a", "p/c/1", "q/a", "p"):
            last = await store.put(key, key.encode())
        entries, revision = await store.range("p/")
        assert [e.key for e in entries] == ["p/a", "p/b", "p/c/1"]
        assert revision == last
        everything, _ = await store.range("")
        assert [e.key for e in everything] == ["p", "p/a", "p/b", "p/c/1", "q/a"]
        with pytest.raises(ValueError):
            await store.put("", b"x")

    backend.run(body)


# --- transactions ------------------------------------------------------------------------------


def test_txn_compares_follow_etcd_rules_for_missing_keys(backend: Backend) -> None:
    async def body() -> None:
        store = backend.open()
        rev = await store.put("t/k", b"v")

        async def holds(*compares: Any) -> bool:
            return (await store.txn(list(compares))).succeeded

        assert await holds(present("t/k"), value_is("t/k", b"v"), version_is("t/k", 1))
        assert await holds(mod_revision_is("t/k", rev), absent("t/missing"))
        assert not await holds(value_is("t/k", b"w"))
        assert not await holds(mod_revision_is("t/k", rev - 1))
        assert not await holds(absent("t/k"))
        assert await holds(version_is("t/missing", 0))
        # a value comparison on a missing key fails whatever the operator
        assert not await holds(value_is("t/missing", b""))
        assert not await holds(Compare("t/missing", "value", "!=", b"x"))

    backend.run(body)


def test_txn_runs_success_or_failure_ops_and_reports_their_results(backend: Backend) -> None:
    async def body() -> None:
        store = backend.open()
        await store.put("o/old", b"1")
        won = await store.txn(
            [absent("o/new")],
            [Put("o/new", b"mine"), Delete("o/old"), Get("o/", prefix=True)],
            [Get("o/new")],
        )
        assert won.succeeded
        assert won.results[1].deleted == 1
        assert [e.key for e in won.results[2].entries] == ["o/new"]  # sees its own put
        lost = await store.txn(
            [absent("o/new")], [Put("o/new", b"theirs")], [Get("o/new"), Get("o/zzz")]
        )
        assert not lost.succeeded and lost.revision == won.revision
        assert [e.value for e in lost.results[0].entries] == [b"mine"]
        assert lost.results[1].entries == ()
        with pytest.raises(ValueError):
            await store.txn([], [Put("o/x", b"1"), Put("o/x", b"2")])

    backend.run(body)


def test_create_if_absent_and_cas_from_threads_have_one_winner_and_lose_no_update(
    backend: Backend,
) -> None:
    keys = [f"race/t/{i}" for i in range(20)]
    threads, increments = 6, 10
    barrier = threading.Barrier(threads)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def racer(me: str) -> None:
        async def body() -> dict[str, Any]:
            store = open_store(backend.spec)  # a client per thread, as per process
            try:
                await store.health()
                await asyncio.get_running_loop().run_in_executor(None, barrier.wait, 30)
                return await race(store, me, keys, "race/t/counter", increments)
            finally:
                await store.close()

        try:
            results.append(run(body()))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()  # the others would wait for this one at the barrier for ever

    workers = [
        threading.Thread(target=racer, args=(f"thread-{i}",), daemon=True) for i in range(threads)
    ]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 120
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    assert not [w.name for w in workers if w.is_alive()], "racers still running after 120 s"
    assert not errors, errors
    _check_race(backend, results, keys, "race/t/counter", threads * increments)


def test_create_if_absent_and_cas_from_processes_have_one_winner_and_lose_no_update(
    backend: Backend,
) -> None:
    keys = [f"race/p/{i}" for i in range(20)]
    processes, increments = 4, 10
    procs = []
    for i in range(processes):
        spec = {**backend.spec, "me": f"proc-{i}", "keys": keys}
        spec.update(counter="race/p/counter", increments=increments)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(RACE), json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=60)[0]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(proc.returncode == 0 for proc in procs)
    _check_race(backend, results, keys, "race/p/counter", processes * increments)


def _check_race(
    backend: Backend, results: list[dict[str, Any]], keys: list[str], counter: str, total: int
) -> None:
    winners: dict[str, list[str]] = {k: [] for k in keys}
    for result in results:
        for key in result["wins"]:
            winners[key].append(result["me"])
    assert all(len(w) == 1 for w in winners.values()), winners

    async def stored() -> tuple[dict[str, bytes], bytes | None]:
        store = backend.open()
        entries, _ = await store.range(keys[0].rsplit("/", 1)[0] + "/")
        by_key = {e.key: e.value for e in entries}
        return by_key, by_key.get(counter)

    values, count = backend.run(stored)
    assert {k: values[k].decode() for k in keys} == {k: w[0] for k, w in winners.items()}
    assert count == str(total).encode()  # no compare-and-swap update was lost


# --- leases ------------------------------------------------------------------------------------


def test_leases_expire_with_their_keys_unless_kept_alive(backend: Backend) -> None:
    async def body() -> None:
        store = backend.open()
        kept, dropped = await store.grant(1), await store.grant(1)
        await store.put("l/kept", b"1", lease=kept)
        await store.put("l/dropped", b"2", lease=dropped)
        entry = await store.get("l/dropped")
        assert entry is not None and entry.lease == dropped
        async with store.watch("l/") as events:
            async with store.keep_lease_alive(kept, 1) as keeper:
                start = time.monotonic()
                (gone,) = await collect(events, 1, timeout=4)
                assert (gone.kind, gone.entry.key) == (EventKind.DELETE, "l/dropped")
                assert 0.8 < time.monotonic() - start < 3.5
                assert await store.get("l/dropped") is None
                await asyncio.sleep(max(0, 2.2 - (time.monotonic() - start)))
                assert await store.get("l/kept") is not None  # outlived its 1 s TTL
                assert keeper.refreshes >= 2 and not keeper.lost.is_set()
            await store.revoke(kept)  # revoking takes the key at once
            (revoked,) = await collect(events, 1, timeout=2)
            assert (revoked.kind, revoked.entry.key) == (EventKind.DELETE, "l/kept")
        for call in (
            store.put("l/again", b"x", lease=dropped),
            store.keep_alive(dropped),
            store.revoke(kept),
        ):
            with pytest.raises(LeaseNotFound):
                await call

    backend.run(body)


def test_lease_keeper_reports_a_lost_lease(backend: Backend) -> None:
    async def body() -> None:
        store = backend.open()
        lease = await store.grant(5)
        keeper = store.keep_lease_alive(lease, 1)  # refreshes every 1/3 s
        await store.revoke(lease)
        await asyncio.wait_for(keeper.lost.wait(), 3)
        assert isinstance(keeper.error, LeaseNotFound)
        await keeper.stop()

    backend.run(body)


# --- watches -----------------------------------------------------------------------------------


def test_watch_from_a_revision_delivers_every_later_change_in_order(backend: Backend) -> None:
    async def body() -> None:
        store = backend.open()
        await store.put("w/before", b"0")
        start = await store.put("w/a", b"1")
        r2 = await store.put("w/b", b"2")
        r3 = (await store.txn([], [Put("w/c", b"3"), Delete("w/a")])).revision
        await store.put("other/x", b"not watched")
        r4 = await store.put("w/b", b"22")
        await store.delete_prefix("w/")
        _, r5 = await store.range("")
        async with store.watch("w/", start) as events:
            got = await collect(events, 8)
        assert summary(got) == [
            ("PUT", "w/a", b"1", start),
            ("PUT", "w/b", b"2", r2),
            ("PUT", "w/c", b"3", r3),  # a transaction's changes in the order of its ops
            ("DELETE", "w/a", b"", r3),
            ("PUT", "w/b", b"22", r4),
            ("DELETE", "w/b", b"", r5),  # a prefix's keys in key order
            ("DELETE", "w/before", b"", r5),
            ("DELETE", "w/c", b"", r5),
        ]
        put_b = got[4].entry
        assert (put_b.create_revision, put_b.version) == (r2, 2)

    backend.run(body)


def test_watch_from_now_sees_a_burst_of_changes_from_another_client(backend: Backend) -> None:
    async def body() -> None:
        reader, writer = backend.open(), backend.open()
        async with reader.watch("burst/") as events:
            revisions = [await writer.put(f"burst/{i % 7}", str(i).encode()) for i in range(150)]
            got = await collect(events, 150)
        assert [e.revision for e in got] == revisions
        assert [e.entry.value for e in got] == [str(i).encode() for i in range(150)]

    backend.run(body)


def test_watch_in_another_process_sees_every_change(backend: Backend, tmp_path: Path) -> None:
    script = (
        "import asyncio, json, sys\n"
        "from kv_race import open_store\n"
        "async def main():\n"
        "    store = open_store(json.loads(sys.argv[1]))\n"
        "    async with store.watch('xp/', int(sys.argv[2])) as events:\n"
        "        print('ready', flush=True)\n"
        "        async for e in events:\n"
        "            print(e.kind.value, e.entry.key, e.revision, flush=True)\n"
        "            if e.entry.key == 'xp/end': break\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )

    async def body() -> None:
        store = backend.open()
        start = await store.put("xp/0", b"0")
        proc = subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(backend.spec), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=RACE.parent,
        )
        try:
            assert proc.stdout is not None
            assert await asyncio.to_thread(proc.stdout.readline) == "ready\n"
            expected = [f"PUT xp/0 {start}"]
            for i in range(1, 30):
                expected.append(f"PUT xp/{i} {await store.put(f'xp/{i}', b'x')}")
            deleted = await store.delete("xp/3")
            assert deleted
            expected.append(f"DELETE xp/3 {(await store.range('xp/'))[1]}")
            expected.append(f"PUT xp/end {await store.put('xp/end', b'')}")
            out, _ = await asyncio.to_thread(proc.communicate, timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert out.splitlines() == expected

    backend.run(body)


def test_watch_from_a_compacted_revision_raises_compacted(backend: Backend) -> None:
    async def body() -> None:
        store = backend.open()
        old = await store.put("c/k", b"1")
        for i in range(5):
            middle = await store.put("c/k", str(i).encode())
        await store.compact(middle)
        await store.compact(old)  # behind the compaction: nothing to do
        with pytest.raises(Compacted) as caught:
            async with store.watch("c/", old):
                pass
        assert caught.value.compact_revision == middle
        assert "range()" in str(caught.value)
        async with store.watch("c/", middle) as events:  # the compaction revision itself stays
            (event,) = await collect(events, 1)
        assert event.revision == middle
        with pytest.raises(ValueError):
            await store.compact(middle + 100)

    backend.run(body)


def test_close_ends_open_watches(backend: Backend) -> None:
    async def body() -> None:
        store = backend.open()
        events = await store.watch("end/").start()

        async def drain() -> list[Event]:
            return [e async for e in events]

        task = asyncio.create_task(drain())
        await asyncio.sleep(0.1)
        await store.close()
        assert await asyncio.wait_for(task, 5) == []

    backend.run(body)


# --- deadlines ---------------------------------------------------------------------------------


def test_a_store_that_does_not_answer_fails_calls_within_their_deadline(backend: Backend) -> None:
    async def body() -> None:
        store = backend.open(timeout=0.3)
        assert (await store.health()).ok
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: store.put("d/k", b"1"),
            lambda: store.txn([absent("d/k")], [Put("d/k", b"1")]),
            lambda: store.grant(5),
        ]
        if backend.server is not None:  # SQLite readers never wait for the writer (WAL)
            calls += [lambda: store.get("d/k"), lambda: store.range("d/")]
        with backend.stalled():
            for call in calls:
                start = time.monotonic()
                with pytest.raises(StoreUnavailable) as caught:
                    await call()
                took = time.monotonic() - start
                assert 0.25 < took < 1.0, took
                assert store.name in str(caught.value)
            probe = await store.health(timeout=0.2) if backend.server else None
        if probe is not None:
            assert not probe.ok and probe.error
        assert await store.put("d/k", b"after", timeout=5)  # and it works again

    backend.run(body)


def test_sqlite_changelog_keeps_its_history_bound(tmp_path: Path) -> None:
    async def body() -> None:
        store = await SqliteKV.open(tmp_path / "kv.db", history=128)
        first = await store.put("h/k", b"0")
        for i in range(300):
            last = await store.put("h/k", str(i).encode())
        with pytest.raises(Compacted):
            await store.watch("h/", first).start()
        async with store.watch("h/", last - 100) as events:
            assert len(await collect(events, 101)) == 101
        await store.close()

    run(body())


def test_sqlite_open_says_which_file_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreUnavailable, match=str(path)):
        SqliteKV(path)


def _open_at_once(path: Path, clients: int) -> list[BaseException]:
    """CLIENTS threads open PATH at the same instant; what they raised."""
    barrier = threading.Barrier(clients)
    errors: list[BaseException] = []

    def opener() -> None:
        barrier.wait(10)
        try:
            store = SqliteKV(path)
        except BaseException as exc:
            errors.append(exc)
        else:
            run(store.close())

    openers = [threading.Thread(target=opener, daemon=True) for _ in range(clients)]
    for t in openers:
        t.start()
    for t in openers:
        t.join(30)
    return errors


def test_sqlite_clients_opening_a_new_file_at_once_all_open_it(tmp_path: Path) -> None:
    """SQLite answers some of them SQLITE_BUSY at once while the file turns WAL (1 in 3 rounds
    failed here before the open retried; the thread race above then hung at its barrier)."""
    for round_ in range(20):
        errors = _open_at_once(tmp_path / f"kv{round_}.db", 6)
        assert not errors, errors


# --- etcd only: restarts, kills, endpoint lists, TLS -----------------------------------------

SERIES = [
    pytest.param("3.4", id="etcd-3.4", marks=pytest.mark.etcd),
    pytest.param("3.5", id="etcd-3.5", marks=pytest.mark.etcd),
]


@pytest.mark.parametrize("series", SERIES)
def test_etcd_restart_the_same_client_recovers_and_the_watch_loses_nothing(
    series: str, etcd_server: Callable[..., EtcdServer]
) -> None:
    server = etcd_server(series)

    async def body() -> None:
        store = EtcdKV(server.endpoint, timeout=1)
        other = EtcdKV(server.endpoint, timeout=1)
        lease = await store.grant(2)
        await store.put("rs/leased", b"", lease=lease)
        async with store.watch("rs/") as events, store.keep_lease_alive(lease, 2) as keeper:
            await store.put("rs/1", b"before")
            first = await collect(events, 1)
            await asyncio.to_thread(server.restart, 0.5)
            # a write made before the watcher is back must not be missed
            await _until_it_works(lambda: other.put("rs/2", b"while reconnecting"), 5)
            start = time.monotonic()
            await _until_it_works(lambda: store.put("rs/3", b"after"), 5)
            recovered = time.monotonic() - start
            rest = await collect(events, 2, timeout=10)
            await asyncio.sleep(2.5)  # past the lease's TTL: the keeper refreshed it
            assert await store.get("rs/leased") is not None, keeper.error
            assert not keeper.lost.is_set()
        assert [e.entry.key for e in first + rest] == ["rs/1", "rs/2", "rs/3"]
        assert recovered < 3
        await store.close()
        await other.close()

    run(body())


async def _until_it_works(call: Callable[[], Awaitable[T]], seconds: float) -> T:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await call()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("series", SERIES)
def test_etcd_killed_fails_calls_at_once_naming_the_endpoint(
    series: str, etcd_server: Callable[..., EtcdServer]
) -> None:
    server = etcd_server(series)

    async def body() -> None:
        store = EtcdKV(server.endpoint, timeout=3)
        await store.put("k", b"1")
        server.kill()
        start = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await store.get("k")
        assert time.monotonic() - start < 1
        assert server.endpoint in str(caught.value) and "start etcd" in str(caught.value)
        with pytest.raises(StoreUnavailable):
            await store.watch("k").start()
        server.start()
        assert await _until_it_works(lambda: store.get("k"), 5) is not None
        await store.close()

    run(body())


@pytest.mark.etcd
def test_etcd_endpoint_list_skips_a_dead_endpoint(etcd: EtcdServer) -> None:
    from dockplug.testing.servers import free_port

    dead = f"http://127.0.0.1:{free_port()}"

    async def body() -> None:
        store = EtcdKV(f"{dead},{etcd.endpoint}", timeout=3)
        revision = await store.put("ep/k", b"1")
        entry = await store.get("ep/k")
        assert entry is not None and entry.mod_revision == revision
        assert store.name == f"etcd at {dead},{etcd.endpoint}"
        await store.close()

    run(body())


@pytest.mark.etcd
def test_etcd_tls_needs_the_client_certificate(
    etcd_server: Callable[..., EtcdServer], certificates: Any
) -> None:
    server = etcd_server("3.4", tls=certificates)

    async def body() -> None:
        certs = {"cert": certificates.client_cert, "key": certificates.client_key}
        store = EtcdKV(server.endpoint, ca=certificates.ca, **certs)
        assert await store.put("tls/k", b"1")
        await store.close()
        anonymous = EtcdKV(server.endpoint, ca=certificates.ca, timeout=2)
        with pytest.raises(StoreUnavailable):
            await anonymous.get("tls/k")
        await anonymous.close()
        stranger = EtcdKV(server.endpoint, ca=certificates.other_ca, timeout=2, **certs)
        health = await stranger.health()
        assert not health.ok and "certificate" in (health.error or "")
        await stranger.close()

    run(body())


@pytest.mark.parametrize(
    "endpoints",
    ["", "127.0.0.1:2379", "unix:///run/etcd.sock", "http://h:1,https://h:2", "http://h:x"],
)
def test_etcd_endpoints_are_checked_with_the_fix_in_the_message(endpoints: str) -> None:
    with pytest.raises(ConfigError, match=r"http"):
        EtcdKV(endpoints)


def test_etcd_tls_files_need_https(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="https://"):
        EtcdKV("http://127.0.0.1:2379", ca=tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        EtcdKV("https://127.0.0.1:2379", ca=tmp_path / "missing.pem")
