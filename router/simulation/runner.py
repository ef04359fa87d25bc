"""Runs a scenario: one workload, every requested policy on it, the Belady bound, the sweeps.

A `Scenario` is everything the command line describes. `run` generates the workload once and
replays it through a fresh view, fresh simulated replicas and a fresh policy per policy name,
so every policy sees the same request sequence. The sweeps re-run the scenario over cluster
capacities (loads against the Belady curve), offered loads (p99 latency) and the modelplex
policy's patience (the loads-versus-p99 frontier, beside its default and Ray's) for the charts.
"""

from __future__ import annotations

import dataclasses
import enum
import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from router.policy import AffinityPolicy, ModelplexPolicy, Policy
from router.simulation.baselines import (
    ConsistentHashPolicy,
    RandomPolicy,
    RayPolicy,
    RoundRobinPolicy,
)
from router.simulation.belady import belady_misses
from router.simulation.engine import EngineConfig, simulate
from router.simulation.frontier import PATIENCE_SWEEP, Frontier, FrontierPoint
from router.simulation.report import PolicySummary, Report, summarize
from router.simulation.workloads import Arrival, WorkloadSpec, generate

__all__ = [
    "EXTRA_POLICIES",
    "POLICY_NAMES",
    "Scenario",
    "make_policy",
    "run",
    "sweep_capacity",
    "sweep_load",
    "sweep_patience",
]

POLICY_NAMES: tuple[str, ...] = ("modelplex", "ray", "random", "round_robin", "consistent_hash")
EXTRA_POLICIES: tuple[str, ...] = ("affinity",)  # policy v1, on request

Progress = Callable[[str], None]


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    engine: EngineConfig
    workload: WorkloadSpec
    policies: tuple[str, ...] = POLICY_NAMES
    ray_matching_timeout_s: float = 1.0
    ray_model_ids_delay_s: float = 0.1
    measure_memory: bool = False


def make_policy(name: str, scenario: Scenario) -> Policy:
    """A fresh policy object; `modelplex` is the live router's, `affinity` its v1."""
    seed = scenario.engine.seed
    if name == "modelplex":
        return ModelplexPolicy(seed=seed)
    if name == "affinity":
        return AffinityPolicy()
    if name == "ray":
        return RayPolicy(
            seed=seed,
            matching_timeout_s=scenario.ray_matching_timeout_s,
            model_ids_delay_s=scenario.ray_model_ids_delay_s,
        )
    if name == "random":
        return RandomPolicy(seed=seed)
    if name == "round_robin":
        return RoundRobinPolicy()
    if name == "consistent_hash":
        return ConsistentHashPolicy()
    known = ", ".join(POLICY_NAMES + EXTRA_POLICIES)
    raise ValueError(f"unknown policy {name!r}; choose from {known}")


def _quiet(message: str) -> None:
    del message


def run(scenario: Scenario, *, progress: Progress = _quiet) -> Report:
    """Every policy of `scenario` on its workload, with the workload's Belady bound."""
    for name in scenario.policies:
        make_policy(name, scenario)  # fail on a bad name before the long part
    workload = generate(scenario.workload)
    slots = scenario.engine.replicas * scenario.engine.capacity
    progress(f"workload: {len(workload.model_ids)} requests, {workload.distinct_models} models")
    bound = belady_misses(workload.model_ids, slots)
    report = Report(
        config=_describe(scenario),
        distinct_models=workload.distinct_models,
        cluster_slots=slots,
        belady_loads=bound,
    )
    for name in scenario.policies:
        policy = make_policy(name, scenario)
        stats = simulate(scenario.engine, workload, policy, name=name)
        summary = summarize(stats, belady_loads=bound, measure_memory=scenario.measure_memory)
        progress(
            f"{name}: {summary.loads} loads, {summary.throughput_rps:.0f} req/s, "
            f"p99 {summary.p99_ms:.0f} ms, {summary.wall_s:.1f} s wall"
        )
        report.policies.append(summary)
    report.peak_rss_mb = _peak_rss_mb()
    return report


def sweep_capacity(
    scenario: Scenario, capacities: Sequence[int], *, progress: Progress = _quiet
) -> dict[str, Any]:
    """Loads per policy, and the Belady bound, for each per-replica capacity."""
    workload = generate(scenario.workload)
    loads: dict[str, list[int]] = {name: [] for name in scenario.policies}
    belady: list[int] = []
    for capacity in capacities:
        engine = dataclasses.replace(scenario.engine, capacity=capacity)
        belady.append(belady_misses(workload.model_ids, engine.replicas * capacity))
        for name in scenario.policies:
            stats = simulate(engine, workload, make_policy(name, scenario), name=name)
            loads[name].append(stats.loads)
        progress(f"capacity {capacity}: Belady {belady[-1]}, " + _pairs(loads))
    slots = [scenario.engine.replicas * c for c in capacities]
    return {
        "cluster_slots": slots,
        "capacities": list(capacities),
        "belady": belady,
        "loads": loads,
    }


def sweep_load(
    scenario: Scenario, factors: Sequence[float], *, progress: Progress = _quiet
) -> dict[str, Any]:
    """p99 latency per policy as the offered load (concurrency, or rate) is scaled."""
    closed = scenario.workload.arrival is Arrival.CLOSED
    offered: list[float] = []
    p99: dict[str, list[float]] = {name: [] for name in scenario.policies}
    for factor in factors:
        engine, spec = scenario.engine, scenario.workload
        if closed:
            engine = dataclasses.replace(
                engine, concurrency=max(1, round(engine.concurrency * factor))
            )
            offered.append(engine.concurrency)
        else:
            spec = dataclasses.replace(spec, rate=spec.rate * factor)
            offered.append(spec.rate)
        workload = generate(spec)
        bound = 1  # unused: only latency is swept
        for name in scenario.policies:
            stats = simulate(engine, workload, make_policy(name, scenario), name=name)
            p99[name].append(summarize(stats, belady_loads=bound).p99_ms)
        progress(f"offered {offered[-1]:g}: " + _pairs(p99))
    axis = "concurrency (closed loop)" if closed else "arrival rate (requests/s)"
    return {"offered": offered, "axis": axis, "p99_ms": p99}


def sweep_patience(
    scenario: Scenario,
    patiences: Sequence[float] = PATIENCE_SWEEP,
    *,
    known: Sequence[PolicySummary] = (),
    progress: Progress = _quiet,
) -> Frontier:
    """The modelplex policy at each patience (load times), with its default settings, and the
    Ray baseline, on the scenario's workload. Rows of `known` (from `run` on the same
    scenario) named "modelplex" or "ray" are reused for the default and Ray's points."""
    workload = generate(scenario.workload)
    bound = belady_misses(workload.model_ids, scenario.engine.replicas * scenario.engine.capacity)
    rows = {summary.policy: summary for summary in known}

    def measure(name: str, policy: Policy) -> PolicySummary:
        return summarize(simulate(scenario.engine, workload, policy, name=name), belady_loads=bound)

    frontier = Frontier()
    for patience in patiences:
        policy = ModelplexPolicy(seed=scenario.engine.seed, patience=patience)
        point = _point("patience sweep", measure("modelplex", policy), patience)
        frontier.sweep.append(point)
        progress(
            f"patience {patience:g}: {point.loads} loads, p99 {point.p99_ms:.0f} ms, "
            f"{point.throughput_rps:.0f} req/s"
        )
    default = rows.get("modelplex") or measure("modelplex", make_policy("modelplex", scenario))
    frontier.default = _point("default", default, None)
    ray = rows.get("ray") or measure("ray", make_policy("ray", scenario))
    frontier.ray = _point("ray (simulated)", ray, None)
    return frontier


def _point(label: str, summary: PolicySummary, patience: float | None) -> FrontierPoint:
    return FrontierPoint(
        label=label,
        loads=summary.loads,
        loads_over_belady=summary.loads_over_belady,
        throughput_rps=summary.throughput_rps,
        p99_ms=summary.p99_ms,
        worst_model_p99_ms=summary.worst_model_p99_ms,
        patience=patience,
    )


def _pairs(series: dict[str, list[int]] | dict[str, list[float]]) -> str:
    return ", ".join(f"{name} {values[-1]:.0f}" for name, values in series.items())


def _describe(scenario: Scenario) -> dict[str, Any]:
    described: dict[str, Any] = _plain(dataclasses.asdict(scenario))
    return described


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
