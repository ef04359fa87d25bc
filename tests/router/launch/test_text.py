"""What `modelplex status` and the launcher read from the router's `/-/status` document."""

from __future__ import annotations

from common.status import ReplicaStatusDocument, RouterStatusDocument
from router.launch._text import format_status, healthy_replicas, status_document


def replica(
    replica_id: str, state: str, models: list[tuple[str, float, int]]
) -> ReplicaStatusDocument:
    return {
        "replica_id": replica_id,
        "url": f"http://127.0.0.1:900{replica_id[-1]}",
        "incarnation": "i",
        "state": state,
        "in_flight": 1,
        "reported_in_flight": 1,
        "capacity": 3,
        "max_ongoing_requests": 8,
        "models": [{"model_id": m, "idle_s": idle, "in_use": in_use} for m, idle, in_use in models],
        "loading": ["c"],
        "last_report_age_s": 0.1,
        "load_ms_avg": None,
    }


STATUS: RouterStatusDocument = {
    "router": {
        "url": "http://127.0.0.1:8000",
        "started_at": 0.0,
        "queued": 2,
        "counters": {"requests": 5},
    },
    "replicas": [
        replica("replica-1", "healthy", [("b", 1.0, 1), ("a", 9.0, 0)]),
        replica("replica-2", "down", []),
    ],
}


def test_the_table_shows_each_replica_with_its_models_lru_first() -> None:
    lines = format_status(STATUS).splitlines()
    assert lines[0] == "router http://127.0.0.1:8000: 1/2 replicas healthy"
    assert lines[1].split() == [
        *("REPLICA", "STATE", "IN-FLIGHT", "MODELS", "(LRU", "->", "MRU,", "*", "in", "use)"),
        *("LOADING", "URL"),
    ]
    assert lines[2].split() == [
        *("replica-1", "healthy", "1/8", "a,", "b*", "(2/3)", "c", "http://127.0.0.1:9001"),
    ]
    assert lines[3].split()[:4] == ["replica-2", "down", "1/8", "-"]
    assert lines[4:] == ["counters: requests=5", "queued: 2"]


def test_healthy_replicas_maps_ids_to_urls() -> None:
    assert healthy_replicas(STATUS) == {"replica-1": "http://127.0.0.1:9001"}
    assert healthy_replicas(None) == {}


def test_only_a_status_shaped_document_is_read_as_one() -> None:
    assert status_document(dict(STATUS)) == STATUS
    for data in (None, [], {"replicas": []}, {"router": {}, "replicas": {}}):
        assert status_document(data) is None
