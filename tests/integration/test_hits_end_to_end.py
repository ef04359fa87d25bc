"""End to end, as an operator sees it: a router and a replica as real processes
(`router.launch.LocalCluster`), N requests for one model, and the replica's hits for it.

The replica reports the hits and the router keeps them (`ModelCopy.hits`; the in-process test
in test_reporter.py reads them there), but neither `/-/status` on the router nor `/-/state`
on the replica shows them: this test fails where it reads them, until `/-/status` does.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

from router.launch import LocalCluster, wait_for

MODEL = "serve_multiplexed_model_id"
REQUESTS = 20
QUICK_DEPLOYMENT = {
    "max_num_models_per_replica": 2,
    "heartbeat_interval_s": 0.2,
    "heartbeat_timeout_s": 2.0,
    "graceful_shutdown_timeout_s": 10.0,
}


def ask(cluster: LocalCluster, model_id: str) -> str:
    request = urllib.request.Request(cluster.url + "/", headers={MODEL: model_id})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
        replica: str = answer.headers["x-modelplex-replica"]
        return replica


def test_after_n_requests_the_routers_status_shows_hits_close_to_n(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, num_replicas=1, deployment=QUICK_DEPLOYMENT) as cluster:
        served_by = {ask(cluster, "m") for _ in range(REQUESTS)}
        assert served_by == {"replica-1"}
        assert cluster.load_counts() == {"replica-1": 1}

        def shown() -> dict[str, Any]:
            """Model m on replica-1 as the router's /-/status shows it ({} while it does not)."""
            (replica,) = cluster.status()["replicas"]
            documents: list[dict[str, Any]] = [dict(m) for m in replica["models"]]
            return next((m for m in documents if m["model_id"] == "m"), {})

        wait_for(shown, 10.0, "the router to show m on replica-1")
        wait_for(
            lambda: abs(shown()["hits"] - REQUESTS) < 0.5,
            10.0,
            f"hits close to {REQUESTS}",
        )
