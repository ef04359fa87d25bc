"""Latency tails of one run: percentiles, and the worst model's p99.

The simulator's report (`router.simulation.report`) and the live benchmark's
(`scripts/_bench_report.py`) both take their percentiles from here, so a p99 means the same in
both: the nearest-rank percentile of the answered requests' end-to-end latencies, queueing
included. The worst model's p99 is the largest per-model p99 among the models with at least
`MIN_MODEL_REQUESTS` answered requests; a model asked for less often is left out, because a
single slow load would decide its figure. Pure functions; latencies in any unit, the same unit
out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["MIN_MODEL_REQUESTS", "ModelTail", "Tails", "percentile", "tails", "worst_model_p99"]

MIN_MODEL_REQUESTS: Final = 20


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (`q` in [0, 1]) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[rank])


@dataclass(frozen=True, slots=True)
class ModelTail:
    """One model's p99 over its `requests` answered requests."""

    model: str
    p99: float
    requests: int


def worst_model_p99(
    model_ids: Sequence[str],
    latencies: Sequence[float],
    *,
    min_requests: int = MIN_MODEL_REQUESTS,
) -> ModelTail | None:
    """The model with the largest p99 among those with `min_requests` or more answers.

    `model_ids[i]` names the model of the request answered in `latencies[i]`. None when no
    model has enough answers. Equal p99s go to the model id that sorts first, so the answer
    does not depend on the order of the requests.
    """
    if len(model_ids) != len(latencies):
        raise ValueError(f"{len(model_ids)} model ids for {len(latencies)} latencies")
    per_model: dict[str, list[float]] = {}
    for model, latency in zip(model_ids, latencies, strict=True):
        per_model.setdefault(model, []).append(latency)
    worst: ModelTail | None = None
    for model in sorted(per_model):
        values = per_model[model]
        if len(values) < min_requests:
            continue
        values.sort()
        p99 = percentile(values, 0.99)
        if worst is None or p99 > worst.p99:
            worst = ModelTail(model, p99, len(values))
    return worst


@dataclass(frozen=True, slots=True)
class Tails:
    """p50, p99 and p99.9 of every answered request, and the worst model's p99."""

    p50: float
    p99: float
    p999: float
    worst_model: ModelTail | None
    min_model_requests: int = MIN_MODEL_REQUESTS


def tails(
    latencies: Sequence[float],
    model_ids: Sequence[str] | None,
    *,
    min_model_requests: int = MIN_MODEL_REQUESTS,
) -> Tails:
    """The tails of one run; without `model_ids` (one per latency) there is no worst model."""
    ordered = sorted(latencies)
    worst = (
        None
        if model_ids is None
        else worst_model_p99(model_ids, latencies, min_requests=min_model_requests)
    )
    return Tails(
        p50=percentile(ordered, 0.50),
        p99=percentile(ordered, 0.99),
        p999=percentile(ordered, 0.999),
        worst_model=worst,
        min_model_requests=min_model_requests,
    )
