"""The life of a stateful driver around the requests it answers: the same for every family.

dockerd may call a plugin the moment its socket listens, and waits on every call, so start-up
work that touches the real world (reconciling mounts, links, FIFOs with the store) runs after
the socket listens, in a worker thread, while requests are already answered. Periodic work
(gc, sweeps) runs the same way. Cancelling a task does not stop its thread, so one
maintenance lock lets shutdown wait for work still running before it closes the store under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any


class Lifecycle:
    """Start-up reconcile, timers and an orderly close for one driver."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self._maintenance = threading.Lock()
        self._closed = False
        self._timers: list[tuple[str, float, Callable[[], Any]]] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def closed(self) -> bool:
        return self._closed

    def every(self, seconds: float, name: str, work: Callable[[], Any]) -> None:
        """Run WORK every SECONDS in a worker thread once started; a failure is logged as
        ``NAME: error`` and the timer goes on."""
        if seconds > 0:
            self._timers.append((name, seconds, work))

    async def start(self, reconcile: Callable[[], Any]) -> None:
        """Reconcile in a worker thread (after the socket listens), then start the timers."""
        await asyncio.to_thread(self.maintain, reconcile)
        for name, seconds, work in self._timers:
            self._tasks.append(asyncio.create_task(self._repeat(name, seconds, work)))

    async def _repeat(self, name: str, seconds: float, work: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await asyncio.to_thread(self.maintain, work)
            except Exception as exc:
                self.log(f"{name}: {exc}")

    def maintain(self, work: Callable[..., Any], *args: Any) -> Any:
        """Run background WORK unless the driver is closing (then None)."""
        with self._maintenance:
            if self._closed:
                return None
            return work(*args)

    def close(self, release: Callable[[], Any]) -> None:
        """Stop the timers, wait for work still running in its thread, then RELEASE (close the
        store); later maintenance does nothing."""
        for task in self._tasks:
            task.cancel()
        with self._maintenance:
            self._closed = True
        release()


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel a driver's background tasks and wait until each has finished unwinding, so that
    what they use (a store, a watch) can be closed after them."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
