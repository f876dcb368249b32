"""``@try_inline``: run on the event loop when nothing has to wait, in a worker otherwise.

The fast path saves dockerd a thread hand-off per Remove/Mount/Unmount of a plain local
volume; the guarantee that must hold regardless is that a busy lock never stalls the loop
(Get and List keep answering) and that the retried call sees nothing half-done.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stubs import FixedVolumes

import dockplug
from dockplug.drivers.volume.local.driver import LocalDriver
from dockplug.protocol.volume import NameRequest
from dockplug.testing.servers import ThreadedPlugin

LOOP_THREAD = "dockplug-test-server"  # ThreadedPlugin runs its event loop on this thread


class Recording(FixedVolumes):
    """Remove records where each attempt ran; the first attempt may ask to move."""

    def __init__(self, block_first: bool) -> None:
        self.block_first = block_first
        self.attempts: list[tuple[str, bool]] = []

    @dockplug.try_inline
    def remove(self, req: NameRequest) -> None:
        self.attempts.append((threading.current_thread().name, dockplug.may_block()))
        if self.block_first and not dockplug.may_block():
            raise dockplug.WouldBlock


def test_a_call_that_need_not_wait_runs_on_the_loop(short_tmp: Path) -> None:
    driver = Recording(block_first=False)
    with ThreadedPlugin(driver, socket=short_tmp / "p.sock") as plugin, plugin.client() as c:
        assert c.call("VolumeDriver.Remove", {"Name": "v"}).error is None
    [(thread, may_block)] = driver.attempts
    assert thread == LOOP_THREAD and may_block is False


def test_would_block_moves_the_call_to_a_worker_thread(short_tmp: Path) -> None:
    driver = Recording(block_first=True)
    with ThreadedPlugin(driver, socket=short_tmp / "p.sock") as plugin, plugin.client() as c:
        reply = c.call("VolumeDriver.Remove", {"Name": "v"})
    assert reply.status == 200 and reply.error is None
    (first, first_may), (second, second_may) = driver.attempts
    assert first_may is False and first == LOOP_THREAD
    assert second_may is True and second.startswith("dockplug-slow")


def test_a_busy_volume_lock_never_stalls_the_loop(short_tmp: Path) -> None:
    driver = LocalDriver(base_dir=short_tmp / "vols", state_dir=short_tmp / "state")
    with ThreadedPlugin(driver, socket=short_tmp / "p.sock") as plugin, plugin.client() as c:
        for name in ("busy", "other"):
            assert c.call("VolumeDriver.Create", {"Name": name, "Opts": None}).error is None
        lock = driver.lock("busy")
        lock.acquire()  # as a slow Mount in a worker thread would
        try:
            with ThreadPoolExecutor(2) as pool:
                remove = pool.submit(_call, plugin, "VolumeDriver.Remove", {"Name": "busy"})
                mount = pool.submit(
                    _call, plugin, "VolumeDriver.Mount", {"Name": "busy", "ID": "m1"}
                )
                time.sleep(0.2)
                assert not remove.done() and not mount.done()  # waiting, in worker threads
                started = time.monotonic()
                assert c.call("VolumeDriver.Get", {"Name": "other"}).error is None
                assert c.call("VolumeDriver.List", {}).error is None
                assert c.call("VolumeDriver.Remove", {"Name": "other"}).error is None
                assert time.monotonic() - started < 0.5
                lock.release()
                lock = None
                results = {remove.result(timeout=10), mount.result(timeout=10)}
        finally:
            if lock is not None:
                lock.release()
    # they ran one after the other, whole: either the Mount won (and Remove was refused as
    # in use) or the Remove won (and the Mount found no volume)
    assert results in (
        {None, "volume busy is in use by 1 mount"},
        {"no such volume: busy", None},
    ), results


def test_mount_and_unmount_of_a_plain_volume_keep_counts_on_the_fast_path(
    short_tmp: Path,
) -> None:
    driver = LocalDriver(base_dir=short_tmp / "vols", state_dir=short_tmp / "state")
    driver.create(dockplug.CreateRequest.model_validate({"Name": "v", "Opts": None}))
    with ThreadedPlugin(driver, socket=short_tmp / "p.sock") as plugin, plugin.client() as c:
        for _ in range(2):  # docker cp on a running container: the same ID twice
            assert c.call("VolumeDriver.Mount", {"Name": "v", "ID": "a"}).error is None
        assert driver.mounts.ids("v") == {"a": 2}
        assert c.call("VolumeDriver.Unmount", {"Name": "v", "ID": "a"}).error is None
        reply = c.call("VolumeDriver.Remove", {"Name": "v"})
        assert reply.error is not None and "in use" in reply.error
        assert c.call("VolumeDriver.Unmount", {"Name": "v", "ID": "a"}).error is None
        assert c.call("VolumeDriver.Remove", {"Name": "v"}).error is None


def _call(plugin: ThreadedPlugin, endpoint: str, body: dict[str, str]) -> str | None:
    with plugin.client() as c:
        return c.call(endpoint, body).error
