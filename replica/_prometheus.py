"""`/-/metrics`: the caches' counters as Prometheus text, under Ray Serve's metric names.

The numbers live in each cache's `CacheMetrics`; a custom collector reads them at scrape time
(nothing is counted twice, nothing runs on the request path). Several caches in one replica are
summed into one series per metric, labelled with the replica id. Counters are exposed with
the `_total` suffix that the Prometheus text format gives every counter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from replica._metrics import LATENCY_BUCKETS_MS, CacheMetrics, LatencyHistogram
from replica._runtime import runtime

__all__ = ["CONTENT_TYPE", "ReplicaMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_BUCKET_BOUNDS = [repr(float(bound)) for bound in LATENCY_BUCKETS_MS] + ["+Inf"]


def _histogram(
    name: str, documentation: str, labels: list[str], histograms: Iterable[LatencyHistogram]
) -> HistogramMetricFamily:
    counts = [0] * len(_BUCKET_BOUNDS)
    total_ms = 0.0
    for histogram in histograms:
        for index, count in enumerate(histogram.bucket_counts):
            counts[index] += count
        total_ms += histogram.sum_ms
    cumulative: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(_BUCKET_BOUNDS, counts, strict=True):
        running += count
        cumulative.append((bound, running))
    family = HistogramMetricFamily(name, documentation, labels=["replica"])
    family.add_metric(labels, cumulative, total_ms)
    return family


def _counter(name: str, documentation: str, labels: list[str], value: int) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["replica"])
    family.add_metric(labels, value)
    return family


def _gauge(name: str, documentation: str, labels: list[str], value: int) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["replica"])
    family.add_metric(labels, value)
    return family


_COUNTERS: tuple[tuple[str, str, Callable[[CacheMetrics], int]], ...] = (
    ("serve_multiplexed_models_load_counter", "Models loaded.", lambda m: m.loads),
    ("serve_multiplexed_models_unload_counter", "Models unloaded.", lambda m: m.unloads),
    (
        "serve_multiplexed_get_model_requests_counter",
        "Calls of the multiplexed loader (cache hits and misses).",
        lambda m: m.get_model_requests,
    ),
    (
        "modelplex_multiplexed_model_load_failures",
        "Model loads that raised.",
        lambda m: m.load_failures,
    ),
)
"""Ray's counter names (and ours), summed over the replica's caches."""


class _CacheCollector(Collector):
    def __init__(self, replica_id: str, in_flight: Callable[[], int]) -> None:
        self._labels = [replica_id]
        self._in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        caches = runtime.caches()
        metrics: list[CacheMetrics] = [cache.metrics for cache in caches]
        labels = self._labels
        yield _histogram(
            "serve_multiplexed_model_load_latency_ms",
            "Time to load a model, in milliseconds.",
            labels,
            (m.load_latency_ms for m in metrics),
        )
        yield _histogram(
            "serve_multiplexed_model_unload_latency_ms",
            "Time to unload (clean up) an evicted model, in milliseconds.",
            labels,
            (m.unload_latency_ms for m in metrics),
        )
        yield _gauge(
            "serve_num_multiplexed_models",
            "Models resident in the replica's caches.",
            labels,
            sum(len(cache.state().models) for cache in caches),
        )
        for name, documentation, count in _COUNTERS:
            yield _counter(name, documentation, labels, sum(count(m) for m in metrics))
        yield _gauge(
            "modelplex_replica_in_flight_requests",
            "Requests being served now.",
            labels,
            self._in_flight(),
        )


class ReplicaMetrics:
    """The replica's Prometheus registry; `render()` is the body of `/-/metrics`."""

    def __init__(self, *, replica_id: str, in_flight: Callable[[], int]) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_CacheCollector(replica_id, in_flight))

    def render(self) -> bytes:
        return generate_latest(self._registry)
