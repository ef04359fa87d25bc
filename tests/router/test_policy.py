"""Placement rules every policy keeps (`every_policy`), and the affinity baseline's own:
affinity first, free slots next, cluster-wide LRU eviction last."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.wire import ReplicaSnapshot
from router.policy import WAIT, AffinityPolicy, ModelplexPolicy, Reject, Route, Wait
from router.view import UNLIMITED, ClusterView

from reports import NOW, busy, check_route, cluster, routed_to, snapshot

PolicyClass = type[AffinityPolicy] | type[ModelplexPolicy]

every_policy = pytest.mark.parametrize(
    "policy", [AffinityPolicy, ModelplexPolicy], ids=["affinity", "modelplex"]
)
"""The rules every placement policy keeps; the rest of this module is the affinity baseline's
(policy v1), and `test_modelplex_policy.py` holds the router's own (v3)."""


def choose(
    view: ClusterView, model_id: str, policy: PolicyClass = AffinityPolicy
) -> Route | Wait | Reject:
    return policy().choose(view, model_id, NOW)


# -- affinity --------------------------------------------------------------------------------


@every_policy
def test_a_holder_with_room_wins_over_a_free_slot(policy: PolicyClass) -> None:
    view = cluster(snapshot("r1", ["a", "m"]), snapshot("r2"))
    assert routed_to(choose(view, "m", policy)) == ("r1", None)


def test_a_replica_still_loading_the_model_counts_as_a_holder() -> None:
    view = cluster(snapshot("r1", ["a"], loading=["m"]), snapshot("r2"))
    assert routed_to(choose(view, "m")) == ("r1", None)


@every_policy
def test_among_holders_the_one_with_the_fewest_in_flight_wins(policy: PolicyClass) -> None:
    view = cluster(snapshot("r1", ["m"]), snapshot("r2", ["m"]), snapshot("r3", ["m"]))
    busy(view, "r1", 2, "m")
    busy(view, "r2", 1, "m")
    assert routed_to(choose(view, "m", policy)) == ("r3", None)
    busy(view, "r3", 3)
    assert routed_to(choose(view, "m", policy)) == ("r2", None)


@every_policy
def test_a_holder_at_max_ongoing_is_skipped_for_another_holder(policy: PolicyClass) -> None:
    view = cluster(
        snapshot("r1", ["m"], max_ongoing_requests=1), snapshot("r2", ["m"], max_ongoing_requests=5)
    )
    busy(view, "r1", 1)
    busy(view, "r2", 3)
    assert routed_to(choose(view, "m", policy)) == ("r2", None)


def test_when_every_holder_is_busy_the_request_waits_instead_of_loading_again() -> None:
    view = cluster(
        snapshot("r1", ["m"], max_ongoing_requests=2),
        snapshot("r2", ["m"], max_ongoing_requests=1),
        snapshot("r3"),
    )
    busy(view, "r1", 2, "m")
    busy(view, "r2", 1, "m")
    assert choose(view, "m") is WAIT


@every_policy
def test_holders_that_cannot_take_requests_do_not_count(policy: PolicyClass) -> None:
    view = cluster(snapshot("r1", ["m"], draining=True), snapshot("r2", ["a"]))
    assert routed_to(choose(view, "m", policy)) == ("r2", None)


# -- placing a cold model --------------------------------------------------------------------


@every_policy
def test_a_cold_model_goes_to_the_replica_with_the_fewest_models(policy: PolicyClass) -> None:
    view = cluster(
        snapshot("r1", ["a", "b"], capacity=4),
        snapshot("r2", ["c"], capacity=4),
        snapshot("r3", ["d", "e", "f"], capacity=4),
    )
    assert routed_to(choose(view, "m", policy)) == ("r2", None)


def test_equal_model_counts_are_broken_by_fewest_in_flight() -> None:
    view = cluster(snapshot("r1", ["a"]), snapshot("r2", ["b"]), snapshot("r3", ["c"]))
    busy(view, "r1", 2, "a")
    busy(view, "r2", 1, "b")
    busy(view, "r3", 3, "c")
    assert routed_to(choose(view, "m")) == ("r2", None)


def test_a_free_slot_beats_an_eviction_even_on_a_busier_replica() -> None:
    view = cluster(snapshot("r1", ["a"], capacity=1), snapshot("r2", ["b", "c"], capacity=4))
    busy(view, "r2", 3, "b")
    assert routed_to(choose(view, "m")) == ("r2", None)


def test_a_free_slot_on_a_replica_without_room_is_not_used() -> None:
    view = cluster(
        snapshot("r1", [], max_ongoing_requests=1), snapshot("r2", ["a", "b"], capacity=4)
    )
    busy(view, "r1", 1)
    assert routed_to(choose(view, "m")) == ("r2", None)


@every_policy
def test_unlimited_capacity_always_has_a_free_slot(policy: PolicyClass) -> None:
    many = [f"x{n}" for n in range(50)]
    view = cluster(snapshot("r1", many, capacity=UNLIMITED), snapshot("r2", ["a"], capacity=1))
    assert routed_to(choose(view, "m", policy)) == ("r1", None)


def test_without_a_free_slot_the_oldest_model_in_the_cluster_is_evicted() -> None:
    view = cluster(
        snapshot("r1", [("x", 5.0), ("y", 1.0)], capacity=2),
        snapshot("r2", [("z", 9.0), ("w", 2.0)], capacity=2),
        snapshot("r3", [("v", 7.0)], capacity=1),
    )
    assert routed_to(choose(view, "m")) == ("r2", "z")


def test_models_in_use_are_never_named_for_eviction() -> None:
    view = cluster(
        snapshot("r1", [("x", 5.0), ("y", 1.0)], capacity=2),
        snapshot("r2", [("z", 9.0, 1), ("w", 2.0)], capacity=2),
    )
    busy(view, "r1", 1, "x")
    # z is pinned by the replica's report, x by our own request: w is the oldest free one.
    assert routed_to(choose(view, "m")) == ("r2", "w")


def test_a_model_being_loaded_is_never_named_for_eviction() -> None:
    view = cluster(
        snapshot("r1", [("y", 1.0)], loading=["x"], capacity=2),
        snapshot("r2", [("w", 0.5)], capacity=1),
    )
    view.replicas["r1"].models["x"].last_used = 0.0
    assert routed_to(choose(view, "m")) == ("r1", "y")


def test_when_every_resident_model_is_in_use_the_request_waits() -> None:
    view = cluster(
        snapshot("r1", [("x", 5.0, 1)], capacity=1),
        snapshot("r2", [("y", 5.0)], loading=["z"], capacity=2),
    )
    busy(view, "r2", 1, "y")
    assert choose(view, "m") is WAIT


def test_everything_busy_means_wait() -> None:
    view = cluster(
        snapshot("r1", ["a"], max_ongoing_requests=1), snapshot("r2", [], max_ongoing_requests=2)
    )
    busy(view, "r1", 1)
    busy(view, "r2", 2)
    assert choose(view, "m") is WAIT
    assert choose(view, "a") is WAIT
    assert choose(view, "") is WAIT


# -- a request retried after a replica failed it --------------------------------------------


@every_policy
def test_a_retried_request_avoids_the_replicas_that_failed_it(policy: PolicyClass) -> None:
    view = cluster(snapshot("r1", ["m"]), snapshot("r2", ["a"]), snapshot("r3", ["m"]))
    decision = policy().choose(view, "m", NOW, avoid=frozenset({"r1"}))
    assert routed_to(decision) == ("r3", None)
    decision = policy().choose(view, "m", NOW, avoid=frozenset({"r1", "r3"}))
    assert routed_to(decision) == ("r2", None)  # loaded again elsewhere, not sent back
    assert routed_to(policy().choose(view, "", NOW, avoid=frozenset({"r1", "r2"}))) == ("r3", None)


@every_policy
def test_a_retried_request_with_every_replica_tried_is_rejected(policy: PolicyClass) -> None:
    view = cluster(snapshot("r1", ["m"]), snapshot("r2"))
    for model_id in ("m", "cold", ""):
        decision = policy().choose(view, model_id, NOW, avoid=frozenset({"r1", "r2"}))
        assert isinstance(decision, Reject)


# -- replicas out of routing -----------------------------------------------------------------


def _take_out(view: ClusterView, how: str) -> None:
    if how == "draining":
        view.apply_report(snapshot("r1", ["m"], sequence=2, draining=True), NOW)
    elif how == "down":
        view.mark_down("r1")
    else:
        view.apply_report(snapshot("r2", ["a", "b", "c"], sequence=2), NOW + 10.0)
        assert view.expire(NOW + 10.0, timeout_s=5.0) == ["r1"]


@pytest.mark.parametrize("how", ["draining", "down", "stale"])
def test_replicas_out_of_routing_are_never_chosen(how: str) -> None:
    view = cluster(snapshot("r1", ["m"]), snapshot("r2", ["a", "b", "c"]))
    _take_out(view, how)
    assert routed_to(choose(view, "m")) == ("r2", "a")
    assert routed_to(choose(view, "other")) == ("r2", "a")
    assert routed_to(choose(view, "")) == ("r2", None)


@pytest.mark.parametrize("how", ["draining", "down", "stale"])
def test_nothing_routable_means_reject(how: str) -> None:
    view = cluster(snapshot("r1", ["m"]))
    if how == "stale":
        view.expire(NOW + 10.0, timeout_s=5.0)
    else:
        _take_out(view, how)
    for model_id in ("m", "other", ""):
        assert isinstance(choose(view, model_id), Reject)


def test_an_empty_cluster_rejects() -> None:
    decision = choose(ClusterView(), "m")
    assert isinstance(decision, Reject)
    assert decision.reason


# -- requests without a model ----------------------------------------------------------------


def test_a_request_without_a_model_goes_to_the_least_loaded_replica() -> None:
    view = cluster(snapshot("r1", ["a"]), snapshot("r2", []), snapshot("r3", ["b"]))
    busy(view, "r1", 2)
    busy(view, "r2", 1)
    busy(view, "r3", 3)
    assert routed_to(choose(view, "")) == ("r2", None)


def test_a_request_without_a_model_skips_replicas_without_room() -> None:
    view = cluster(snapshot("r1", max_ongoing_requests=1), snapshot("r2", max_ongoing_requests=8))
    busy(view, "r1", 1)
    busy(view, "r2", 5)
    assert routed_to(choose(view, "")) == ("r2", None)


# -- purity ----------------------------------------------------------------------------------


def test_choosing_changes_nothing_and_gives_the_same_answer_twice() -> None:
    view = cluster(
        snapshot("r1", [("x", 5.0), ("y", 1.0)], capacity=2),
        snapshot("r2", [("z", 9.0), ("w", 2.0)], capacity=2),
    )
    before = (
        {m: set(ids) for m, ids in view.holders.items()},
        {r.replica_id: (r.in_flight, dict(r.models)) for r in view},
    )
    first = choose(view, "m")
    assert choose(view, "m") == first
    after = (
        {m: set(ids) for m, ids in view.holders.items()},
        {r.replica_id: (r.in_flight, dict(r.models)) for r in view},
    )
    assert before == after


_TIED_HOLDERS = """
from common.wire import ModelEntry, ReplicaSnapshot
from router.policy import AffinityPolicy
from router.view import ClusterView

view = ClusterView()
for n in range(6):
    entry = ModelEntry(model_id="m", idle_s=1.0, in_use=0)
    view.apply_report(
        ReplicaSnapshot(
            replica_id=f"r{n}", incarnation="i", sequence=1, url="http://x.test:1",
            capacity=3, models=(entry,), loading=(), in_flight=0,
            max_ongoing_requests=4, draining=False,
        ),
        0.0,
    )
print(AffinityPolicy().choose(view, "m", 0.0).replica.replica_id)
"""


def test_ties_among_holders_do_not_depend_on_string_hashing() -> None:
    root = Path(__file__).resolve().parents[2]
    chosen = set()
    for seed in range(4):
        result = subprocess.run(
            [sys.executable, "-c", _TIED_HOLDERS],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        )
        chosen.add(result.stdout.strip())
    assert len(chosen) == 1, chosen


# -- properties ------------------------------------------------------------------------------

POOL = tuple(f"p{n}" for n in range(8))


@st.composite
def clusters(draw: st.DrawFn, *, allow_out_of_routing: bool = True) -> list[ReplicaSnapshot]:
    reports = []
    for n in range(draw(st.integers(1, 8))):
        capacity = draw(st.integers(1, 4))
        resident = draw(st.lists(st.sampled_from(POOL), unique=True, max_size=capacity))
        loading = [m for m in resident if draw(st.booleans()) and draw(st.booleans())]
        loaded = [m for m in resident if m not in loading]
        reports.append(
            snapshot(
                f"r{n}",
                [(m, draw(st.floats(0.0, 60.0)), draw(st.integers(0, 1))) for m in loaded],
                loading=loading,
                capacity=capacity,
                max_ongoing_requests=draw(st.integers(1, 8)),
                draining=allow_out_of_routing and draw(st.integers(0, 5)) == 0,
            )
        )
    return reports


@settings(max_examples=300, deadline=None)
@given(
    reports=clusters(),
    requests=st.integers(1, 100),
    data=st.data(),
)
def test_a_burst_never_loads_a_cold_model_twice(
    reports: list[ReplicaSnapshot], requests: int, data: st.DataObject
) -> None:
    view = cluster(*reports)
    policy = AffinityPolicy()
    loaded_on: set[str] = set()
    for n in range(requests):
        now = NOW + n * 0.001
        decision = policy.choose(view, "burst", now)
        check_route(decision)
        if isinstance(decision, Route):
            rid = decision.replica.replica_id
            if view.dispatch(rid, "burst", now, evict=decision.evict):
                loaded_on.add(rid)
            assert loaded_on == {rid}
        if data.draw(st.booleans(), label="a report that predates the burst arrives"):
            # Same contents as before the burst: it cannot know about our dispatches.
            report = data.draw(st.sampled_from(reports), label="report")
            view.apply_report(
                snapshot(
                    report.replica_id,
                    [(e.model_id, e.idle_s, e.in_use) for e in report.models],
                    loading=report.loading,
                    sequence=2 + n,
                    capacity=report.capacity,
                    max_ongoing_requests=report.max_ongoing_requests,
                    draining=report.draining,
                ),
                now,
            )
    assert len(loaded_on) <= 1


@settings(max_examples=300, deadline=None)
@given(reports=clusters(), data=st.data())
def test_no_route_ever_evicts_a_model_in_use(
    reports: list[ReplicaSnapshot], data: st.DataObject
) -> None:
    view = cluster(*reports)
    policy = AffinityPolicy()
    outstanding: list[tuple[str, str]] = []
    steps = data.draw(st.integers(1, 60), label="steps")
    for n in range(steps):
        now = NOW + n * 0.5
        if outstanding and data.draw(st.booleans(), label="finish one"):
            index = data.draw(st.integers(0, len(outstanding) - 1), label="which")
            rid, model_id = outstanding.pop(index)
            view.finish(rid, model_id, now)
            continue
        model_id = data.draw(st.sampled_from(("", *POOL, "q0", "q1", "q2")), label="model")
        decision = policy.choose(view, model_id, now)
        check_route(decision)
        if isinstance(decision, Route):
            rid = decision.replica.replica_id
            view.dispatch(rid, model_id, now, evict=decision.evict)
            outstanding.append((rid, model_id))
            if model_id:
                assert model_id in view.replicas[rid].models
        elif isinstance(decision, Reject):
            assert not view.routable()
        else:
            assert decision is WAIT
    for rid, model_id in outstanding:
        if model_id:
            assert view.replicas[rid].models[model_id].in_flight > 0
