"""The admin API's pure parts: the models document and the preload plan."""

from __future__ import annotations

from router._admin import models_document, plan_preload
from router.policy import ModelplexPolicy

from reports import NOW, cluster, snapshot


def test_the_models_document_shows_every_copy_and_the_request_rate() -> None:
    view = cluster(
        snapshot("r1", [("a", 5.0, 1), ("b", 2.0)], loading=["c"]),
        snapshot("r2", [("a", 1.0)]),
    )
    view.demand.track_rates(lambda: NOW)
    for _ in range(3):
        view.demand.arrived("a")
    view.demand.arrived("cold")
    document = models_document(view, NOW)
    assert [m["model"] for m in document["models"]] == ["a", "b", "c", "cold"]
    a = document["models"][0]
    assert a["requests_per_minute"] == 3.0
    assert a["replicas"] == [
        {
            "replica": "r1",
            "replica_state": "healthy",
            "state": "loaded",
            "idle_s": 5.0,
            "in_flight": 0,
            "in_use": True,
        },
        {
            "replica": "r2",
            "replica_state": "healthy",
            "state": "loaded",
            "idle_s": 1.0,
            "in_flight": 0,
            "in_use": False,
        },
    ]
    assert document["models"][2]["replicas"][0]["state"] == "loading"
    assert document["models"][3] == {
        "model": "cold",
        "requests_per_minute": 1.0,
        "waiting": 0,
        "replicas": [],
    }


def test_a_preload_places_copies_on_replicas_that_lack_the_model() -> None:
    view = cluster(snapshot("r1", ["a"]), snapshot("r2", []), snapshot("r3", []))
    holding, plan = plan_preload(view, ModelplexPolicy(), "a", 3, NOW)
    assert holding == ["r1"]
    assert sorted(p.replica.replica_id for p in plan) == ["r2", "r3"]
    assert view.holders["a"] == {"r1", "r2", "r3"}  # loading at once, in the view
    assert all(view.replicas[r].models["a"].loading for r in ("r2", "r3"))
    again_holding, again = plan_preload(view, ModelplexPolicy(), "a", 3, NOW)
    assert (again_holding, again) == (["r1", "r2", "r3"], [])  # nothing more to do


def test_a_preload_stops_when_no_replica_is_left() -> None:
    view = cluster(snapshot("r1", []), snapshot("r2", []))
    holding, plan = plan_preload(view, ModelplexPolicy(), "m", 5, NOW)
    assert holding == []
    assert len(plan) == 2


def test_a_preload_evicts_what_the_policy_would_and_never_a_model_in_use() -> None:
    view = cluster(snapshot("r1", [("busy", 1.0, 2)], capacity=1))
    assert plan_preload(view, ModelplexPolicy(), "m", 1, NOW) == ([], [])
    view = cluster(snapshot("r1", [("idle", 9.0)], capacity=1))
    _, plan = plan_preload(view, ModelplexPolicy(), "m", 1, NOW)
    assert [(p.replica.replica_id, p.evict) for p in plan] == [("r1", "idle")]
    assert set(view.replicas["r1"].models) == {"m"}


def test_a_preload_never_places_on_a_draining_replica() -> None:
    view = cluster(snapshot("r1", []), snapshot("r2", []))
    view.drain("r2")
    _, plan = plan_preload(view, ModelplexPolicy(), "m", 2, NOW)
    assert [p.replica.replica_id for p in plan] == ["r1"]
