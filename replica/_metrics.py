"""Counters the multiplexed cache keeps, under Ray Serve's metric names.

Plain numbers, no exporter: the replica server renders them as Prometheus text. Histograms use
fixed millisecond buckets so that scrapes from many replicas aggregate.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["LATENCY_BUCKETS_MS", "CacheMetrics", "LatencyHistogram"]

LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
)  # fmt: skip


@dataclass
class LatencyHistogram:
    """Cumulative-bucket histogram of latencies in milliseconds."""

    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    count: int = 0
    sum_ms: float = 0.0

    def observe(self, value_ms: float) -> None:
        self.bucket_counts[bisect.bisect_left(LATENCY_BUCKETS_MS, value_ms)] += 1
        self.count += 1
        self.sum_ms += value_ms

    @property
    def mean_ms(self) -> float | None:
        return self.sum_ms / self.count if self.count else None


@dataclass
class CacheMetrics:
    """Ray Serve's multiplexing metrics for one cache."""

    get_model_requests: int = 0  # serve_multiplexed_get_model_requests_counter
    loads: int = 0  # serve_multiplexed_models_load_counter
    load_failures: int = 0
    unloads: int = 0  # serve_multiplexed_models_unload_counter
    load_latency_ms: LatencyHistogram = field(default_factory=LatencyHistogram)
    unload_latency_ms: LatencyHistogram = field(default_factory=LatencyHistogram)
