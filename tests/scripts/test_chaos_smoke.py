"""`scripts/chaos.py` end to end, briefly: a real `modelplex up`, a replica killed, one
stopped, the router restarted, and a JSON document with the fields; and its counting rules
(`_chaos_report.summarize`) on made-up outcomes.

A smoke test of the benchmark's plumbing; it asserts no success rate and no speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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


def test_the_counting_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from _chaos_cluster import ProcessSample
    from _chaos_faults import Fault
    from _chaos_load import Outcome
    from _chaos_report import format_table, summarize

    def outcome(start: float, end: float, kind: str, **fields: Any) -> Outcome:
        defaults: dict[str, Any] = {"model_id": "model-0", "shape": "get", "idempotent": True}
        defaults |= {"expected": False, "replica": "replica-2" if kind == "ok" else ""}
        return Outcome(start=start, end=end, kind=kind, **(defaults | fields))

    outcomes = [
        outcome(0.5, 1.0, "ok"),  # in the warm-up: not counted
        outcome(10.0, 10.2, "ok"),
        outcome(11.9, 12.1, "truncated_stream", shape="stream"),  # in flight at the kill
        outcome(11.95, 12.3, "ok", replica="replica-1"),  # answered by the target
        outcome(13.5, 13.6, "502:replica_failed", shape="post", idempotent=False),  # grace
        outcome(20.0, 20.1, "client_timeout"),  # outside every window
        outcome(21.0, 21.1, "500:deployment_error", model_id="fail-load-1", expected=True),
        outcome(22.0, 22.1, "ok", model_id="fail-load-2", expected=True),
    ]
    kill = Fault(kind="kill_replica", instant=12.0, ended=12.8, wall_time="t", target="replica-1")
    skipped = Fault(kind="scale", instant=25.0, ended=25.0, wall_time="t", skipped=True)
    samples = [ProcessSample(pid=7, rss_kb=100, fds=9), ProcessSample(pid=8, rss_kb=90, fds=12)]
    doc = summarize(
        outcomes,
        [kill, skipped],
        measured_from=5.0,
        duration_s=30.0,
        lifetimes={1.0: {"retries": 3}, 2.0: {"retries": 2, "no_replica": 1}},
        samples=samples,
    )

    assert doc["sent"] == 7
    assert doc["succeeded"] == 2
    assert doc["failed"] == {
        "truncated_stream": 1,
        "502:replica_failed": 1,
        "client_timeout": 1,
        "unexpected_success": 1,
    }
    assert doc["expected_failures"] == 1
    assert doc["idempotent_failed"] == 2
    assert doc["unattributed_failures"] == {"client_timeout": 1}
    kill_doc, skipped_doc = doc["faults"]
    assert kill_doc["failures_in_window"] == {"truncated_stream": 1, "502:replica_failed": 1}
    assert kill_doc["in_flight"] == {
        "requests": 2,
        "succeeded_on_target": 1,
        "succeeded_elsewhere": 0,
        "failed": {"truncated_stream": 1},
    }
    assert skipped_doc["skipped"]
    assert doc["retries"] == 5
    assert (doc["router_rss_kb_start"], doc["router_rss_kb_end"], doc["router_rss_kb_max"]) == (
        100,
        90,
        100,
    )
    assert (doc["router_fds_start"], doc["router_fds_end"], doc["router_fds_max"]) == (9, 12, 12)
    assert doc["router_pids"] == [7, 8]
    assert "kill_replica" in format_table(doc)
