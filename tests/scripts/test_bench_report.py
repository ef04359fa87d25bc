"""The bench's summaries, tables and targets, on hand-made load-generator records (no cluster)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from _bench_report import format_workload, frontier_point, reference_point, summarize_workload
from _bench_scenarios import (
    RAY_REFERENCE,
    SCENARIO_ALL,
    Goal,
    Target,
    reference_applies,
    scenario_config,
    targets,
)

from router.simulation.tails import MIN_MODEL_REQUESTS


def _raw(latencies_ms: list[float], *, status: list[int] | None = None) -> dict[str, Any]:
    n = len(latencies_ms)
    return {
        "elapsed_s": 2.0,
        "start_us": [1000 * i for i in range(n)],
        "latency_us": [int(1000 * ms) for ms in latencies_ms],
        "status": status or [200] * n,
        "replica": ["replica-1"] * n,
        "cold": [1] + [0] * (n - 1),
        "cpu_util": {},
    }


def _summary(scenario: str = "custom", **overrides: Any) -> tuple[Any, dict[str, Any]]:
    config = scenario_config(scenario, {"replicas": 1, "capacity": 2} | overrides)
    sequence = ["m1"] * 30 + ["m2"] * 30 + ["m3"] * 5
    latencies = [5.0] * 30 + [5.0] * 27 + [400.0] * 3 + [900.0] * 5  # m3: too few to count
    return config, summarize_workload(config, sequence, _raw(latencies), {"replica-1": 4})


def test_workload_summary_carries_the_three_axes() -> None:
    _, summary = _summary()
    assert summary["loads"] == 4
    assert summary["belady_loads"] == 3
    assert summary["loads_over_belady"] == pytest.approx(4 / 3)
    assert summary["throughput_rps"] == 65 / 2.0  # answered with 2xx per wall second
    assert summary["p50_ms"] == 5.0
    assert summary["p99_ms"] == 900.0
    assert summary["p999_ms"] == 900.0
    assert summary["worst_model"] == "m2"  # m3 is slower but has under MIN_MODEL_REQUESTS
    assert summary["worst_model_p99_ms"] == 400.0
    assert summary["worst_model_requests"] == 30
    assert summary["min_model_requests"] == MIN_MODEL_REQUESTS
    assert summary["latency_ms"]["p999"] == 900.0


def test_throughput_counts_only_successful_answers() -> None:
    config = scenario_config("custom", {"replicas": 1, "capacity": 1})
    raw = _raw([1.0] * 4, status=[200, 503, 200, 0])
    summary = summarize_workload(config, ["m1"] * 4, raw, {"replica-1": 1})
    assert summary["answered"] == 3
    assert summary["succeeded"] == 2
    assert summary["throughput_rps"] == 1.0
    assert summary["worst_model"] is None  # 3 answers: under the threshold


def test_the_ray_row_is_printed_above_the_measured_row() -> None:
    config, summary = _summary("zipf1.1")
    text = format_workload(config, summary, targets(config, summary))
    lines = text.splitlines()
    header = lines[1]
    for column in ("req/s", "p50 ms", "p99 ms", "p99.9 ms", "worst p99 ms", "loads", "x Belady"):
        assert column in header, column
    ray = next(i for i, line in enumerate(lines) if "Ray Serve 2.60" in line)
    measured = next(i for i, line in enumerate(lines) if line.strip().startswith("modelplex"))
    assert ray < measured
    assert "673" in lines[ray]
    assert "1.73" in lines[ray]
    assert "(m2)" in lines[measured]
    assert f">= {MIN_MODEL_REQUESTS} answered requests" in text
    assert "* measured with the preset's settings" in text  # replicas=1 is not the preset


def test_the_reference_applies_to_the_preset_only() -> None:
    assert reference_applies(scenario_config("zipf1.1", {}))
    assert reference_applies(scenario_config("zipf1.1", {"patience": 3.0}))
    assert not reference_applies(scenario_config("zipf1.1", {"seed": 0}))
    assert not reference_applies(scenario_config("custom", {}))


def test_presets_default_to_seed_1_and_a_flag_wins() -> None:
    for name in ("uniform-fit", "zipf1.1", "zipf0.8", "hot-model"):
        assert scenario_config(name, {}).seed == 1
        assert scenario_config(name, {"seed": 7}).seed == 7
    assert scenario_config("custom", {}).seed == 0


def test_hot_model_scenario() -> None:
    config = scenario_config("hot-model", {})
    assert "hot-model" in SCENARIO_ALL
    assert (config.models, config.concurrency, config.replicas) == (1, 32, 4)
    found = {t.name: t for t in targets(config, {"loads": 4, "p99_ms": 119.0})}
    assert found["model loads"].verdict == "PASS"
    assert found["p99"].verdict == "PASS"
    found = {t.name: t for t in targets(config, {"loads": 5, "p99_ms": 121.0})}
    assert found["model loads"].verdict == "MISS"
    assert found["p99"].verdict == "MISS"


@pytest.mark.parametrize(
    ("scenario", "throughput", "p99"), [("zipf1.1", 152.0, 336.0), ("zipf0.8", 88.0, 379.0)]
)
def test_zipf_targets_judge_all_three_axes(scenario: str, throughput: float, p99: float) -> None:
    config = scenario_config(scenario, {})
    summary = {"loads_over_belady": 1.2, "throughput_rps": throughput, "p99_ms": p99}
    found = targets(config, summary)
    assert [t.as_dict()["target"] for t in found] == [
        "<= 1.2",
        f">= {throughput:g} req/s",
        f"<= {p99:g} ms",
    ]
    assert all(t.verdict == "PASS" for t in found)
    worse = {"loads_over_belady": 1.21, "throughput_rps": throughput - 1, "p99_ms": p99 + 1}
    assert all(t.verdict == "MISS" for t in targets(config, worse))
    reference = RAY_REFERENCE[scenario]
    assert (throughput, p99) == (2 * (reference.throughput_rps or 0), (reference.p99_ms or 0) // 2)


def test_uniform_fit_wants_exactly_one_load_per_model() -> None:
    config = scenario_config("uniform-fit", {})
    exact = targets(config, {"loads": 12, "p99_after_warmup_ms": 19.9})
    assert [t.verdict for t in exact] == ["PASS", "PASS"]
    assert exact[0].as_dict()["target"] == "== 12"
    over = targets(config, {"loads": 13, "p99_after_warmup_ms": 20.0})
    assert [t.verdict for t in over] == ["MISS", "MISS"]


def test_a_missing_figure_has_no_verdict() -> None:
    assert Target("p99", float("nan"), 1.0, Goal.AT_MOST).verdict == "n/a"
    assert Target("p99", None, 1.0, Goal.AT_MOST).verdict == "n/a"


def test_a_run_and_the_reference_become_frontier_points() -> None:
    _, summary = _summary()
    point = frontier_point("patience sweep", summary, 2.0)
    assert (point.loads, point.patience) == (4, 2.0)
    assert point.loads_over_belady == summary["loads_over_belady"]
    assert (point.p99_ms, point.throughput_rps) == (900.0, summary["throughput_rps"])
    assert point.worst_model_p99_ms == 400.0
    ray = reference_point(scenario_config("zipf0.8", {}))
    assert ray is not None
    assert ray.label == "Ray Serve 2.60 (reference)"
    assert (ray.loads_over_belady, ray.p99_ms, ray.throughput_rps) == (1.28, 758, 44)
    elsewhere = reference_point(scenario_config("zipf0.8", {"requests": 100}))
    assert elsewhere is not None
    assert elsewhere.label.endswith("(preset's settings)")
    assert reference_point(scenario_config("custom", {})) is None
    assert reference_point(scenario_config("hot-model", {})) is None


def test_a_run_without_a_belady_ratio_is_not_drawn() -> None:
    _, summary = _summary()
    point = frontier_point("default", summary | {"loads_over_belady": float("nan")}, None)
    assert point.loads_over_belady is None
    assert not point.drawable
