"""Whether a plugin is fit to answer dockerd, and if not, why.

A plugin is *ready* once its socket listens and its start-up work (reconcile) is done, and
*degraded* while any driver reports a reason (its store unreachable, a log sink away, a dead
FUSE mount). Learning that from a failing ``docker run`` is what operators do today; this is
what ``/health`` on the side listener and ``dockplug status`` show instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: A driver's own check: the reasons it is degraded now (empty: fine). Runs on the side
#: listener's thread or in a worker: it must be quick and must not wait on dockerd.
Check = Callable[[], Sequence[str]]


@dataclass
class Health:
    plugin: str
    started: float = field(default_factory=time.time)
    listening: bool = False
    started_up: bool = False
    stopping: bool = False
    checks: list[Check] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """The JSON ``/health`` answers; ``status`` is starting, ready, degraded or stopping."""
        reasons: list[str] = []
        for check in self.checks:
            try:
                reasons.extend(check())
            except Exception as exc:  # a broken check is itself a reason
                reasons.append(f"health check failed: {type(exc).__name__}: {exc}")
        if self.stopping:
            status = "stopping"
        elif not (self.listening and self.started_up):
            status = "starting"
            if not self.listening:
                reasons.insert(0, "the plugin socket is not listening yet")
            else:
                reasons.insert(0, "start-up reconcile is still running")
        else:
            status = "degraded" if reasons else "ready"
        return {
            "plugin": self.plugin,
            "status": status,
            "ready": status == "ready",
            "reasons": reasons,
            "uptime_seconds": round(time.time() - self.started, 3),
        }
