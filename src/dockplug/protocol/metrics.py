"""MetricsCollector: endpoint table and the driver base class.

Reference: plugin-protocol.md §8. Effectively managed-only: dockerd bind-mounts its Prometheus
socket read-only at :data:`METRICS_SOCKET` inside plugins of type ``docker.metricscollector/1.0``
and serves ``GET /metrics`` there. Both calls come with an empty body; dockerd never reads the
reply and only logs errors.
"""

from __future__ import annotations

from typing import Any, ClassVar

from dockplug.protocol.base import (
    Driver,
    Empty,
    Endpoint,
    ErrReply,
    Lane,
    Protocol,
    placeholder,
)

METRICS_SOCKET = "/run/docker/metrics.sock"
"""Where dockerd's metrics endpoint appears in the plugin (``GET /metrics``, Prometheus text)."""


def _ok(_: Any, __: Any) -> ErrReply:
    return ErrReply()


METRICS = Protocol(
    implements="MetricsCollector",
    managed_type="docker.metricscollector/1.0",
    endpoints=(
        Endpoint("/MetricsCollector.StartMetrics", "start_metrics", Empty, _ok, lane=Lane.SLOW),
        Endpoint("/MetricsCollector.StopMetrics", "stop_metrics", Empty, _ok, lane=Lane.SLOW),
    ),
)


class MetricsCollector(Driver):
    """Base class of a metrics plugin. Methods may be ``def`` (worker thread) or ``async def``.

    ``start_metrics`` comes on every enable (and at daemon start): the socket is ready to scrape
    from then on. ``stop_metrics`` comes only at daemon shutdown, never on ``plugin disable``; it
    does nothing unless overridden.
    """

    protocols: ClassVar[tuple[Protocol, ...]] = (METRICS,)

    @placeholder
    def start_metrics(self, req: Empty) -> Any:
        raise NotImplementedError

    def stop_metrics(self, req: Empty) -> Any:
        return None
