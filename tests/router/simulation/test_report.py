"""The simulator's report: every row carries loads / Belady, throughput and the latency tail."""

from __future__ import annotations

import json
from array import array

from router.simulation.engine import EngineConfig, RunStats
from router.simulation.report import Report, summarize
from router.simulation.runner import Scenario, run
from router.simulation.tails import MIN_MODEL_REQUESTS
from router.simulation.workloads import Dist, DistKind, Popularity, WorkloadSpec


def _stats(latencies: list[float], *, sim_time_s: float) -> RunStats:
    stats = RunStats("modelplex", len(latencies), per_replica=[len(latencies)])
    stats.completed = len(latencies)
    stats.loads = 6
    stats.latencies = array("d", latencies)
    stats.arrivals = array("d", [0.0] * len(latencies))
    stats.sim_time_s = sim_time_s
    stats.wall_s = 0.5
    return stats


def test_summary_has_the_three_axes() -> None:
    latencies = [0.010] * 30 + [0.010] * 25 + [1.0] * 5  # 60 answers: m1 fast, m2 slow at p99
    models = ["m1"] * 30 + ["m2"] * 30
    summary = summarize(_stats(latencies, sim_time_s=2.0), belady_loads=4, answered_models=models)
    assert summary.loads == 6
    assert summary.loads_over_belady == 1.5
    assert summary.throughput_rps == 30.0  # 60 answered in 2 simulated seconds
    assert summary.sim_requests_per_wall_s == 120.0  # 60 requests in 0.5 wall seconds
    assert summary.p50_ms == 10.0
    assert summary.p99_ms == 1000.0
    assert summary.p999_ms == 1000.0
    assert summary.worst_model == "m2"
    assert summary.worst_model_p99_ms == 1000.0
    assert summary.worst_model_requests == 30


def test_without_answered_models_there_is_no_worst_model() -> None:
    summary = summarize(_stats([0.1] * 40, sim_time_s=1.0), belady_loads=0)
    assert summary.worst_model is None
    assert summary.worst_model_p99_ms is None
    assert summary.loads_over_belady is None


def test_a_run_that_answered_nothing_stays_numeric() -> None:
    summary = summarize(_stats([], sim_time_s=0.0), belady_loads=1, answered_models=[])
    assert (summary.throughput_rps, summary.p50_ms, summary.p99_ms, summary.p999_ms) == (
        0.0,
        0.0,
        0.0,
        0.0,
    )
    assert summary.worst_model is None


def test_table_and_json_carry_the_columns() -> None:
    models = ["m1"] * MIN_MODEL_REQUESTS
    summary = summarize(
        _stats([0.02] * MIN_MODEL_REQUESTS, sim_time_s=1.0),
        belady_loads=3,
        answered_models=models,
    )
    report = Report(config={}, distinct_models=1, cluster_slots=4, belady_loads=3)
    report.policies.append(summary)
    table = report.table()
    header = table.splitlines()[1]
    for column in ("loads", "/belady", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "worst p99"):
        assert column in header, column
    assert "sim/wall" in header
    assert "(m1)" in table
    assert f">= {MIN_MODEL_REQUESTS} answered requests" in table
    document = json.loads(report.to_json())
    assert document["min_model_requests"] == MIN_MODEL_REQUESTS
    (row,) = document["policies"]
    for key in (
        "throughput_rps",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "worst_model_p99_ms",
        "worst_model",
        "loads",
        "loads_over_belady",
        "sim_requests_per_wall_s",
    ):
        assert key in row, key
    assert row["worst_model"] == "m1"
    assert row["loads_over_belady"] == 2.0


def test_a_run_names_the_worst_model_of_every_policy() -> None:
    scenario = Scenario(
        engine=EngineConfig(replicas=2, capacity=2, load=Dist(DistKind.CONST, 0.1), concurrency=4),
        workload=WorkloadSpec(
            requests=600,
            models=6,
            popularity=Popularity.ZIPF,
            infer=Dist(DistKind.CONST, 0.01),
            seed=3,
        ),
        policies=("modelplex", "ray"),
    )
    report = run(scenario)
    for summary in report.policies:
        assert summary.completed == 600
        assert summary.worst_model is not None
        assert summary.worst_model_requests >= MIN_MODEL_REQUESTS
        assert summary.worst_model_p99_ms is not None
        assert summary.p50_ms <= summary.p99_ms <= summary.p999_ms
        assert summary.throughput_rps > 0
