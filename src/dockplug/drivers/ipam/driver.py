"""``dockplug serve net``: the cluster IPAM driver (and, later, the network driver beside it).

One process per host answers dockerd's IpamDriver calls from the key-value store: SQLite in
``--state-dir`` for one host, etcd (``--etcd``) for several. dockerd waits on every IPAM call of
a legacy plugin without any timeout (moby#33994) and shows the error text to the user, so each
call is bounded (:data:`~dockplug.drivers.ipam.allocator.CALL_DEADLINE`) and a store that is
away turns into an error naming it and the fix. Releases cannot fail that way: dockerd only
logs a failed release and forgets it, so while the store is away they are queued in
``--state-dir`` and sent when it returns.

State persists, so ``RequiresRequestReplay`` is off (dockerd replays nothing after a restart;
stale endpoints of local networks still get their ReleaseAddress). ``RequiresMACAddress`` is
off: with it on, dockerd makes up a MAC for every endpoint, and ipvlan refuses any given MAC
("ipvlan interfaces do not support custom mac address assignment", seen in the cluster tests).
A MAC that does come in the Options is kept with the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from dockplug.drivers.ipam import engine_sync, status
from dockplug.drivers.ipam.allocator import Allocator, parse_pool_id
from dockplug.drivers.ipam.pools import (
    DEFAULT_POOLS,
    GLOBAL_SPACE,
    LOCAL_SPACE,
    parse_default_pools,
)
from dockplug.drivers.ipam.reclaim import Collector, HostHeartbeat, collect_gone_hosts
from dockplug.drivers.ipam.records import PREFIX, Keys
from dockplug.drivers.lifecycle import stop_tasks
from dockplug.drivers.options import Option, OptionSet, parse_bool
from dockplug.errors import ConfigError, InvalidOption, PluginError
from dockplug.observe import log_event
from dockplug.observe.metrics import NO_METRICS, Histogram, Metrics
from dockplug.protocol.base import Empty, Endpoint, Lane, Protocol, WireModel
from dockplug.protocol.ipam import (
    IpamDriver,
    PoolRequest,
    ReleaseAddressRequest,
    RequestAddressReply,
    RequestAddressRequest,
    RequestPoolReply,
    RequestPoolRequest,
)
from dockplug.state.kv import KVStore, StoreUnavailable

T = TypeVar("T")
STORE_TIMEOUT = 3.0  # seconds per store call; a dockerd call gets CALL_DEADLINE in all
PROBE_INTERVAL = 1.0  # seconds between probes of a store that is away
PENDING_FILE = "pending-releases.json"

IPAM_OPTIONS = OptionSet(
    "dockplug-net",
    [
        Option(
            "private",
            "keep the pool to this host: other hosts asking for it are refused",
            parse_bool,
            example="true",
            default=False,
        ),
    ],
    kind="IPAM",
    flag="--ipam-opt",
    thing="pool",
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str, flag: str = "--reclaim-after") -> float:
    """``30s``, ``10m``, ``1h``, ``90`` (seconds) -> seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(f"{flag} {text!r}: expected a duration such as 30s, 10m or 1h")
    return float(match.group(1)) * _UNITS[match.group(2)]


class StoreAway(StoreUnavailable):
    """The store failed a moment ago and no probe has found it back yet."""


class GcRequest(WireModel):
    dry_run: bool = False


class AdminReply(WireModel):
    result: dict[str, Any]


def _admin_reply(result: dict[str, Any], _: Any) -> AdminReply:
    return AdminReply(result=result)


# dockplug's own maintenance endpoints (dockplug net status/gc); not announced by Activate
NET_ADMIN = Protocol(
    implements="DockplugNetAdmin",
    managed_type="",
    endpoints=(
        Endpoint("/DockplugNet.Status", "admin_status", Empty, _admin_reply, lane=Lane.SLOW),
        Endpoint("/DockplugNet.Gc", "admin_gc", GcRequest, _admin_reply, lane=Lane.SLOW),
    ),
    announce=False,
)


def open_store(
    state_dir: Path,
    etcd: str | None,
    etcd_ca: Path | None = None,
    etcd_cert: Path | None = None,
    etcd_key: Path | None = None,
) -> KVStore:
    """SQLite in STATE_DIR, or the etcd cluster at ETCD."""
    if etcd:
        from dockplug.state.etcd_kv import EtcdKV

        return EtcdKV(etcd, ca=etcd_ca, cert=etcd_cert, key=etcd_key, timeout=STORE_TIMEOUT)
    if etcd_ca or etcd_cert or etcd_key:
        raise ConfigError("--etcd-ca/--etcd-cert/--etcd-key need --etcd https://HOST:PORT")
    from dockplug.state.sqlite_kv import SqliteKV

    return SqliteKV(Path(state_dir) / "net.db", timeout=STORE_TIMEOUT)


class NetDriver(IpamDriver):
    """The dockplug-net IPAM driver (the network driver joins this class later)."""

    protocols: ClassVar[tuple[Protocol, ...]] = (NET_ADMIN,)
    ipam_options: ClassVar[OptionSet] = IPAM_OPTIONS

    def __init__(
        self,
        state_dir: Path | str = Path("/var/lib/dockplug/net"),
        etcd: str | None = None,
        etcd_ca: Path | None = None,
        etcd_cert: Path | None = None,
        etcd_key: Path | None = None,
        host_id: str | None = None,
        default_pools: str = DEFAULT_POOLS,
        reclaim_after: str | float = "5m",
        heartbeat_ttl: int = 10,
        docker_host: str | None = None,
        key_prefix: str = PREFIX,
        log: Any = log_event,
        store: KVStore | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host_id or socket.gethostname()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", self.host):
            raise ConfigError(f"--host-id {self.host!r}: use letters, digits, '.', '_', '-'")
        self.grace = (
            float(reclaim_after)
            if isinstance(reclaim_after, int | float)
            else parse_duration(reclaim_after)
        )
        if heartbeat_ttl < 1:
            raise ConfigError("--heartbeat-ttl must be at least 1 second")
        if not key_prefix.startswith("/") or key_prefix.endswith("/"):
            raise ConfigError(f"--key-prefix {key_prefix!r}: start with '/', do not end with one")
        self.heartbeat_ttl = heartbeat_ttl
        self.docker_host = docker_host
        self.log = log
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = store or open_store(self.state_dir, etcd, etcd_ca, etcd_cert, etcd_key)
        self.allocator = Allocator(
            self.store, self.host, parse_default_pools(default_pools), Keys(key_prefix), log
        )
        self.interval = max(0.5, min(self.grace / 3, 30.0))
        self._down_error = ""  # why the store is away ("" while it answers)
        self._pending_path = self.state_dir / PENDING_FILE
        self._pending: list[dict[str, str]] = self._load_pending()
        self._pending_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.heartbeat: HostHeartbeat | None = None
        self.collector: Collector | None = None
        self.last_sync: dict[str, Any] = {}
        self._figures: dict[str, Any] = {}
        self._store_calls: Histogram = NO_METRICS.histogram("", "")

    # -- store availability --------------------------------------------------------------------

    def _note_down(self, exc: StoreUnavailable) -> None:
        if isinstance(exc, StoreAway):
            return  # already known; keep the error that said so
        if not self._down_error:
            self.log(f"store unavailable: {exc}")
        self._down_error = str(exc)

    def _fail_fast(self) -> None:
        """While the store is known to be away, calls fail at once with the reason: dockerd
        (and the user at ``docker run``) learn it now instead of after another deadline. A
        probe every second (:meth:`_flush_loop`) notices it is back."""
        if self._down_error:
            raise StoreAway(
                f"dockplug-net: {self.store.name} is away; nothing was changed. The last "
                f"error: {self._down_error}"
            )

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        self._fail_fast()
        began = time.perf_counter()
        try:
            await self._flush()
            result = await call()
        except StoreUnavailable as exc:
            self._note_down(exc)
            self._store_calls.observe(time.perf_counter() - began, result="unavailable")
            raise
        self._store_calls.observe(time.perf_counter() - began, result="ok")
        return result

    # -- observability -------------------------------------------------------------------------

    def declare_metrics(self, metrics: Metrics) -> None:
        """The store's health and round trips; pools and addresses as last counted (refreshed
        with each engine sync: counting reads the store, which a scrape must not wait on)."""
        self._store_calls = metrics.histogram(
            "store_call_duration_seconds",
            "IPAM calls' round trips to the store, by result (unavailable: an Err to dockerd)",
            ("result",),
        )
        metrics.gauge_fn("store_up", "1 while the store answers, 0 while it is away",
                         lambda: 0 if self._down_error else 1)  # fmt: skip
        metrics.gauge_fn("queued_releases", "Releases waiting for the store to come back",
                         lambda: len(self._pending))  # fmt: skip
        metrics.gauge_fn("pools", "Pools in the store (all hosts)",
                         lambda: self._figures.get("pools", 0))  # fmt: skip
        metrics.gauge_fn(
            "allocated", "Addresses given to containers, by host", self._allocated, ("host",)
        )
        metrics.gauge_fn("stale", "Records gc would free now (this host's unheld addresses, "
                         "gone hosts' records)", lambda: self._figures.get("stale", 0))  # fmt: skip

    def _allocated(self) -> dict[tuple[str, ...], float]:
        per_host: dict[str, int] = self._figures.get("allocated", {})
        return {(host,): n for host, n in per_host.items()}

    async def _count(self) -> None:
        """Pools, addresses per host and stale records, for the metrics."""
        report = await status.gather(self.allocator, self.grace)
        if not report["store"]["ok"]:
            return
        allocated: dict[str, int] = {}
        for pool in report["pools"]:
            for host, n in pool.get("allocated", {}).items():
                allocated[host] = allocated.get(host, 0) + n
        stale = await collect_gone_hosts(self.allocator, self.grace, dry_run=True)
        self._figures = {"pools": len(report["pools"]), "allocated": allocated,
                         "stale": len(stale)}  # fmt: skip

    def health_reasons(self) -> list[str]:
        """The store away: new networks and containers on them fail until it is back."""
        if self._down_error:
            return [f"IPAM store away ({len(self._pending)} releases queued): {self._down_error}"]
        return []

    # -- queued releases -----------------------------------------------------------------------

    def _load_pending(self) -> list[dict[str, str]]:
        try:
            data = json.loads(self._pending_path.read_text())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            self.log(f"{self._pending_path}: unreadable ({exc}); queued releases lost")
            return []
        return [d for d in data if isinstance(d, dict)]

    def _save_pending(self) -> None:
        tmp = self._pending_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(self._pending, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._pending_path)

    async def _queue(self, item: dict[str, str], exc: StoreUnavailable) -> None:
        self._note_down(exc)
        async with self._pending_lock:
            self._pending.append(item)
            self._save_pending()
        self.log(
            f"store away: {item['op']} release of {item['pool']} {item.get('address', '')}"
            f" queued until it returns ({exc})"
        )

    async def _flush(self) -> None:
        """Sends queued releases, oldest first; stops at the first store failure."""
        if not self._pending:
            return
        async with self._pending_lock:
            while self._pending:
                item = self._pending[0]
                try:
                    if item["op"] == "pool":
                        await self.allocator.release_pool(item["pool"])
                    else:
                        await self.allocator.release_address(item["pool"], item.get("address", ""))
                except StoreUnavailable:
                    raise
                except PluginError as exc:  # e.g. a malformed address: it can never be sent
                    self.log(f"queued {item['op']} release of {item['pool']} dropped: {exc}")
                self._pending.pop(0)
                self._save_pending()
                self.log(f"queued {item['op']} release of {item['pool']} sent")

    # -- IpamDriver ----------------------------------------------------------------------------

    async def ipam_capabilities(self, req: Empty) -> Any:
        return (False, False)  # RequiresMACAddress (ipvlan refuses it), RequiresRequestReplay

    async def get_default_address_spaces(self, req: Empty) -> Any:
        return (LOCAL_SPACE, GLOBAL_SPACE)

    async def request_pool(self, req: RequestPoolRequest) -> RequestPoolReply:
        if self.ipam_options.wants_help(req.options or {}):
            raise InvalidOption(self.ipam_options.help_table())
        opts = self.ipam_options.parse(req.options)
        pool_id, net = await self._guarded(
            lambda: self.allocator.request_pool(
                req.address_space, req.pool, req.sub_pool, req.v6, opts["private"]
            )
        )
        return RequestPoolReply(pool_id=pool_id, pool=str(net), data={})

    async def release_pool(self, req: PoolRequest) -> None:
        parse_pool_id(req.pool_id)
        item = {"op": "pool", "pool": req.pool_id}
        try:
            await self._guarded(lambda: self.allocator.release_pool(req.pool_id))
        except StoreUnavailable as exc:
            await self._queue(item, exc)

    async def request_address(self, req: RequestAddressRequest) -> RequestAddressReply:
        iface = await self._guarded(
            lambda: self.allocator.request_address(
                req.pool_id, req.address, req.is_gateway, req.mac_address
            )
        )
        return RequestAddressReply(address=str(iface), data={})

    async def release_address(self, req: ReleaseAddressRequest) -> None:
        parse_pool_id(req.pool_id)
        item = {"op": "address", "pool": req.pool_id, "address": req.address}
        try:
            await self._guarded(lambda: self.allocator.release_address(req.pool_id, req.address))
        except StoreUnavailable as exc:
            await self._queue(item, exc)

    # -- background ----------------------------------------------------------------------------

    async def startup(self) -> None:
        """After the socket listens: heartbeat, collector, Engine API sync, release flusher."""
        self.heartbeat = HostHeartbeat(self.allocator, self.heartbeat_ttl, self.log).start()
        self.collector = Collector(
            self.allocator, self.heartbeat, self.grace, self.interval, self.log
        ).start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._sync_loop(), name="dockplug-net-sync"))
        self._tasks.append(loop.create_task(self._flush_loop(), name="dockplug-net-flush"))

    async def sync_engine(self, dry_run: bool = False) -> list[dict[str, str]]:
        """One look at this host's Engine API and what it says is stale."""
        held = await engine_sync.engine_held(self.docker_host)
        stale = await engine_sync.unheld(self.allocator, held, self.grace, dry_run)
        if not dry_run:
            self.last_sync = {"at": time.time(), "networks": len(held.networks)}
        return [s.as_dict() for s in stale]

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sync_engine()
            except Exception as exc:  # the Engine API or the store away: try next round
                self.last_sync = {"at": time.time(), "error": str(exc)}
                self.log(f"engine sync: {exc}")
            with contextlib.suppress(Exception):  # figures for the metrics: best effort
                await self._count()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            if self._down_error:
                health = await self.store.health(timeout=STORE_TIMEOUT)
                if not health.ok:
                    continue
                self.log(f"store back: {self.store.name}")
                self._down_error = ""
            if not self._pending:
                continue
            try:
                await self._flush()
            except StoreUnavailable as exc:
                self._note_down(exc)
            except Exception as exc:
                self.log(f"queued releases: {type(exc).__name__}: {exc}")

    async def shutdown(self) -> None:
        await stop_tasks(self._tasks)
        if self.collector is not None:
            await self.collector.stop()
        if self.heartbeat is not None:
            await self.heartbeat.stop()
        await self.store.close()

    # -- maintenance (dockplug net status / gc) --------------------------------------------------

    async def admin_status(self, req: Empty) -> dict[str, Any]:
        report = await status.gather(self.allocator, self.grace)
        if report["store"]["ok"]:
            # what gc would free now: this host's unheld addresses, gone hosts' records
            stale = await collect_gone_hosts(self.allocator, self.grace, dry_run=True)
            report["stale"] = [s.as_dict() for s in stale]
            try:
                report["stale"] += await self.sync_engine(dry_run=True)
            except Exception as exc:
                report["stale_error"] = f"engine sync: {exc}"
        report["this_host"] = {
            "host": self.host,
            "collector": bool(self.collector and self.collector.leader),
            "queued_releases": len(self._pending),
            "store_away": self._down_error or None,
            "engine_sync": self.last_sync,
            "reclaim_after": self.grace,
        }
        return report

    async def admin_gc(self, req: GcRequest) -> dict[str, Any]:
        freed: list[dict[str, str]] = []
        errors: list[str] = []
        try:
            freed += await self.sync_engine(dry_run=req.dry_run)
        except Exception as exc:
            errors.append(f"engine sync: {exc}")
        stale = await collect_gone_hosts(self.allocator, self.grace, dry_run=req.dry_run)
        freed += [s.as_dict() for s in stale]
        return {"stale": freed, "dry_run": req.dry_run, "errors": errors}
