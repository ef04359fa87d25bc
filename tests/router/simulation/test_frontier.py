"""The patience frontier: the sweep, the default and Ray's point, as a table, JSON and a chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.simulation.engine import EngineConfig
from router.simulation.frontier import PATIENCE_SWEEP, Frontier, FrontierPoint
from router.simulation.plots import PlotUnavailable, plotting_available, write_frontier
from router.simulation.runner import Scenario, run, sweep_patience
from router.simulation.workloads import Dist, DistKind, Popularity, WorkloadSpec


def _scenario() -> Scenario:
    return Scenario(
        engine=EngineConfig(replicas=2, capacity=2, load=Dist(DistKind.CONST, 0.1), concurrency=4),
        workload=WorkloadSpec(
            requests=400,
            models=8,
            popularity=Popularity.ZIPF,
            infer=Dist(DistKind.CONST, 0.01),
            seed=2,
        ),
        policies=("modelplex", "ray"),
    )


def _point(label: str, patience: float | None, x: float | None = 1.5) -> FrontierPoint:
    return FrontierPoint(
        label=label,
        loads=30,
        loads_over_belady=x,
        throughput_rps=100.0,
        p99_ms=250.0,
        worst_model_p99_ms=400.0,
        patience=patience,
    )


def test_the_sweep_covers_every_patience_then_the_default_and_ray() -> None:
    frontier = sweep_patience(_scenario())
    assert [p.patience for p in frontier.sweep] == list(PATIENCE_SWEEP)
    assert all(p.label == "patience sweep" for p in frontier.sweep)
    assert frontier.default is not None
    assert frontier.default.label == "default"
    assert frontier.default.patience is None
    assert frontier.ray is not None
    assert frontier.ray.label == "ray (simulated)"
    for point in frontier.points():
        assert point.drawable
        assert point.loads is not None
        assert point.loads_over_belady is not None
        assert point.loads_over_belady >= 1.0
        assert point.throughput_rps is not None
        assert point.throughput_rps > 0


def test_rows_of_the_same_run_are_reused() -> None:
    scenario = _scenario()
    report = run(scenario)
    frontier = sweep_patience(scenario, (1.0,), known=report.policies)
    modelplex, ray = report.policies
    assert frontier.default is not None
    assert frontier.ray is not None
    assert (frontier.default.loads, frontier.default.p99_ms) == (modelplex.loads, modelplex.p99_ms)
    assert (frontier.ray.loads, frontier.ray.throughput_rps) == (ray.loads, ray.throughput_rps)


def test_table_and_json() -> None:
    frontier = Frontier(
        sweep=[_point("patience sweep", 0.0), _point("patience sweep", 2.0)],
        default=_point("default", None),
        ray=_point("Ray Serve 2.60", None, x=None),
    )
    lines = frontier.table().splitlines()
    assert "x Belady" in lines[1]
    assert "req/s" in lines[1]
    assert "p99 ms" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["patience", "patience", "default", "Ray"]
    assert "default" in lines[4]
    assert lines[5].split()[3:6] == ["-", "30", "-"]  # no patience for Ray; x unknown
    document = json.loads(json.dumps(frontier.to_dict()))
    assert [p["patience"] for p in document["sweep"]] == [0.0, 2.0]
    assert set(document["default"]) >= {"loads_over_belady", "p99_ms", "throughput_rps"}
    assert document["ray"]["loads_over_belady"] is None


@pytest.mark.skipif(plotting_available(), reason="matplotlib is installed")
def test_drawing_without_matplotlib_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(PlotUnavailable, match=r"\[plot\]"):
        write_frontier(tmp_path / "f.png", Frontier(), title="t")


@pytest.mark.skipif(not plotting_available(), reason="matplotlib (the plot extra) is absent")
def test_drawing_writes_a_png(tmp_path: Path) -> None:
    frontier = Frontier(
        sweep=[_point("patience sweep", p) for p in (0.0, 1.0)],
        default=_point("default", None),
        ray=_point("Ray Serve 2.60", None, x=None),  # not drawable: left out, no error
    )
    path = write_frontier(tmp_path / "charts" / "frontier.png", frontier, title="t")
    assert path.read_bytes().startswith(b"\x89PNG")
