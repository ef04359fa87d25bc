"""The command line: presets resolve, flags override them, the table and JSON come out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.simulation.__main__ import main
from router.simulation.plots import plotting_available


def test_small_run_writes_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    code = main(
        [
            "--preset", "uniform-fit",
            "--replicas", "2", "--capacity", "2", "--models", "4", "--requests", "300",
            "--concurrency", "4", "--policies", "modelplex,ray", "--measure-memory",
            "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    assert "modelplex" in table
    assert "Belady" in table
    report = json.loads(out.read_text())
    assert report["belady_loads"] == 4
    assert report["config"]["engine"]["replicas"] == 2
    modelplex = report["policies"][0]
    assert modelplex["policy"] == "modelplex"
    assert modelplex["loads"] == 4
    assert modelplex["view_bytes"] > 0
    assert report["min_model_requests"] == 20
    assert modelplex["loads_over_belady"] == 1.0
    assert modelplex["worst_model"] in {"m0", "m1", "m2", "m3"}
    assert modelplex["throughput_rps"] > 0


def test_unknown_policy_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "10", "--policies", "modelplex,nope"]) == 2
    assert "unknown policy" in capsys.readouterr().err


def test_max_concurrent_loads_reaches_the_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    code = main(
        [
            "--replicas", "2", "--capacity", "3", "--models", "20", "--requests", "200",
            "--policies", "modelplex", "--max-concurrent-loads", "1", "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["config"]["engine"]["max_concurrent_loads"] == 1
    assert report["policies"][0]["completed"] == 200


def test_max_concurrent_loads_below_one_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "10", "--max-concurrent-loads", "0"]) == 2
    assert "max_concurrent_loads" in capsys.readouterr().err


def test_plot_runs_the_patience_frontier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    argv = ["--replicas", "2", "--capacity", "2", "--models", "6", "--requests", "200"]
    argv += ["--concurrency", "4", "--load-s", "0.1", "--infer-s", "0.01"]
    argv += ["--policies", "modelplex,ray", "--sweep-capacities", "1,2"]
    argv += ["--sweep-load-factors", "1", "--plot", str(tmp_path / "charts"), "--json", str(out)]
    code = main(argv)
    if not plotting_available():
        assert code == 2
        assert "needs matplotlib" in capsys.readouterr().err
        return
    assert code == 0
    assert "loads vs p99 frontier" in capsys.readouterr().out
    frontier = json.loads(out.read_text())["sweeps"]["frontier"]
    assert [p["patience"] for p in frontier["sweep"]] == [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0]
    assert frontier["default"]["label"] == "default"
    assert frontier["ray"]["label"] == "ray (simulated)"
    assert (tmp_path / "charts" / "loads_vs_p99_frontier.png").is_file()
