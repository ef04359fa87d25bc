"""What a simulation run reports: per-policy summaries, the Belady bound, a table and JSON.

A `PolicySummary` is computed from the engine's `RunStats`; a `Report` gathers the summaries
of every policy on one workload with the numbers that belong to the workload (distinct models,
the Belady bound for one cache of replicas x capacity). Every row carries the three axes a
placement is judged on: loads against the bound, throughput (answered requests per simulated
second) and the latency tail (p50, p99, p99.9 and the worst model's p99, from
`router.simulation.tails`). The text table and the JSON carry the same numbers.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from router.simulation.engine import RunStats
from router.simulation.tails import MIN_MODEL_REQUESTS, percentile, tails

__all__ = ["PolicySummary", "Report", "deep_sizeof", "summarize"]


@dataclass(frozen=True, kw_only=True, slots=True)
class PolicySummary:
    policy: str
    requests: int
    completed: int
    rejected: int
    timed_out: int
    loads: int
    hit_ratio: float  # answered requests whose model was resident on arrival at the replica
    loads_over_belady: float | None
    throughput_rps: float  # answered requests per simulated second
    p50_ms: float
    p99_ms: float
    p999_ms: float
    worst_model_p99_ms: float | None  # the largest per-model p99 (models with enough answers)
    worst_model: str | None
    worst_model_requests: int  # answered requests of `worst_model`
    p99_second_half_ms: float  # requests that arrived in the second half: after warm-up
    mean_ms: float
    imbalance: float  # max / mean requests per replica
    max_copies: int
    evictions: int
    hint_evictions: int
    decisions: int
    waits: int
    decisions_per_s: float  # policy calls per wall second spent in choose + dispatch
    sim_requests_per_wall_s: float  # the simulator's speed, not the cluster's throughput
    wall_s: float
    sim_time_s: float
    max_queued: int
    view_bytes: int | None = None


@dataclass(kw_only=True, slots=True)
class Report:
    config: dict[str, Any]
    distinct_models: int
    cluster_slots: int
    belady_loads: int
    min_model_requests: int = MIN_MODEL_REQUESTS  # a model's answers to count for worst p99
    policies: list[PolicySummary] = field(default_factory=list)
    sweeps: dict[str, Any] = field(default_factory=dict)
    peak_rss_mb: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    def table(self) -> str:
        header = (
            f"{'policy':<16}{'loads':>8}{'/belady':>8}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'p99.9 ms':>10}{'worst p99':>10} {'(model)':<9}{'p99 2nd':>9}{'hit%':>6}"
            f"{'imbal':>6}{'copies':>7}{'rej+to':>7}{'dec/s':>10}{'sim/wall':>9}{'wall s':>7}"
        )
        lines = [
            f"workload: {self.distinct_models} distinct models; Belady bound for one cache of "
            f"{self.cluster_slots} slots: {self.belady_loads} loads",
            header,
            "-" * len(header),
        ]
        for s in self.policies:
            lines.append(
                f"{s.policy:<16}{s.loads:>8}{_fixed(s.loads_over_belady, 2):>8}"
                f"{s.throughput_rps:>8.1f}{s.p50_ms:>9.1f}{s.p99_ms:>9.1f}{s.p999_ms:>10.1f}"
                f"{_fixed(s.worst_model_p99_ms, 1):>10} {_named(s.worst_model):<9}"
                f"{s.p99_second_half_ms:>9.1f}{100 * s.hit_ratio:>6.1f}"
                f"{s.imbalance:>6.2f}{s.max_copies:>7}"
                f"{s.rejected + s.timed_out:>7}{s.decisions_per_s:>10.0f}"
                f"{s.sim_requests_per_wall_s:>9.0f}{s.wall_s:>7.2f}"
            )
        lines += [
            "req/s: answered requests per simulated second. Latencies are end to end, queueing "
            "included; p99 2nd: of the requests",
            "that arrived in the second half. worst p99: the largest per-model p99 among models "
            f"with >= {self.min_model_requests} answered requests.",
            "sim/wall: simulated requests per wall second (the simulator's speed).",
        ]
        for s in self.policies:
            if s.view_bytes is not None:
                lines.append(f"{s.policy}: router view at the end {s.view_bytes / 1e6:.1f} MB")
        if self.peak_rss_mb is not None:
            lines.append(f"peak RSS of the simulator process: {self.peak_rss_mb:.0f} MB")
        return "\n".join(lines)


def _fixed(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _named(model: str | None) -> str:
    return "-" if model is None else f"({model})"


def _ms(seconds: float) -> float:
    """Milliseconds, or 0 for a run that answered nothing (the table and JSON stay numeric)."""
    return 0.0 if math.isnan(seconds) else 1000 * seconds


def _second_half(stats: RunStats) -> list[float]:
    """Latencies of the requests that arrived in the second half of the simulated run."""
    half = stats.sim_time_s / 2
    return sorted(
        latency
        for latency, arrived in zip(stats.latencies, stats.arrivals, strict=True)
        if arrived >= half
    )


def summarize(
    stats: RunStats,
    *,
    belady_loads: int,
    answered_models: Sequence[str] | None = None,
    measure_memory: bool = False,
) -> PolicySummary:
    """The row of one policy. `answered_models[i]` is the model of the request answered in
    `stats.latencies[i]` (by default the engine's record of it); without any, the row has no
    worst model."""
    if answered_models is None:
        answered_models = stats.answered_models or None
    run = tails(stats.latencies, answered_models)
    worst = run.worst_model
    per_replica = stats.per_replica
    mean_per_replica = sum(per_replica) / len(per_replica) if per_replica else 0.0
    latencies = stats.latencies
    return PolicySummary(
        policy=stats.policy,
        requests=stats.requests,
        completed=stats.completed,
        rejected=stats.rejected,
        timed_out=stats.timed_out,
        loads=stats.loads,
        hit_ratio=stats.hits / stats.completed if stats.completed else 0.0,
        loads_over_belady=stats.loads / belady_loads if belady_loads else None,
        throughput_rps=stats.completed / stats.sim_time_s if stats.sim_time_s else 0.0,
        p50_ms=_ms(run.p50),
        p99_ms=_ms(run.p99),
        p999_ms=_ms(run.p999),
        worst_model_p99_ms=None if worst is None else 1000 * worst.p99,
        worst_model=None if worst is None else worst.model,
        worst_model_requests=0 if worst is None else worst.requests,
        p99_second_half_ms=_ms(percentile(_second_half(stats), 0.99)),
        mean_ms=1000 * sum(latencies) / len(latencies) if latencies else 0.0,
        imbalance=max(per_replica) / mean_per_replica if mean_per_replica else 0.0,
        max_copies=stats.max_copies,
        evictions=stats.evictions,
        hint_evictions=stats.hint_evictions,
        decisions=stats.decisions,
        waits=stats.waits,
        decisions_per_s=stats.decisions / stats.decide_wall_s if stats.decide_wall_s else 0.0,
        sim_requests_per_wall_s=stats.requests / stats.wall_s if stats.wall_s else 0.0,
        wall_s=stats.wall_s,
        sim_time_s=stats.sim_time_s,
        max_queued=stats.max_queued,
        view_bytes=deep_sizeof(stats.view) if measure_memory and stats.view else None,
    )


def deep_sizeof(root: object) -> int:
    """Bytes held by `root` and everything it references (each object counted once)."""
    seen: set[int] = set()
    stack: list[object] = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, bool | int | float | type):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif isinstance(obj, str | bytes):
            continue
        else:
            if hasattr(obj, "__dict__"):
                stack.append(vars(obj))
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if hasattr(obj, slot):
                        stack.append(getattr(obj, slot))
    return total
