"""The command line: presets resolve, flags override them, the table and JSON come out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.simulation.__main__ import main


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
