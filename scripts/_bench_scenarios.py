"""The benchmark's scenarios: what each preset runs and the targets it is judged against.

A `RunConfig` is one run's knobs (cluster shape, deployment timings, workload, client).
`SCENARIOS` holds the presets of issues 3 and 4; `custom` is the flags alone. `targets` turns a
run's summary into (name, measured, target, PASS/MISS) rows — information for a reader, not a
test: nothing fails when a target is missed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["SCENARIOS", "SCENARIO_ALL", "RunConfig", "Target", "scenario_config", "targets"]


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One benchmark run. `kind` is "workload" (a request sequence against N replicas) or
    "overhead" (the router against a direct connection and nginx, for a fixed duration)."""

    scenario: str = "custom"
    kind: str = "workload"
    replicas: int = 4
    capacity: int = 3
    max_ongoing: int = 8
    load_s: float = 0.1
    infer_s: float = 0.002
    models: int = 12
    popularity: str = "uniform"
    zipf_s: float = 1.1
    requests: int = 3000
    concurrency: int = 16
    seed: int = 0
    duration_s: float = 5.0
    warmup_s: float = 1.0
    patience: float | None = None  # router.popular_model_patience; None = the default
    max_concurrent_loads: int | None = None  # per replica; None = as many as slots


SCENARIOS: dict[str, dict[str, Any]] = {
    "custom": {},
    "uniform-fit": {"models": 12, "popularity": "uniform", "requests": 3000},
    "zipf1.1": {"models": 100, "popularity": "zipf", "zipf_s": 1.1, "requests": 4000},
    "zipf0.8": {"models": 1000, "popularity": "zipf", "zipf_s": 0.8, "requests": 4000},
    "overhead": {
        "kind": "overhead",
        "replicas": 1,
        "models": 1,
        "load_s": 0.0,
        "infer_s": 0.0,
        "concurrency": 32,
        "max_ongoing": 32,  # the 32 clients' requests all reach the replica, as through nginx
    },
}
SCENARIO_ALL = ("uniform-fit", "zipf1.1", "zipf0.8", "overhead")

# What Ray Serve 2.60 did on the same scenario, for the table.
RAY_REFERENCE = {
    "uniform-fit": "Ray Serve: 623 loads",
    "zipf1.1": "Ray Serve: 2,003 loads, 1.73 x Belady",
    "zipf0.8": "Ray Serve: 3,565 loads, 1.28 x Belady",
    "overhead": "nginx: ~11,500 req/s, +0.08 ms; Ray Serve proxy: ~200 req/s, +6 ms",
}

_CLUSTER_BASE = {"replicas": 4, "capacity": 3, "load_s": 0.1, "infer_s": 0.002, "concurrency": 16}


def scenario_config(name: str, overrides: dict[str, Any]) -> RunConfig:
    """The preset `name` with the flags the user gave (`overrides`) on top."""
    preset = dict(SCENARIOS[name])
    if name not in ("custom", "overhead"):
        preset = _CLUSTER_BASE | preset
    return dataclasses.replace(RunConfig(scenario=name), **(preset | overrides))


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    limit: float
    upper: bool  # True: measured must be <= limit; False: >= limit
    unit: str = ""

    @property
    def verdict(self) -> str:
        if self.measured is None or math.isnan(self.measured):
            return "n/a"
        ok = self.measured <= self.limit if self.upper else self.measured >= self.limit
        return "PASS" if ok else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": self.measured,
            "target": f"{'<=' if self.upper else '>='} {self.limit:g}{self.unit}",
            "verdict": self.verdict,
        }


def targets(config: RunConfig, summary: dict[str, Any]) -> list[Target]:
    """The scenario's targets, evaluated on its summary; none for `custom`."""
    if config.scenario == "uniform-fit":
        return [
            Target("model loads", summary["loads"], 2 * config.models, upper=True),
            Target("p99 after warm-up", summary["p99_after_warmup_ms"], 20.0, True, " ms"),
        ]
    if config.scenario == "zipf1.1":
        return [Target("loads / Belady", summary["loads_over_belady"], 1.3, upper=True)]
    if config.scenario == "zipf0.8":
        return [Target("loads / Belady", summary["loads_over_belady"], 1.15, upper=True)]
    if config.scenario == "overhead":
        return [
            Target("router added median", summary["router_added_median_ms"], 0.5, True, " ms"),
            Target("router / nginx throughput", summary["router_over_nginx_rps"], 0.4, False),
        ]
    return []
