"""Metrics every dockplug plugin exposes, and the small API a driver declares its own with.

Off by default: then every handle is a no-op and ``prometheus_client`` is never imported (it
costs ~0.1 s of start-up, and dockerd waits for a managed plugin's socket). With
``--metrics ADDR`` the server builds a :class:`~dockplug.observe.prometheus.PrometheusMetrics`
and serves it on a side listener (``server/side.py``), never on the plugin socket.

A driver declares its family's metrics in ``declare_metrics(metrics)`` (called once, before
start-up) and keeps the handles::

    def declare_metrics(self, metrics):
        self.m_mounts = metrics.counter("mounts", "Mounts answered", ("result",))
        metrics.gauge_fn("volumes", "Volumes held", lambda: len(self.volumes))

Names get the prefix ``dockplug_<family>_``; the family is the driver's (``volume``,
``ipam``, ``network``, ``authz``, ``log``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

#: Latency buckets (seconds) for dockerd's calls: most answer in well under a millisecond, a
#: Mount may take seconds, and dockerd gives up on a legacy plugin's call after 60 s.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

#: What one request's outcome is called in ``dockplug_requests_total{outcome=...}``, by status.
OUTCOMES = {200: "ok", 400: "bad_request", 404: "not_implemented", 413: "too_large"}


def outcome(status: int) -> str:
    return OUTCOMES.get(status, "error")


class Counter:
    """A count that only goes up; labels by keyword (``inc(result="ok")``)."""

    def inc(self, amount: float = 1, **labels: str) -> None:
        pass


class Gauge:
    def set(self, value: float, **labels: str) -> None:
        pass

    def inc(self, amount: float = 1, **labels: str) -> None:
        pass

    def dec(self, amount: float = 1, **labels: str) -> None:
        pass


class Histogram:
    def observe(self, value: float, **labels: str) -> None:
        pass


#: A gauge read at scrape time: a number, or {label values: number} for a labelled gauge.
GaugeReader = Callable[[], float | dict[tuple[str, ...], float]]


class Metrics:
    """The no-op registry (metrics off). Subclasses record for real; the API is the same."""

    enabled = False

    def family(self, family: str) -> Metrics:
        """The same registry, declaring names under ``dockplug_<family>_``."""
        return self

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return _COUNTER

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return _GAUGE

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return _HISTOGRAM

    def gauge_fn(self, name: str, help: str, read: GaugeReader, labels: Sequence[str] = ()) -> None:
        """A gauge whose value READ returns when scraped (runs on the listener's thread: keep
        it cheap and thread-safe)."""

    # -- the SDK's own, fed by the server (``PluginApp.observer``) -----------------------

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        pass

    def phase(self, name: str, seconds: float) -> None:
        """How long a one-off phase took: ``startup`` (process start to socket listening),
        ``reconcile`` (the driver's start-up work)."""


_COUNTER = Counter()
_GAUGE = Gauge()
_HISTOGRAM = Histogram()
NO_METRICS = Metrics()
