"""`scripts/chaos.py` end to end, briefly: a real `modelplex up`, a replica killed, one
stopped, the router restarted, and a JSON document with the fields.

A smoke test of the benchmark's plumbing; it asserts no success rate and no speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_chaos_runs_its_faults_and_writes_the_fields(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    argv = [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--duration", "8"]
    argv += ["--fault-every", "2", "--stop-s", "1", "--warmup", "1", "--replicas", "2"]
    argv += ["--concurrency", "8", "--json", str(out)]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "faults" in completed.stdout

    document = json.loads(out.read_text())
    for field in (
        "sent",
        "succeeded",
        "failed",
        "expected_failures",
        "idempotent_failed",
        "retries",
        "router_rss_kb_start",
        "router_rss_kb_end",
        "router_fds_start",
        "router_fds_end",
        "faults",
        "duration_s",
    ):
        assert field in document, field
    assert document["sent"] > 0
    assert isinstance(document["failed"], dict)
    accounted = document["succeeded"] + sum(document["failed"].values())
    assert accounted + document["expected_failures"] == document["sent"]
    cycle = ["kill_replica", "stop_replica", "restart_router", "fail_load", "scale"]
    kinds = [fault["kind"] for fault in document["faults"] if not fault["skipped"]]
    assert kinds
    assert kinds == cycle[: len(kinds)]
