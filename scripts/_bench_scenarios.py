"""The benchmark's scenarios: what each preset runs and the targets it is judged against.

A `RunConfig` is one run's knobs (cluster shape, deployment timings, workload, client).
`SCENARIOS` holds the presets of issues 3 and 4; `custom` is the flags alone. `targets` turns a
run's summary into (name, measured, target, PASS/MISS) rows — information for a reader, not a
test: nothing fails when a target is missed. `RAY_REFERENCE` is what Ray Serve 2.60 did on the
same presets on this machine; the workload targets ask for fewer loads than it, twice its
throughput and half its p99, all at once.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OVERHEAD_REFERENCE",
    "RAY_REFERENCE",
    "SCENARIOS",
    "SCENARIO_ALL",
    "Goal",
    "Reference",
    "RunConfig",
    "Target",
    "reference_applies",
    "scenario_config",
    "targets",
]


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
    routers: int = 1  # router processes sharing the router port (router.count)
    spread: str = "alternate"  # several routers: "alternate" over their own URLs, or "shared"
    placement_lease: str | None = None  # router.placement_lease_url (a Redis URL); None: off


SCENARIOS: dict[str, dict[str, Any]] = {
    "custom": {},
    "uniform-fit": {"models": 12, "popularity": "uniform", "requests": 3000},
    "zipf1.1": {"models": 100, "popularity": "zipf", "zipf_s": 1.1, "requests": 4000},
    "zipf0.8": {"models": 1000, "popularity": "zipf", "zipf_s": 0.8, "requests": 4000},
    "hot-model": {"models": 1, "popularity": "uniform", "requests": 4000, "concurrency": 32},
    # The Zipf presets with loads one at a time per replica, as Ray Serve's replicas run them.
    "zipf1.1-serial": {
        "models": 100,
        "popularity": "zipf",
        "zipf_s": 1.1,
        "requests": 4000,
        "max_concurrent_loads": 1,
    },
    "zipf0.8-serial": {
        "models": 1000,
        "popularity": "zipf",
        "zipf_s": 0.8,
        "requests": 4000,
        "max_concurrent_loads": 1,
    },
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
SCENARIO_ALL = (
    "uniform-fit",
    "zipf1.1",
    "zipf0.8",
    "zipf1.1-serial",
    "zipf0.8-serial",
    "hot-model",
    "overhead",
)


@dataclass(frozen=True)
class Reference:
    """What another system did on a preset's settings, for the table; None: not measured."""

    who: str
    loads: int | None = None
    loads_over_belady: float | None = None
    throughput_rps: float | None = None
    p99_ms: float | None = None


# Ray Serve 2.60 on this machine, 4 replicas x 3 slots, load 100 ms, inference 2 ms, c=16; the
# Zipf presets with 4,000 requests and seed 1.
RAY_REFERENCE: dict[str, Reference] = {
    "uniform-fit": Reference("Ray Serve 2.60", loads=623),
    "zipf1.1": Reference(
        "Ray Serve 2.60", loads=2003, loads_over_belady=1.73, throughput_rps=76.0, p99_ms=673.0
    ),
    "zipf0.8": Reference(
        "Ray Serve 2.60", loads=3565, loads_over_belady=1.28, throughput_rps=44.0, p99_ms=758.0
    ),
}
# Ray Serve's replicas load one model at a time: the same figures are its serial-load runs.
RAY_REFERENCE["zipf1.1-serial"] = RAY_REFERENCE["zipf1.1"]
RAY_REFERENCE["zipf0.8-serial"] = RAY_REFERENCE["zipf0.8"]
OVERHEAD_REFERENCE = "nginx: ~11,500 req/s, +0.08 ms; Ray Serve proxy: ~200 req/s, +6 ms"

_CLUSTER_BASE = {
    "replicas": 4,
    "capacity": 3,
    "load_s": 0.1,
    "infer_s": 0.002,
    "concurrency": 16,
    "seed": 1,  # the seed of the Ray Serve reference runs
}
# What a run must share with its preset for the preset's reference figures to compare.
_WORKLOAD_FIELDS = (
    "replicas",
    "capacity",
    "max_ongoing",
    "load_s",
    "infer_s",
    "models",
    "popularity",
    "zipf_s",
    "requests",
    "concurrency",
    "seed",
    "max_concurrent_loads",
)


def scenario_config(name: str, overrides: dict[str, Any]) -> RunConfig:
    """The preset `name` with the flags the user gave (`overrides`) on top."""
    preset = dict(SCENARIOS[name])
    if name not in ("custom", "overhead"):
        preset = _CLUSTER_BASE | preset
    return dataclasses.replace(RunConfig(scenario=name), **(preset | overrides))


def reference_applies(config: RunConfig) -> bool:
    """Whether `config` has reference figures and runs the workload they were measured on."""
    if config.scenario not in RAY_REFERENCE:
        return False
    preset = scenario_config(config.scenario, {})
    return all(getattr(config, f) == getattr(preset, f) for f in _WORKLOAD_FIELDS)


class Goal(enum.Enum):
    """How a measured figure must compare with its target."""

    AT_MOST = "<="
    BELOW = "<"
    AT_LEAST = ">="
    EXACTLY = "=="


_MEETS: dict[Goal, Callable[[float, float], bool]] = {
    Goal.AT_MOST: operator.le,
    Goal.BELOW: operator.lt,
    Goal.AT_LEAST: operator.ge,
    Goal.EXACTLY: operator.eq,
}


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    limit: float
    goal: Goal
    unit: str = ""

    @property
    def verdict(self) -> str:
        if self.measured is None or math.isnan(self.measured):
            return "n/a"
        return "PASS" if _MEETS[self.goal](self.measured, self.limit) else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": self.measured,
            "target": f"{self.goal.value} {self.limit:g}{self.unit}",
            "verdict": self.verdict,
        }


def targets(config: RunConfig, summary: dict[str, Any]) -> list[Target]:
    """The scenario's targets, evaluated on its summary; none for `custom`."""
    if config.scenario == "uniform-fit":
        return [
            Target("model loads", summary["loads"], config.models, Goal.EXACTLY),
            Target("p99 after warm-up", summary["p99_after_warmup_ms"], 20.0, Goal.BELOW, " ms"),
        ]
    if config.scenario in ("zipf1.1", "zipf0.8"):
        # Fewer loads than Ray Serve, twice its throughput, half its p99 (RAY_REFERENCE).
        throughput, p99 = {"zipf1.1": (152.0, 336.0), "zipf0.8": (88.0, 379.0)}[config.scenario]
        return [
            Target("loads / Belady", summary["loads_over_belady"], 1.2, Goal.AT_MOST),
            Target("throughput", summary["throughput_rps"], throughput, Goal.AT_LEAST, " req/s"),
            Target("p99", summary["p99_ms"], p99, Goal.AT_MOST, " ms"),
        ]
    if config.scenario in ("zipf1.1-serial", "zipf0.8-serial"):
        # Loads one at a time, as Ray Serve's: 1.1 x its throughput, 0.6 x its p99.
        ray = RAY_REFERENCE[config.scenario]
        assert ray.throughput_rps is not None
        assert ray.p99_ms is not None
        return [
            Target(
                "throughput",
                summary["throughput_rps"],
                round(1.1 * ray.throughput_rps, 1),
                Goal.AT_LEAST,
                " req/s",
            ),
            Target("p99", summary["p99_ms"], round(0.6 * ray.p99_ms, 1), Goal.AT_MOST, " ms"),
        ]
    if config.scenario == "hot-model":
        return [
            Target("model loads", summary["loads"], config.replicas, Goal.AT_MOST),
            Target("p99", summary["p99_ms"], 120.0, Goal.AT_MOST, " ms"),
        ]
    if config.scenario == "overhead":
        return [
            Target(
                "router added median", summary["router_added_median_ms"], 0.5, Goal.AT_MOST, " ms"
            ),
            Target(
                "router / nginx throughput", summary["router_over_nginx_rps"], 0.4, Goal.AT_LEAST
            ),
        ]
    return []
