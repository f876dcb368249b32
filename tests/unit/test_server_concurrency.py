"""Slow calls never delay fast ones: while 50 Mounts take 2 s each, List answers at once.

dockerd calls Get/List constantly and gives them a 1 min budget, while a Mount may legitimately
take long (an sshfs or a loop-device mount); a plugin that serialises them stalls every
``docker volume ls`` behind the slowest mount.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from stubs import FixedVolumes

import dockplug
from dockplug.client import PluginClient
from dockplug.protocol.base import Empty
from dockplug.protocol.volume import MountRequest, NameRequest
from dockplug.testing.servers import ThreadedPlugin, wait_until

MOUNTS = 50
MOUNT_SECONDS = 2.0
FAST = 0.050  # seconds, measured by the client: what a List or Get takes (typical)
# the most any one may take: far below a Mount's 2 s, yet room for a 2-core CI machine
# to stall once while 50 threads start
WORST = MOUNT_SECONDS / 4


class SlowMounts(FixedVolumes):
    """Mount takes 2 s; counts the mounts in progress."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def _enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def mount(self, req: MountRequest) -> str:
        self._enter()
        try:
            time.sleep(MOUNT_SECONDS)
        finally:
            self._leave()
        return f"/mnt/{req.name}"

    def path(self, req: NameRequest) -> str:
        return f"/mnt/{req.name}"

    def list(self, req: Empty) -> list[dockplug.Volume]:
        return [dockplug.Volume(name=f"v{i}") for i in range(MOUNTS)]


class SlowMountsAsyncList(SlowMounts):
    async def list(self, req: Empty) -> list[dockplug.Volume]:  # type: ignore[override]
        return [dockplug.Volume(name=f"v{i}") for i in range(MOUNTS)]


class AsyncSlowMounts(SlowMounts):
    async def mount(self, req: MountRequest) -> str:  # type: ignore[override]
        self._enter()
        try:
            await asyncio.sleep(MOUNT_SECONDS)
        finally:
            self._leave()
        return f"/mnt/{req.name}"


class AsyncSlowMountsAsyncList(AsyncSlowMounts):
    async def list(self, req: Empty) -> list[dockplug.Volume]:  # type: ignore[override]
        return [dockplug.Volume(name=f"v{i}") for i in range(MOUNTS)]


def mount(url: str, i: int) -> Any:
    with PluginClient(url, timeout=30) as client:
        return client.call("VolumeDriver.Mount", {"Name": f"v{i}", "ID": f"id{i}"})


@pytest.mark.parametrize(
    "driver_class",
    [SlowMounts, SlowMountsAsyncList, AsyncSlowMounts, AsyncSlowMountsAsyncList],
    ids=["sync-mount-sync-list", "sync-mount-async-list", "async-mount-sync-list", "async-both"],
)
def test_list_answers_within_50ms_while_50_mounts_take_2s_each(
    serve_plugin: Callable[..., ThreadedPlugin], driver_class: type[SlowMounts]
) -> None:
    driver = driver_class()
    plugin = serve_plugin(driver)
    with plugin.client() as lister:
        lister.call("VolumeDriver.List", {})  # connect before timing
        with ThreadPoolExecutor(MOUNTS) as pool:
            began = time.monotonic()
            mounts = [pool.submit(mount, plugin.url, i) for i in range(MOUNTS)]
            # every mount runs at the same time: none waits for another to finish
            assert wait_until(lambda: driver.in_flight == MOUNTS, MOUNT_SECONDS * 0.75, 0.005)
            latencies = []
            while driver.in_flight == MOUNTS and len(latencies) < 40:
                started = time.perf_counter()
                reply = lister.call("VolumeDriver.List", {})
                latencies.append(time.perf_counter() - started)
                assert reply.status == 200
                assert len(reply.json["Volumes"]) == MOUNTS
                time.sleep(0.01)
            replies = [future.result() for future in mounts]
            elapsed = time.monotonic() - began
    print(f"List latency under load: max {max(latencies) * 1000:.1f} ms over {len(latencies)}")
    assert len(latencies) >= 10
    shown = [f"{x * 1000:.1f}ms" for x in latencies]
    assert sorted(latencies)[len(latencies) // 2] < FAST, shown
    assert max(latencies) < WORST, shown
    assert [r.status for r in replies] == [200] * MOUNTS
    assert [r.json["Mountpoint"] for r in replies] == [f"/mnt/v{i}" for i in range(MOUNTS)]
    assert driver.most_in_flight == MOUNTS
    assert elapsed < MOUNT_SECONDS * 2  # in parallel, not 50 x 2 s


def test_fast_endpoints_stay_fast_while_mounts_are_in_flight(
    serve_plugin: Callable[..., ThreadedPlugin],
) -> None:
    driver = SlowMounts()
    plugin = serve_plugin(driver)
    with plugin.client() as client, ThreadPoolExecutor(MOUNTS) as pool:
        client.call("Plugin.Activate")
        mounts = [pool.submit(mount, plugin.url, i) for i in range(MOUNTS)]
        assert wait_until(lambda: driver.in_flight == MOUNTS, MOUNT_SECONDS * 0.75, 0.005)
        for endpoint, body in [
            ("Plugin.Activate", None),
            ("VolumeDriver.Capabilities", {}),
            ("VolumeDriver.Get", {"Name": "v1"}),
            ("VolumeDriver.Path", {"Name": "v1"}),
        ]:
            started = time.perf_counter()
            assert client.call(endpoint, body).status == 200
            assert time.perf_counter() - started < WORST, endpoint
        assert all(future.result().status == 200 for future in mounts)
