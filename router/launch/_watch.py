"""`modelplex status --watch`: the rates between two looks at the router, kept pure.

A `Sample` is what one look saw: the router's event counters (`/-/status`) and the cumulative
buckets of its request-duration histogram (`/-/metrics`). `rates_line` compares two samples:
requests a second, loads a minute (cold dispatches and prefetches), the hit ratio (answers
that needed no load) and the p99 of the requests in between (the bucket bound it falls under).
A router that restarted in between starts its counters afresh: the newer sample counts alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Sample", "parse_duration_buckets", "rates_line"]

_DURATION = "modelplex_router_request_duration_seconds"


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # seconds, any clock
    counters: dict[str, int] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound (s) -> count


def parse_duration_buckets(metrics_text: str) -> dict[float, float]:
    """The request-duration histogram's cumulative buckets in a `/-/metrics` page."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != _DURATION:
            continue
        for sample in family.samples:
            if sample.name == f"{_DURATION}_bucket":
                buckets[float(sample.labels["le"])] = sample.value
    return buckets


def rates_line(before: Sample, after: Sample) -> str:
    seconds = max(1e-9, after.at - before.at)
    restarted = after.counters.get("requests", 0) < before.counters.get("requests", 0)
    base = Sample(at=before.at) if restarted else before

    def delta(key: str) -> int:
        return max(0, after.counters.get(key, 0) - base.counters.get(key, 0))

    requests = delta("requests")
    loads = delta("cold_dispatches") + delta("prefetches")
    hit = f"{1 - delta('cold_dispatches') / requests:.1%}" if requests else "-"
    p99 = _p99(base.buckets, after.buckets)
    shown = "-" if p99 is None else ("> 60 s" if math.isinf(p99) else f"<= {p99 * 1000:g} ms")
    return (
        f"{requests / seconds:.1f} req/s   {loads * 60 / seconds:.1f} loads/min   "
        f"hit ratio {hit}   p99 {shown}   (over the last {seconds:.1f} s)"
    )


def _p99(before: dict[float, float], after: dict[float, float]) -> float | None:
    deltas = sorted((bound, count - before.get(bound, 0.0)) for bound, count in after.items())
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return None
    for bound, count in deltas:
        if count >= 0.99 * total:
            return bound
    return math.inf
