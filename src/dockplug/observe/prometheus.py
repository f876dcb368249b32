"""The real registry behind ``--metrics``: prometheus_client, imported only when asked for.

The SDK's per-request figures are kept in plain counters on the event loop (one dictionary
lookup and a bisect per request, well under a microsecond) and turned into Prometheus
families when scraped; prometheus_client's own labelled objects cost ~2 us a request, a few
percent of a Get. Driver metrics use prometheus_client's objects directly: they are rarer.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PCounter
from prometheus_client import Gauge as PGauge
from prometheus_client import Histogram as PHistogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dockplug.observe import metrics as api

__all__ = ["CONTENT_TYPE_LATEST", "PrometheusMetrics"]


class _Labelled:
    """A prometheus_client metric behind dockplug's keyword-label handle."""

    def __init__(self, metric: Any, labels: Sequence[str]) -> None:
        self._metric = metric
        self._labels = tuple(labels)

    def _child(self, labels: dict[str, str]) -> Any:
        if not self._labels:
            return self._metric
        return self._metric.labels(**labels)


class _Counter(_Labelled, api.Counter):
    def inc(self, amount: float = 1, **labels: str) -> None:
        self._child(labels).inc(amount)


class _Gauge(_Labelled, api.Gauge):
    def set(self, value: float, **labels: str) -> None:
        self._child(labels).set(value)

    def inc(self, amount: float = 1, **labels: str) -> None:
        self._child(labels).inc(amount)

    def dec(self, amount: float = 1, **labels: str) -> None:
        self._child(labels).dec(amount)


class _Histogram(_Labelled, api.Histogram):
    def observe(self, value: float, **labels: str) -> None:
        self._child(labels).observe(value)


class _ReadAtScrape:
    """A collector for one ``gauge_fn``."""

    def __init__(self, name: str, help: str, read: api.GaugeReader, labels: Sequence[str]):
        self.name, self.help, self.read, self.labels = name, help, read, list(labels)

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.help, labels=self.labels)]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.help, labels=self.labels)
        value = self.read()
        if isinstance(value, dict):
            for label_values, number in value.items():
                family.add_metric(list(label_values), number)
        else:
            family.add_metric([], value)
        yield family


class _Requests:
    """The SDK's request figures, fed on the event loop, read when scraped."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = list(buckets)
        # A row per endpoint (answered 200) or per (endpoint, status): per-bucket counts (the
        # last +Inf), then the sum of seconds. Every figure a scrape reports is a sum of rows,
        # each of which only grows, so no counter can seem to go back between two scrapes.
        self.ok: dict[str, list[float]] = {}
        self.other: dict[tuple[str, int], list[float]] = {}
        self.phases: dict[str, float] = {}

    def done(self, endpoint: str, status: int, seconds: float) -> None:
        # on the loop after every reply, so as little as it can be: a lookup, a bisect, two adds
        if status == 200:
            row = self.ok.get(endpoint)
            if row is None:
                row = self.ok[endpoint] = [0.0] * (len(self.buckets) + 2)
        else:
            key = (endpoint, status)
            row = self.other.get(key)
            if row is None:
                row = self.other[key] = [0.0] * (len(self.buckets) + 2)
        row[bisect.bisect_left(self.buckets, seconds)] += 1
        row[-1] += seconds

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "dockplug_requests", "Plugin calls answered, by endpoint and outcome",
            labels=["endpoint", "outcome"],
        )  # fmt: skip
        errors = CounterMetricFamily(
            "dockplug_errors", "Plugin calls that did not answer 200, by endpoint",
            labels=["endpoint"],
        )  # fmt: skip
        by_endpoint: dict[str, list[float]] = {}  # all statuses summed: the latency histogram
        by_outcome: dict[tuple[str, str], int] = {}
        failed: dict[str, int] = {}
        rows = [((e, 200), list(r)) for e, r in list(self.ok.items())]
        rows += [(key, list(r)) for key, r in list(self.other.items())]
        for (endpoint, status), row in rows:
            seen = by_endpoint.get(endpoint)
            by_endpoint[endpoint] = (
                row if seen is None else [a + b for a, b in zip(seen, row, strict=True)]
            )
            calls = int(sum(row[:-1]))
            key = (endpoint, api.outcome(status))
            by_outcome[key] = by_outcome.get(key, 0) + calls
            if status != 200:
                failed[endpoint] = failed.get(endpoint, 0) + calls
        for (endpoint, result), count in by_outcome.items():
            requests.add_metric([endpoint, result], count)
        for endpoint, count in failed.items():
            errors.add_metric([endpoint], count)
        latency = HistogramMetricFamily(
            "dockplug_request_duration_seconds",
            "Time from a call's arrival to its reply, by endpoint",
            labels=["endpoint"],
        )
        for endpoint, row in by_endpoint.items():
            cumulative: list[tuple[str, float]] = []
            total = 0.0
            for bound, hits in zip([*self.buckets, float("inf")], row[:-1], strict=True):
                total += hits
                cumulative.append((_bound(bound), total))
            latency.add_metric([endpoint], cumulative, row[-1])
        yield from (requests, errors, latency)
        for phase, seconds in list(self.phases.items()):
            gauge = GaugeMetricFamily(f"dockplug_{phase}_seconds", f"Duration of {phase}")
            gauge.add_metric([], seconds)
            yield gauge


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


class PrometheusMetrics(api.Metrics):
    enabled = True

    def __init__(
        self,
        plugin: str,
        driver: str,
        version: str,
        registry: CollectorRegistry | None = None,
        prefix: str = "dockplug_",
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.prefix = prefix
        self._requests = _Requests(api.LATENCY_BUCKETS)
        # the server's per-request hook goes straight to the counters (one call, not two)
        self.request_done = self._requests.done  # type: ignore[method-assign]
        self._lock = threading.Lock()
        if prefix == "dockplug_":
            self.registry.register(self._requests)
            info = PGauge(
                "dockplug_info", "The plugin this process serves", ["plugin", "driver", "version"],
                registry=self.registry,
            )  # fmt: skip
            info.labels(plugin, driver, version).set(1)
            PGauge(
                "dockplug_process_start_time_seconds", "When this plugin process started",
                registry=self.registry,
            ).set(time.time() - _process_age())  # fmt: skip

    def family(self, family: str) -> PrometheusMetrics:
        child = PrometheusMetrics.__new__(PrometheusMetrics)
        child.registry = self.registry
        child.prefix = f"dockplug_{family}_"
        child._requests = self._requests
        child._lock = self._lock
        return child

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> api.Counter:
        metric = PCounter(self.prefix + name, help, list(labels), registry=self.registry)
        return _Counter(metric, labels)

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> api.Gauge:
        metric = PGauge(self.prefix + name, help, list(labels), registry=self.registry)
        return _Gauge(metric, labels)

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = api.LATENCY_BUCKETS,
    ) -> api.Histogram:
        metric = PHistogram(
            self.prefix + name, help, list(labels), registry=self.registry, buckets=buckets
        )
        return _Histogram(metric, labels)

    def gauge_fn(
        self, name: str, help: str, read: api.GaugeReader, labels: Sequence[str] = ()
    ) -> None:
        self.registry.register(_ReadAtScrape(self.prefix + name, help, read, labels))

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        self._requests.done(endpoint, status, seconds)

    def phase(self, name: str, seconds: float) -> None:
        self._requests.phases[name] = seconds

    def exposition(self) -> bytes:
        """The text a scrape gets."""
        with self._lock:
            data: bytes = generate_latest(self.registry)
            return data


def _process_age() -> float:
    """Seconds since this process started (from /proc/self/stat's start time)."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0
