"""What every persistent volume driver shares: the protocol, state, counts, locking, `-o help`.

A concrete driver supplies the storage side through a few hooks (``provision``, ``destroy``,
``attach``, ``detach``, ``reconcile``, ``describe``). This class answers dockerd: it validates
names and options, keeps one lock per volume so Mount and Remove of the same volume never
interleave, writes every change through to the :class:`VolumeStore` before replying, and serves
Get/List from memory on the event loop because dockerd calls them constantly.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from dockplug.drivers.lifecycle import Lifecycle
from dockplug.drivers.options import OptionSet
from dockplug.drivers.volume import gc
from dockplug.drivers.volume.names import check_name
from dockplug.drivers.volume.refcount import MountTable
from dockplug.errors import Conflict, InvalidOption, VolumeInUse, VolumeNotFound
from dockplug.observe import log_event
from dockplug.observe.metrics import Metrics
from dockplug.protocol import volume as wire  # its models load on first use (pydantic)
from dockplug.protocol.base import (
    Encoded,
    Endpoint,
    Lane,
    Lazy,
    Protocol,
    WouldBlock,
    may_block,
    nonblocking,
    try_inline,
)
from dockplug.protocol.volume import VolumeDriver
from dockplug.state.volumes import VolumeRecord, VolumeStore

if TYPE_CHECKING:
    from dockplug.drivers.volume.admin_models import GcRequest
    from dockplug.protocol.volume import (
        Capability,
        CreateRequest,
        MountRequest,
        NameRequest,
        Volume,
    )
    from dockplug.protocol.wire import Empty

_ADMIN = "dockplug.drivers.volume.admin_models"


# dockplug's own maintenance endpoint; not announced by Plugin.Activate
VOLUME_ADMIN = Protocol(
    implements="DockplugVolumeAdmin",
    managed_type="",
    endpoints=(
        Endpoint(
            "/DockplugVolume.Gc",
            "gc",
            Lazy(_ADMIN, "GcRequest"),
            Lazy(_ADMIN, "gc_reply"),
            lane=Lane.SLOW,
        ),
    ),
    announce=False,
)


class VolumeLock:
    """One volume's lock. Every change to a volume holds it, so releasing it is where a cached
    Get reply of that volume stops being true: it is dropped there."""

    __slots__ = ("_lock", "_name", "_released")

    def __init__(self, name: str, released: Callable[[str], None]) -> None:
        self._lock = threading.Lock()
        self._name = name
        self._released = released

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        try:
            self._released(self._name)
        finally:
            self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()


class StatefulVolumeDriver(VolumeDriver):
    """Base of dockplug's persistent volume drivers."""

    options: ClassVar[OptionSet]
    protocols: ClassVar[tuple[Protocol, ...]] = (VOLUME_ADMIN,)

    def __init__(
        self,
        store: VolumeStore,
        scope: str = "local",
        log: Callable[[str], None] = log_event,
        gc_interval: float = 0,
        docker_host: str | None = None,
    ) -> None:
        self.store = store
        self.scope = scope
        self.log = log
        self.gc_interval = gc_interval
        self.docker_host = docker_host
        self.lifecycle = Lifecycle(log)
        self.lifecycle.every(gc_interval, "gc", lambda: gc.collect(self, self.docker_host))
        self.volumes: dict[str, VolumeRecord] = {}
        self.mounts = MountTable()
        self._locks: dict[str, VolumeLock] = {}
        self._locks_guard = threading.Lock()
        # Get replies encoded once, per volume, until its lock is next released (see get)
        self._get_cache: dict[str, Encoded] = {}
        self._generation = 0
        records, mounts = store.load()
        for rec in records:
            self.volumes[rec.name] = rec
        for volume, mount_id, count in mounts:
            self.mounts.load(volume, mount_id, count)

    # -- hooks for concrete drivers ------------------------------------------------------

    def provision(self, name: str, opts: dict[str, Any]) -> VolumeRecord:
        """Create the storage for a new volume and return its record (not yet saved)."""
        raise NotImplementedError

    def recreate(self, rec: VolumeRecord, opts: dict[str, Any]) -> None:
        """Create of an existing volume with the same recorded options (dockerd resends Create
        freely); ``opts`` still holds the values of secret options, which records never do."""

    def before_remove(self, rec: VolumeRecord) -> None:
        """Undo what must be undone while the volume still exists (e.g. unmount its storage);
        raising fails the Remove and leaves the volume as it was."""

    def trash_path(self, rec: VolumeRecord) -> str | None:
        """Storage of a volume being removed that ``destroy`` frees later: it is noted in the
        same transaction that forgets the volume, so a crash before it is freed is finished
        on restart instead of leaving an orphan."""
        return None

    def destroy(self, rec: VolumeRecord) -> None:
        """Release a removed volume's storage (its record is already gone)."""

    def attach(self, rec: VolumeRecord) -> None:
        """Make the volume usable: called on the first Mount (count 0 -> 1)."""

    def detach(self, rec: VolumeRecord) -> None:
        """Called when the last mount ID is unmounted (count 1 -> 0)."""

    def describe(self, rec: VolumeRecord) -> dict[str, Any]:
        """Driver-specific Status entries (cheap: Get is called constantly)."""
        return {}

    def reconcile(self) -> None:
        """Compare state with the real world after start-up and repair what can be repaired."""

    def is_quick(self, rec: VolumeRecord) -> bool:
        """True if Mount, Unmount and Remove of this volume only touch memory, the state store
        and local folders (no mount command, no network): then they run on the event loop
        unless its lock is busy, saving dockerd a thread hand-off per call."""
        return False

    def get_is_cacheable(self, rec: VolumeRecord) -> bool:
        """True if a volume's Get reply changes only through calls that hold its lock (no
        live figures in ``describe``): it is then encoded once and reused until the next
        change, which saves dockerd most of the cost of the Get it sends before every call."""
        return False

    def is_available(self, rec: VolumeRecord) -> bool:
        """Whether Path should report the mountpoint right now."""
        return self.mounts.total(rec.name) > 0

    # -- helpers ---------------------------------------------------------------------------

    def lock(self, name: str) -> VolumeLock:
        with self._locks_guard:
            lock = self._locks.get(name)
            if lock is None:
                lock = self._locks[name] = VolumeLock(name, self._changed)
            return lock

    def _changed(self, name: str | None) -> None:
        """A volume (None: any) may have changed: its cached Get reply is void."""
        self._generation += 1
        if name is None:
            self._get_cache.clear()
        else:
            self._get_cache.pop(name, None)

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[VolumeRecord]:
        """Holds the volume's lock and yields its record (VolumeNotFound if there is none). On
        the event loop (a :func:`try_inline` call) a busy lock or a volume that is not quick
        raises :class:`WouldBlock` instead of waiting."""
        lock = self.lock(name)
        inline = not may_block()
        if not lock.acquire(blocking=not inline):
            raise WouldBlock
        try:
            rec = self.record(name)
            if inline and not self.is_quick(rec):
                raise WouldBlock
            yield rec
        finally:
            lock.release()

    def record(self, name: str) -> VolumeRecord:
        rec = self.volumes.get(name)
        if rec is None:
            raise VolumeNotFound(name)
        return rec

    def to_volume(self, rec: VolumeRecord, with_status: bool = True) -> Volume:
        if not with_status:
            return wire.Volume(name=rec.name, mountpoint=rec.mountpoint, created_at=rec.created_at)
        ids = self.mounts.ids(rec.name)
        status: dict[str, Any] = {
            "Options": self.options.public(rec.options),
            "Mounts": sum(ids.values()),
            "Consumers": len(ids),
        }
        status.update(self.describe(rec))
        return wire.Volume(
            name=rec.name, mountpoint=rec.mountpoint, created_at=rec.created_at, status=status
        )

    # -- protocol ----------------------------------------------------------------------------

    def create(self, req: CreateRequest) -> None:
        name = check_name(req.name)
        raw = req.options
        if self.options.wants_help(raw):
            raise InvalidOption(self.options.help_table())
        opts = self.options.parse(raw)
        recorded = self.options.public(opts)  # secret values never reach a record
        with self.lock(name):
            existing = self.volumes.get(name)
            if existing is not None:
                if existing.options != recorded:
                    raise Conflict(
                        f"volume {name} already exists with options "
                        f"{self.options.public(existing.options)}; asked for "
                        f"{self.options.public(opts)}. Remove it first or use another name"
                    )
                self.recreate(existing, opts)
                return
            rec = self.provision(name, opts)
            rec.options = self.options.public(rec.options)
            self.store.put(rec)
            self.volumes[name] = rec
        self.log(f"created volume {name} at {rec.mountpoint}")

    @try_inline
    def remove(self, req: NameRequest) -> None:
        name = check_name(req.name)
        with self.locked(name) as rec:
            users = self.mounts.total(name)
            if users:
                raise VolumeInUse(name, users)
            self.before_remove(rec)
            self.store.delete(name, trash=self.trash_path(rec))
            del self.volumes[name]
            self.mounts.forget(name)
            self.destroy(rec)
        self.log(f"removed volume {name}")

    @try_inline
    def mount(self, req: MountRequest) -> str:
        name = check_name(req.name)
        with self.locked(name) as rec:
            if self.mounts.total(name) == 0:
                self.attach(rec)
            count = self.mounts.add(name, req.id)
            try:
                self.store.set_mount(name, req.id, count)
            except Exception:
                self.mounts.remove(name, req.id)
                raise
        return rec.mountpoint

    @try_inline
    def unmount(self, req: MountRequest) -> None:
        name = check_name(req.name)
        with self.locked(name) as rec:
            left = self.mounts.remove(name, req.id)
            if left is None:
                self.log(f"unmount of {name} by unknown mount id {req.id[:12]} ignored")
                return
            self.store.set_mount(name, req.id, left)
            if self.mounts.total(name) == 0:
                self.detach(rec)

    @nonblocking
    def path(self, req: NameRequest) -> str:
        rec = self.record(check_name(req.name))
        return rec.mountpoint if self.is_available(rec) else ""

    @nonblocking
    def get(self, req: NameRequest) -> Volume | Encoded:
        name = req.name
        cached = self._get_cache.get(name)
        if cached is not None:
            return cached
        generation = self._generation
        rec = self.record(check_name(name))
        volume = self.to_volume(rec)
        if not self.get_is_cacheable(rec):
            return volume
        encoded = Encoded(wire.GetReply(volume=volume).wire())
        lock = self._locks.get(name)
        # keep it only if no change began or ended meanwhile (a worker thread may be
        # changing this volume while the loop encodes)
        if generation == self._generation and (lock is None or not lock.locked()):
            self._get_cache[name] = encoded
        return encoded

    @nonblocking
    def list(self, req: Empty) -> builtins.list[Volume]:
        records = builtins.list(self.volumes.values())  # one atomic copy under the GIL
        return [self.to_volume(rec, with_status=False) for rec in records]

    @nonblocking
    def capabilities(self, req: Empty) -> Capability:
        return wire.Capability.model_validate({"Scope": self.scope})

    async def startup(self) -> None:
        try:
            await self.lifecycle.start(self.reconcile)
        finally:
            self._changed(None)  # reconcile may have noted errors on records

    def gc(self, req: GcRequest) -> dict[str, int]:
        """Maintenance call (``dockplug local gc``): clear counts no running container backs."""
        return gc.collect(self, req.docker_host or self.docker_host)

    def shutdown(self) -> None:
        self.lifecycle.close(self.store.close)

    # -- observability -------------------------------------------------------------------

    def declare_metrics(self, metrics: Metrics) -> None:
        """Volumes held and mounts in use (read when scraped); Create/Remove/Mount results."""
        metrics.gauge_fn("volumes", "Volumes the driver holds", lambda: len(self.volumes))
        metrics.gauge_fn(
            "mounts",
            "Mounts in use (one per mount ID and count: docker cp mounts twice)",
            lambda: sum(self.mounts.total(name) for name in list(self.volumes)),
        )

    # -- maintenance ---------------------------------------------------------------------

    def clear_mounts(self, name: str) -> dict[str, int]:
        """Forget every mount ID of a volume (``gc``: no running container uses it)."""
        with self.lock(name):
            rec = self.record(name)
            cleared = self.mounts.clear(name)
            self.store.clear_mounts(name)
            if cleared:
                self.detach(rec)
        return cleared
