"""The ``local`` volume driver: folders on this host, optionally size-limited, kept across
restarts and crashes, never deleting data it did not create."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dockplug.drivers.options import (
    Option,
    OptionSet,
    format_size,
    parse_int,
    parse_mode,
    parse_size,
)
from dockplug.drivers.registry import setting_default
from dockplug.drivers.volume.base import StatefulVolumeDriver
from dockplug.drivers.volume.local import loopfs
from dockplug.errors import InvalidOption, PluginError
from dockplug.facts import NAME_MAX
from dockplug.observe import log_event
from dockplug.observe.metrics import Metrics
from dockplug.state import open_volume_store
from dockplug.state.volumes import VolumeRecord

DEFAULT_BASE_DIR: Path = setting_default("local", "base_dir")
DEFAULT_STATE_DIR: Path = setting_default("local", "state_dir")
FORBIDDEN = (Path("/proc"), Path("/sys"), Path("/dev"))
TRASH = ".trash"
TRASH_DELAY = 0.05  # seconds between a Remove and freeing the folder's space


def _absolute_path(text: str) -> str:
    if "\0" in text:
        raise ValueError("a path cannot contain NUL")
    if not text.startswith("/"):
        raise ValueError("expected an absolute host path such as /srv/data")
    if ".." in text.split("/"):
        raise ValueError("'..' is not allowed in the path")
    return os.path.normpath(text)


def _image_size(text: str) -> int:
    size = parse_size(text)
    if size < loopfs.MIN_SIZE:
        raise ValueError(
            f"expected at least {format_size(loopfs.MIN_SIZE)} (room for ext4's journal)"
        )
    return size


LOCAL_OPTIONS = OptionSet(
    "local",
    [
        Option("mountpoint", "use this host folder (created if missing)", _absolute_path,
               "/srv/data"),
        Option("uid", "owner user id of the volume's root folder", parse_int(), "1000"),
        Option("gid", "owner group id of the volume's root folder", parse_int(), "1000"),
        Option("mode", "permissions of the volume's root folder, octal", parse_mode, "0750"),
        Option("size", "size limit (an ext4 image loop-mounted on the folder)", _image_size,
               "10G"),
    ],
)  # fmt: skip


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _set_owner(path: Path, opts: dict[str, Any]) -> None:
    if "uid" in opts or "gid" in opts:
        os.chown(path, opts.get("uid", -1), opts.get("gid", -1))
    if "mode" in opts:
        os.chmod(path, opts["mode"])


class LocalDriver(StatefulVolumeDriver):
    """Volumes as folders under ``base_dir`` (or a user's ``mountpoint``)."""

    options = LOCAL_OPTIONS

    def __init__(
        self,
        base_dir: Path | str = DEFAULT_BASE_DIR,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        allowed_root: Path | str | None = None,
        keep_data: bool = False,
        scope: str = "local",
        log: Callable[[str], None] = log_event,
        gc_interval: float = 0,
        docker_host: str | None = None,
    ) -> None:
        self.base_dir = Path(os.path.realpath(base_dir))
        self.state_dir = Path(os.path.realpath(state_dir))
        self.allowed_root = Path(os.path.realpath(allowed_root)) if allowed_root else None
        self.keep_data = keep_data
        self.base_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.images = self.state_dir / "images"
        self._janitor = ThreadPoolExecutor(1, thread_name_prefix="dockplug-trash")
        self._doomed: dict[str, str] = {}  # folder -> volume: removed, freed by the janitor soon
        super().__init__(
            open_volume_store(self.state_dir),
            scope=scope,
            log=log,
            gc_interval=gc_interval,
            docker_host=docker_host,
        )
        # folders a crash left to free: before any request, so a Create of such a name
        # (which may come before reconcile gets to it) frees the old folder, never adopts it
        used = {rec.mountpoint for rec in self.volumes.values()}
        self._doomed.update((path, name) for path, name in self.store.trash() if path not in used)

    # -- options -------------------------------------------------------------------------

    def _check_mountpoint(self, text: str) -> Path:
        path = Path(os.path.realpath(text))  # a symlink must not lead us into /proc
        if path == Path("/") or any(_within(path, f) for f in FORBIDDEN):
            raise InvalidOption(f"option mountpoint={text}: {path} is a system folder; refused")
        if _within(path, self.base_dir) or _within(self.base_dir, path):
            raise InvalidOption(
                f"option mountpoint={text}: overlaps the base dir {self.base_dir}; "
                "leave mountpoint out to get a folder there"
            )
        if _within(path, self.state_dir) or _within(self.state_dir, path):
            raise InvalidOption(
                f"option mountpoint={text}: overlaps the state dir {self.state_dir}; refused"
            )
        if self.allowed_root is not None and not _within(path, self.allowed_root):
            raise InvalidOption(
                f"option mountpoint={text}: outside the allowed root {self.allowed_root}"
            )
        return path

    # -- storage hooks -------------------------------------------------------------------

    def provision(self, name: str, opts: dict[str, Any]) -> VolumeRecord:
        owned = "mountpoint" not in opts
        path = self.base_dir / name if owned else self._check_mountpoint(opts["mountpoint"])
        if "size" in opts and not owned:
            raise InvalidOption("option size: only for volumes under the base dir (no mountpoint)")
        image = self.images / f"{name}.img"
        if "size" in opts and len(image.name.encode()) > NAME_MAX:
            raise InvalidOption(
                f"option size: needs a volume name of at most {NAME_MAX - 4} bytes "
                "(its image file is named after it)"
            )
        if str(path) in self._doomed:  # removed a moment ago, not freed yet: its data must go
            self._free(str(path))
        existed = path.exists()
        extra: dict[str, Any] = {}
        made_image = mounted = False
        try:
            if existed and not path.is_dir():
                raise PluginError(f"{path} exists and is not a folder")
            path.mkdir(parents=True, exist_ok=True, mode=0o755)
            if "size" in opts:
                if os.path.ismount(path):  # left mounted by a Create killed before saving
                    loopfs.unmount(path)
                if any(path.iterdir()):
                    raise PluginError(f"{path} is not empty; cannot put a size limit on it")
                if image.exists():  # kept by --keep-data, or left by a crash before saving
                    kept = image.stat().st_size
                    if kept != opts["size"]:
                        raise PluginError(
                            f"{image} ({format_size(kept)}) is kept from an earlier volume "
                            f"{name}: create it with size={format_size(kept)} to use it "
                            "again, or move the file away"
                        )
                    self.log(f"{name}: using the existing image {image}")
                else:
                    loopfs.make_image(image, opts["size"])
                    made_image = True
                loopfs.mount_image(image, path)
                mounted = True
                shutil.rmtree(path / "lost+found", ignore_errors=True)
                extra["image"] = str(image)
            _set_owner(path, opts)
        except BaseException:
            if mounted:
                loopfs.unmount(path)
            if made_image:
                image.unlink(missing_ok=True)
            if not existed and path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            raise
        return VolumeRecord(name=name, mountpoint=str(path), options=opts, owned=owned, extra=extra)

    def before_remove(self, rec: VolumeRecord) -> None:
        # before the record goes: if the image is busy, Remove fails and the volume stays whole
        if rec.extra.get("image"):
            loopfs.unmount(Path(rec.mountpoint))

    def trash_path(self, rec: VolumeRecord) -> str | None:
        return rec.mountpoint if rec.owned and not self.keep_data else None

    def destroy(self, rec: VolumeRecord) -> None:
        image = rec.extra.get("image")
        if image and not self.keep_data:
            Path(image).unlink(missing_ok=True)
        if self.trash_path(rec) is None:
            return
        # the folder goes a moment later, in the background: Remove answers without waiting
        # for the filesystem, and the store's trash row finishes the job after a crash
        self._doomed[rec.mountpoint] = rec.name
        self._janitor.submit(
            self._free_later, rec.mountpoint, rec.name, time.monotonic() + TRASH_DELAY
        )

    def wait_freed(self, timeout: float = 10.0) -> bool:
        """True once the folders of removed volumes are gone from disk."""
        deadline = time.monotonic() + timeout
        while self._doomed:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _free_later(self, path: str, name: str, not_before: float) -> None:
        # not while the Remove's reply is on its way: a thread touching files right then
        # competes with the event loop for the interpreter
        time.sleep(max(0.0, not_before - time.monotonic()))
        with self.lock(name):
            if self._doomed.get(path) != name:
                return  # a Create of the name (or reconcile) freed it already
            try:
                self._free(path)
            except OSError as exc:  # kept noted: the next Create of the name or start retries
                self.log(f"could not free the folder {path} of removed volume {name}: {exc}")

    def _free(self, path: str) -> None:
        """Frees a removed volume's folder (its volume's lock held): an empty one at once,
        others renamed away first (atomic: never half-deleted in place) and deleted after."""
        folder = Path(path)
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            # a name of NAME_MAX bytes plus the suffix would not fit in one file name
            trash = self.base_dir / TRASH / f"{folder.name[:200]}-{time.time_ns()}"
            trash.parent.mkdir(exist_ok=True, mode=0o700)
            with contextlib.suppress(FileNotFoundError):
                os.replace(folder, trash)
                # deleting a big volume can outlast dockerd's 1-minute Remove timeout
                try:
                    self._janitor.submit(shutil.rmtree, trash, ignore_errors=True)
                except RuntimeError:  # shutting down: the janitor takes no more work
                    shutil.rmtree(trash, ignore_errors=True)
        self._doomed.pop(path, None)
        self.store.forget_trash(path)

    def get_is_cacheable(self, rec: VolumeRecord) -> bool:
        # a size-limited volume reports its live disk usage; a plain folder reports nothing
        # that changes without a call holding its lock
        return not rec.extra.get("image")

    def is_quick(self, rec: VolumeRecord) -> bool:
        # a plain folder: Mount, Unmount and Remove are table updates (Remove's folder goes
        # in the background); a size-limited volume mounts and unmounts its image, which may
        # take a while
        return not rec.extra.get("image")

    def attach(self, rec: VolumeRecord) -> None:
        # a container must never get the bare folder under an image that is not mounted
        image = rec.extra.get("image")
        path = Path(rec.mountpoint)
        if image and not os.path.ismount(path):
            if not Path(image).is_file():
                raise PluginError(f"volume {rec.name}: its size-limit image {image} is missing")
            loopfs.mount_image(Path(image), path)
            rec.extra.pop("error", None)
            self.log(f"{rec.name}: image was not mounted; mounted it again")

    def is_available(self, rec: VolumeRecord) -> bool:
        return True  # a local folder is usable whether or not a container has it mounted

    def describe(self, rec: VolumeRecord) -> dict[str, Any]:
        status: dict[str, Any] = {}
        if rec.extra.get("image"):
            status["Quota"] = f"ext4 loop image, {format_size(rec.options['size'])}"
            try:
                if not os.path.ismount(rec.mountpoint):  # two stat calls: Get stays cheap
                    raise FileNotFoundError(rec.mountpoint)
                status.update(loopfs.usage(Path(rec.mountpoint)))
            except OSError:
                status["Quota"] += " (not mounted)"
        else:
            status["Quota"] = "none"
        if rec.extra.get("error"):
            status["Error"] = rec.extra["error"]
        return status

    # -- observability -------------------------------------------------------------------

    def declare_metrics(self, metrics: Metrics) -> None:
        super().declare_metrics(metrics)
        metrics.gauge_fn(
            "bytes_used",
            "Bytes used by size-limited volumes (their ext4 images, mounted ones)",
            self._bytes_used,
        )

    def _bytes_used(self) -> float:
        """statvfs of each mounted image: cheap, never a walk of a folder tree."""
        total = 0
        for rec in list(self.volumes.values()):
            if rec.extra.get("image") and loopfs.is_mounted(rec.mountpoint):
                with contextlib.suppress(OSError):
                    total += loopfs.usage(Path(rec.mountpoint))["UsedBytes"]
        return total

    # -- start-up ------------------------------------------------------------------------

    def shutdown(self) -> None:
        self._janitor.shutdown(wait=True)  # finish freeing removed volumes' space
        super().shutdown()

    def reconcile(self) -> None:
        fixed: list[str] = []
        for doomed, volume in self.store.trash():
            with self.lock(volume):
                if any(r.mountpoint == doomed for r in self.volumes.values()):
                    self._doomed.pop(doomed, None)  # a volume made since uses the folder
                    self.store.forget_trash(doomed)
                    continue
                existed = os.path.lexists(doomed)
                try:
                    self._free(doomed)
                except OSError as exc:
                    fixed.append(f"could not free volume {volume}'s folder {doomed}: {exc}")
                    continue
            if existed:
                fixed.append(f"finished removing volume {volume}'s folder {doomed}")
        for rec in list(self.volumes.values()):
            path = Path(rec.mountpoint)
            with self.lock(rec.name):
                if self.volumes.get(rec.name) is not rec:
                    continue  # removed (or removed and created again) since we listed it
                image = rec.extra.get("image")
                if not path.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    if not image:  # an image's root folder carries its own owner and mode
                        _set_owner(path, rec.options)
                    fixed.append(f"{rec.name}: folder {path} had vanished; recreated empty")
                if image and not loopfs.is_mounted(path):
                    if not Path(image).is_file():
                        rec.extra["error"] = f"size-limit image {image} is missing"
                        fixed.append(f"{rec.name}: {rec.extra['error']}")
                        continue
                    try:
                        loopfs.mount_image(Path(image), path)
                        rec.extra.pop("error", None)
                        fixed.append(f"{rec.name}: image was not mounted; mounted it again")
                    except PluginError as exc:
                        rec.extra["error"] = str(exc)
                        fixed.append(f"{rec.name}: {exc}")
        for partial in self.images.glob("*.new") if self.images.is_dir() else ():
            with self.lock(partial.stem):  # not while a Create of that name makes it
                if partial.exists():
                    partial.unlink()
                    fixed.append(f"removed the unfinished image {partial.name}")
        trash = self.base_dir / TRASH
        if trash.is_dir():
            for leftover in trash.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
                fixed.append(f"finished removing {leftover.name}")
        known = {Path(r.mountpoint).name for r in self.volumes.values() if r.owned}
        for entry in self.base_dir.iterdir():
            if entry.name != TRASH and entry.name not in known and entry.is_dir():
                fixed.append(f"folder {entry} belongs to no volume (kept; remove it by hand)")
        mounted = sum(1 for r in self.volumes.values() if self.mounts.total(r.name))
        self.log(
            f"reconciled {len(self.volumes)} volumes ({mounted} in use): "
            + ("; ".join(fixed) if fixed else "nothing to fix")
        )
