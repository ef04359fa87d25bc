"""`scripts/bench.py` end to end on a tiny cluster: it runs, and its JSON has the fields.

A smoke test of the benchmark's plumbing (cluster start, load generator, metrics scrape,
Belady bound, JSON); it asserts no speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_writes_the_fields(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--scenario", "custom"]
    argv += ["--replicas", "2", "--capacity", "2", "--models", "3", "--requests", "20"]
    argv += ["--concurrency", "4", "--load-s", "0.01", "--infer-s", "0", "--json", str(out)]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "throughput" in completed.stdout

    document = json.loads(out.read_text())
    (run,) = document["runs"]
    assert run["scenario"] == "custom"
    assert run["config"]["replicas"] == 2
    summary = run["summary"]
    for field in (
        "throughput_rps",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "worst_model_p99_ms",
        "worst_model",
        "min_model_requests",
        "latency_ms",
        "p99_after_warmup_ms",
        "p99_after_last_load_ms",
        "loads",
        "cold_answers",
        "belady_loads",
        "loads_over_belady",
        "requests_per_replica",
        "errors_by_status",
    ):
        assert field in summary, field
    assert set(summary["latency_ms"]) >= {"p50", "p90", "p99", "p999"}
    assert summary["requests"] == 20
    assert sum(summary["requests_per_replica"].values()) == 20
    assert summary["errors_by_status"] == {}
    assert 3 >= summary["belady_loads"] >= 1
    assert summary["loads"] >= summary["belady_loads"]
    assert summary["cold_answers"] >= 1
