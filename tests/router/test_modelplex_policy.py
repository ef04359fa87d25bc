"""The router's policy (`ModelplexPolicy`, v3): holders first, stickiness with spill,
frequency-aware cluster-wide eviction, bounded load and bounded waits for a slot, loader-aware
placement, and extra copies for hot models. Rules every policy keeps are in `test_policy.py`."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common.wire import ReplicaSnapshot
from router.admission import AdmissionQueue, Refusal
from router.demand import Demand
from router.policy import WAIT, ModelplexPolicy, Prefetch, Reject, Route, Wait
from router.view import ClusterView, ReplicaView

from reports import NOW, asked, busy, check_route, cluster, routed_to, snapshot

Decision = Route | Wait | Reject


def waiting(view: ClusterView, model_id: str, requests: int, since: float = NOW) -> None:
    for _ in range(requests):
        view.demand.wait_started(model_id, since)


def estimates(view: ClusterView, *, load_s: float, infer_s: float) -> None:
    view.demand.observe_load(load_s)
    view.demand.observe_inference(infer_s)


def waits_for_holders(decision: Decision) -> bool:
    """A wait for the model's busy holders (not for a slot; maybe with a deadline)."""
    return isinstance(decision, Wait) and not decision.for_slot


def choose(view: ClusterView, model_id: str) -> Decision:
    return ModelplexPolicy().choose(view, model_id, NOW)


def loaded_copies(view: ClusterView, model_id: str) -> int:
    """Routable replicas where the model is loaded: a copy is spare only if another is."""
    return sum(
        1
        for replica_id in view.holders.get(model_id, ())
        if view.replicas[replica_id].routable
        and not view.replicas[replica_id].models[model_id].loading
    )


def choose_unprotected(view: ClusterView, model_id: str) -> Decision:
    """The victim order alone, without waiting to spare a more popular model."""
    return ModelplexPolicy(protect_popular=False).choose(view, model_id, NOW)


def plan(view: ClusterView, model_id: str, now: float = NOW) -> list[Prefetch]:
    return ModelplexPolicy().plan_copies(view, model_id, now)


def load_bound(view: ClusterView) -> float:
    """The bounded-load limit: 1.25 x the average in flight over routable replicas, + 1."""
    routable = [r for r in view if r.routable]
    return 1.25 * sum(r.in_flight for r in routable) / max(1, len(routable)) + 1


def can_take_a_new_model(view: ClusterView, replica: ReplicaView, model_id: str) -> bool:
    """A replica a cold placement of `model_id` could use: routable, with room, not holding
    it, and a free slot or a loaded model nobody uses."""
    if not (replica.routable and replica.has_room) or model_id in replica.models:
        return False
    if replica.free_slots > 0:
        return True
    return any(not c.loading and not c.in_use for c in replica.models.values())


def check_prefetch(view: ClusterView, model_id: str, prefetch: Prefetch) -> None:
    replica = prefetch.replica
    assert prefetch.model_id == model_id
    assert replica.routable
    assert model_id not in replica.models
    if prefetch.evict is None:
        assert replica.free_slots > 0
    else:
        copy = replica.models[prefetch.evict]
        assert not copy.loading
        assert not copy.in_use
        assert view.demand.frequency(prefetch.evict) < view.demand.frequency(model_id) or (
            len(view.holders[prefetch.evict]) > 1
        )


# -- holders first ---------------------------------------------------------------------------


def test_a_loaded_copy_wins_over_a_loading_one_even_when_busier() -> None:
    view = cluster(snapshot("r1", loading=["m"]), snapshot("r2", ["m"]))
    busy(view, "r2", 3, "m")
    assert routed_to(choose(view, "m")) == ("r2", None)
    busy(view, "r2", 1, "m")
    assert routed_to(choose(view, "m")) == ("r1", None)  # r2 is at max_ongoing now


def test_equal_holders_are_told_apart_by_replica_id() -> None:
    view = cluster(snapshot("r2", ["m"]), snapshot("r3", ["m"]), snapshot("r1", ["m"]))
    assert routed_to(choose(view, "m")) == ("r1", None)


def test_when_every_holder_is_busy_the_request_waits() -> None:
    view = cluster(
        snapshot("r1", ["m"], max_ongoing_requests=2),
        snapshot("r2", loading=["m"], max_ongoing_requests=1),
        snapshot("r3"),
    )
    busy(view, "r1", 2, "m")
    busy(view, "r2", 1, "m")
    assert waits_for_holders(choose(view, "m"))


# -- stickiness with spill -------------------------------------------------------------------


def _busy_holders() -> ClusterView:
    """m on r1 and r2 (one request each at most), both busy; r3 has a free slot.

    Expected wait = (waiting + 1) x 0.5 s / 2 slots, against a 1 s load: spill past 3 waiting.
    """
    view = cluster(
        snapshot("r1", ["m"], max_ongoing_requests=1),
        snapshot("r2", ["m"], max_ongoing_requests=1),
        snapshot("r3", ["a"]),
    )
    busy(view, "r1", 1, "m")
    busy(view, "r2", 1, "m")
    estimates(view, load_s=1.0, infer_s=0.5)
    return view


def test_busy_holders_keep_the_request_while_the_expected_wait_is_at_most_a_load() -> None:
    view = _busy_holders()
    assert waits_for_holders(choose(view, "m"))
    waiting(view, "m", 3)
    assert waits_for_holders(choose(view, "m"))  # (3 + 1) x 0.5 / 2 == 1.0: not more than a load


def test_a_wait_longer_than_a_load_spills_to_a_new_replica_as_a_cold_placement() -> None:
    view = _busy_holders()
    waiting(view, "m", 4, since=NOW - 10)  # (4 + 1) x 0.5 / 2 == 1.25 > 1.0
    decision = choose(view, "m")
    assert routed_to(decision) == ("r3", None)
    assert view.dispatch("r3", "m", NOW) is True
    assert view.holders["m"] == {"r1", "r2", "r3"}


def test_the_spill_estimate_counts_only_routable_holders_slots() -> None:
    view = cluster(
        snapshot("r1", ["m"], max_ongoing_requests=2),
        snapshot("r2", ["m"], max_ongoing_requests=100, draining=True),
        snapshot("r3", ["a"]),
    )
    busy(view, "r1", 2, "m")
    estimates(view, load_s=1.0, infer_s=0.5)
    waiting(view, "m", 4, since=NOW - 10)  # 5 x 0.5 / 2 == 1.25 s; r2 would make it 0.02 s
    assert routed_to(choose(view, "m")) == ("r3", None)


def test_a_spilled_request_evicts_like_a_cold_placement() -> None:
    view = cluster(
        snapshot("r1", ["m"], capacity=1, max_ongoing_requests=1),
        snapshot("r2", [("x", 50.0), ("y", 1.0)], capacity=2),
    )
    busy(view, "r1", 1, "m")
    asked(view, "x", 5)
    estimates(view, load_s=0.1, infer_s=1.0)
    waiting(view, "m", 1, since=NOW - 10)
    assert routed_to(choose(view, "m")) == ("r2", "y")


def test_a_burst_after_the_first_load_waits_for_the_holder_however_long_the_queue() -> None:
    view = _busy_holders()
    waiting(view, "m", 40)  # the queue formed just now: a burst, not sustained demand
    assert waits_for_holders(choose(view, "m"))


# -- nothing routable, no model --------------------------------------------------------------


@pytest.mark.parametrize("how", ["draining", "down", "stale"])
def test_nothing_routable_means_reject(how: str) -> None:
    view = cluster(snapshot("r1", ["m"], draining=how == "draining"))
    if how == "down":
        view.mark_down("r1")
    elif how == "stale":
        view.expire(NOW + 10.0, timeout_s=5.0)
    for model_id in ("m", "other", ""):
        decision = choose(view, model_id)
        assert isinstance(decision, Reject)
        assert decision.reason


def test_an_empty_cluster_rejects() -> None:
    assert isinstance(choose(ClusterView(), "m"), Reject)
    assert isinstance(choose(ClusterView(), ""), Reject)


def test_a_request_without_a_model_goes_to_the_least_loaded_replica_with_room() -> None:
    view = cluster(
        snapshot("r1", ["a"]),
        snapshot("r2", [], max_ongoing_requests=1),
        snapshot("r3", ["b"]),
        snapshot("r4", draining=True),
    )
    busy(view, "r1", 2)
    busy(view, "r2", 1)
    busy(view, "r3", 1)
    assert routed_to(choose(view, "")) == ("r3", None)


def test_a_request_without_a_model_waits_when_every_replica_is_busy() -> None:
    view = cluster(snapshot("r1", max_ongoing_requests=1), snapshot("r2", max_ongoing_requests=2))
    busy(view, "r1", 1)
    busy(view, "r2", 2)
    assert choose(view, "") is WAIT


# -- placing a cold model: free slots --------------------------------------------------------


def test_equal_model_counts_are_broken_by_rendezvous_hashing_not_this_routers_traffic() -> None:
    """Among replicas equally good by the reports, the model id picks (the same on every
    router): this router's own requests within the load bound change nothing, and different
    models spread over the replicas."""
    chosen: dict[str, str] = {}
    for n in range(60):
        model_id = f"m{n}"
        quiet = cluster(snapshot("r1", ["a"]), snapshot("r2", ["b"]), snapshot("r3", ["c"]))
        chosen[model_id] = routed_to(choose(quiet, model_id))[0]
        loaded = cluster(snapshot("r1", ["a"]), snapshot("r2", ["b"]), snapshot("r3", ["c"]))
        busy(loaded, "r1", 2, "a")
        busy(loaded, "r2", 1, "b")
        busy(loaded, "r3", 2, "c")  # bound: 1.25 x 5/3 + 1, above every replica's load
        assert routed_to(choose(loaded, model_id))[0] == chosen[model_id]
    assert set(chosen.values()) == {"r1", "r2", "r3"}


def test_a_free_slot_beats_an_eviction_of_a_model_nobody_asks_for() -> None:
    view = cluster(snapshot("r1", [("a", 999.0)], capacity=1), snapshot("r2", ["b", "c"]))
    busy(view, "r2", 1, "b")
    assert routed_to(choose(view, "m")) == ("r2", None)


def test_free_slots_without_room_are_passed_over() -> None:
    view = cluster(snapshot("r1", max_ongoing_requests=1), snapshot("r2", ["a"], capacity=1))
    busy(view, "r1", 1)
    assert routed_to(choose(view, "m")) == ("r2", "a")


# -- placing a cold model: the victim --------------------------------------------------------


def test_the_least_frequently_requested_model_in_the_cluster_is_evicted() -> None:
    view = cluster(
        snapshot("r1", [("old", 50.0), ("warm", 20.0)], capacity=2),
        snapshot("r2", [("rare", 1.0)], capacity=1),
    )
    asked(view, "old", 5)
    asked(view, "warm", 3)
    asked(view, "rare", 2)
    # v1 would evict `old` (the least recently used); v2 weighs how often each is asked for.
    assert routed_to(choose(view, "m")) == ("r2", "rare")


def test_a_model_never_asked_for_goes_before_one_asked_for_once() -> None:
    view = cluster(
        snapshot("r1", [("asked", 50.0)], capacity=1),
        snapshot("r2", [("never", 1.0)], capacity=1),
    )
    asked(view, "asked", 1)
    assert routed_to(choose(view, "m")) == ("r2", "never")


def test_equal_frequencies_evict_the_least_recently_used() -> None:
    view = cluster(
        snapshot("r1", [("x", 5.0), ("y", 1.0)], capacity=2),
        snapshot("r2", [("z", 9.0), ("w", 2.0)], capacity=2),
        snapshot("r3", [("v", 7.0)], capacity=1),
    )
    for model_id in ("x", "y", "z", "w", "v"):
        asked(view, model_id, 2)
    assert routed_to(choose(view, "m")) == ("r2", "z")


def test_an_extra_copy_goes_before_any_single_copy_model() -> None:
    view = cluster(
        snapshot("r1", [("hot", 1.0)], capacity=1),
        snapshot("r2", [("hot", 0.5)], capacity=1),
        snapshot("r3", [("cold", 99.0)], capacity=1),
    )
    asked(view, "hot", 1_000)
    decision = choose(view, "m")
    assert routed_to(decision) == ("r1", "hot")  # the older of the two copies
    view.dispatch("r1", "m", NOW, evict="hot")
    # Once a single copy is left, it is worth its frequency again.
    assert routed_to(choose(view, "n")) == ("r3", "cold")


def test_models_in_use_or_loading_are_never_named_for_eviction() -> None:
    view = cluster(
        snapshot("r1", [("ours", 90.0), ("fresh", 1.0)], capacity=2),
        snapshot("r2", [("theirs", 95.0, 1)], loading=["coming"], capacity=2),
    )
    busy(view, "r1", 1, "ours")
    view.replicas["r2"].models["coming"].last_used = 0.0
    asked(view, "fresh", 50)
    # ours is pinned by our request, theirs by another router's, coming is loading.
    assert routed_to(choose_unprotected(view, "m")) == ("r1", "fresh")


def test_when_every_resident_model_is_in_use_the_request_waits() -> None:
    view = cluster(
        snapshot("r1", [("x", 5.0, 1)], capacity=1),
        snapshot("r2", [("y", 5.0)], loading=["z"], capacity=2),
    )
    busy(view, "r2", 1, "y")
    assert waits_for_holders(choose(view, "m"))


def test_the_route_names_the_victim_and_dispatching_it_removes_exactly_that_model() -> None:
    view = cluster(
        snapshot("r1", [("old", 50.0), ("young", 1.0), ("mid", 10.0)], capacity=3),
        snapshot("r2", [("busy", 1.0)], capacity=1),
    )
    busy(view, "r2", 1, "busy")
    asked(view, "old", 9)
    asked(view, "mid", 4)
    asked(view, "young", 1)
    replica = view.replicas["r1"]
    assert replica.eviction_candidate() is not None
    assert replica.eviction_candidate().model_id == "old"  # type: ignore[union-attr]
    decision = choose_unprotected(view, "m")
    assert routed_to(decision) == ("r1", "young")  # not what the replica's own LRU would pick
    assert view.dispatch("r1", "m", NOW, evict=decision.evict) is True  # type: ignore[union-attr]
    assert set(replica.models) == {"old", "mid", "m"}
    assert "young" not in view.holders
    assert view.holders["m"] == {"r1"}


# -- bounded load ----------------------------------------------------------------------------


def test_an_overloaded_replica_loses_its_free_slot_to_one_within_the_bound() -> None:
    view = cluster(
        snapshot("r1", [], max_ongoing_requests=10), snapshot("r2", ["a"], max_ongoing_requests=10)
    )
    busy(view, "r1", 6)  # bound: 1.25 x 3 + 1 = 4.75
    assert routed_to(choose(view, "m")) == ("r2", None)


def test_an_overloaded_replica_loses_its_victim_to_one_within_the_bound() -> None:
    view = cluster(
        snapshot("r1", [("stale", 90.0)], capacity=1, max_ongoing_requests=10),
        snapshot("r2", [("fresh", 1.0)], capacity=1, max_ongoing_requests=10),
    )
    asked(view, "fresh", 10)
    busy(view, "r1", 6)
    assert routed_to(choose(view, "m")) == ("r2", "fresh")


def test_the_bound_does_not_apply_to_holders() -> None:
    view = cluster(snapshot("r1", ["m"], max_ongoing_requests=10), snapshot("r2", []))
    busy(view, "r1", 8, "m")
    assert routed_to(choose(view, "m")) == ("r1", None)


def test_an_overloaded_replica_is_still_used_when_no_other_can_take_the_model() -> None:
    view = cluster(
        snapshot("r1", [], capacity=2, max_ongoing_requests=8),
        snapshot("r2", [("pinned", 1.0, 1)], capacity=1, max_ongoing_requests=8),
    )
    busy(view, "r1", 3)  # bound: 1.25 x 1.5 + 1 = 2.875; r2 has nothing to evict
    assert routed_to(choose(view, "m")) == ("r1", None)


# -- plan_copies -----------------------------------------------------------------------------


def _hot(*others: ReplicaSnapshot, waiting_for: int = 6, holders: int = 1) -> ClusterView:
    """`hot` loaded on `holders` replicas (h0, h1, ...), each at its max of 2 requests for it,
    with `waiting_for` requests queued since 2 s ago (a load takes 1 s)."""
    view = cluster(
        *(snapshot(f"h{n}", ["hot"], capacity=1, max_ongoing_requests=2) for n in range(holders)),
        *others,
    )
    for n in range(holders):
        busy(view, f"h{n}", 2, "hot")
    estimates(view, load_s=1.0, infer_s=0.5)
    asked(view, "hot", 20)
    waiting(view, "hot", waiting_for, since=NOW - 2.0)
    return view


def _free(*names: str) -> list[ReplicaSnapshot]:
    return [snapshot(name, capacity=1, max_ongoing_requests=2) for name in names]


def test_no_copies_when_nothing_is_waiting() -> None:
    view = _hot(*_free("f1", "f2"), waiting_for=0)
    assert plan(view, "hot") == []


def test_no_copies_while_the_wait_is_younger_than_a_load() -> None:
    view = _hot(*_free("f1", "f2"))
    assert plan(view, "hot", now=NOW - 1.5) == []  # waiting for 0.5 s, a load takes 1 s
    assert plan(view, "hot", now=NOW - 1.01) == []  # 0.99 s


def test_no_copies_while_a_holder_is_still_loading() -> None:
    view = cluster(snapshot("h0", loading=["hot"], max_ongoing_requests=1), *_free("f1", "f2"))
    busy(view, "h0", 1, "hot")
    waiting(view, "hot", 20, since=NOW - 5.0)
    assert plan(view, "hot") == []


def test_no_copies_without_a_routable_holder() -> None:
    view = cluster(*_free("f1", "f2"))
    waiting(view, "hot", 20, since=NOW - 5.0)
    assert plan(view, "hot") == []
    view = cluster(snapshot("h0", ["hot"], draining=True), *_free("f1", "f2"))
    waiting(view, "hot", 20, since=NOW - 5.0)
    assert plan(view, "hot") == []


@pytest.mark.parametrize(
    ("waiting_for", "holders", "copies"),
    [
        (1, 1, 1),
        (2, 1, 1),
        (3, 1, 2),
        (6, 1, 3),
        (40, 1, 5),
        (2, 2, 1),
        (1, 2, 1),
        (5, 2, 3),
        (9, 2, 5),
    ],
)
def test_enough_copies_for_the_queue_and_the_requests_in_flight(
    waiting_for: int, holders: int, copies: int
) -> None:
    view = _hot(*_free("f1", "f2", "f3", "f4", "f5"), waiting_for=waiting_for, holders=holders)
    wanted = math.ceil((waiting_for + 2 * holders) / 2) - holders
    assert copies == min(wanted, 5)
    prefetches = plan(view, "hot")
    assert len(prefetches) == copies
    targets = [p.replica.replica_id for p in prefetches]
    assert len(set(targets)) == len(targets)
    assert not set(targets) & view.holders["hot"]
    for prefetch in prefetches:
        check_prefetch(view, "hot", prefetch)
        assert prefetch.evict is None


def test_a_copy_evicts_only_what_is_worth_less_and_never_what_is_in_use() -> None:
    view = _hot(
        snapshot("cheap", [("c", 9.0)], capacity=1, max_ongoing_requests=2),
        snapshot("dear", [("d", 99.0)], capacity=1, max_ongoing_requests=2),
        snapshot("pinned", [("p", 99.0, 1)], capacity=1, max_ongoing_requests=2),
        snapshot("loading", loading=["l"], capacity=1, max_ongoing_requests=2),
        *_free("free"),
        waiting_for=10,
    )
    asked(view, "d", 21)  # more than hot's 20
    asked(view, "c", 19)
    prefetches = plan(view, "hot")
    assert sorted((p.replica.replica_id, p.evict) for p in prefetches) == [
        ("cheap", "c"),
        ("free", None),
    ]
    for prefetch in prefetches:
        check_prefetch(view, "hot", prefetch)


def test_prefetched_copies_are_loading_so_the_next_plan_waits_for_them() -> None:
    view = _hot(*_free("f1", "f2", "f3"))
    prefetches = plan(view, "hot")
    assert len(prefetches) == 3
    for prefetch in prefetches:
        view.prefetch(prefetch.replica.replica_id, "hot", NOW, evict=prefetch.evict)
    assert view.holders["hot"] == {"h0", "f1", "f2", "f3"}
    assert all(view.replicas[f].models["hot"].loading for f in ("f1", "f2", "f3"))
    assert plan(view, "hot", now=NOW + 0.5) == []
    # Requests now go to the loading copies rather than wait.
    assert choose(view, "hot") == Route(view.replicas["f1"])


def test_copies_of_another_model_are_shed_only_down_to_one() -> None:
    view = _hot(
        snapshot("x1", [("x", 9.0)], capacity=1, max_ongoing_requests=2),
        snapshot("x2", [("x", 9.0)], capacity=1, max_ongoing_requests=2),
        snapshot("y1", [("y", 9.0)], capacity=1, max_ongoing_requests=2),
        waiting_for=10,
    )
    asked(view, "x", 100)  # worth more than hot (20)
    asked(view, "y", 1)
    evicted = [p.evict for p in plan(view, "hot")]
    assert evicted.count("x") == 1
    assert sorted(evicted, key=str) == ["x", "y"]


# -- properties: helpers ---------------------------------------------------------------------

POOL = tuple(f"p{n}" for n in range(8))


@st.composite
def clusters(draw: st.DrawFn, *, max_size: int = 8, full: bool = False) -> list[ReplicaSnapshot]:
    """Replicas r00, r01, ... holding models of POOL; with `full`, every slot is taken."""
    reports = []
    for n in range(draw(st.integers(1, max_size))):
        capacity = draw(st.integers(1, 4))
        resident = draw(
            st.lists(
                st.sampled_from(POOL),
                unique=True,
                min_size=capacity if full else 0,
                max_size=capacity,
            )
        )
        loading = [m for m in resident if draw(st.integers(0, 3)) == 0]
        loaded = [m for m in resident if m not in loading]
        reports.append(
            snapshot(
                f"r{n:02}",
                [(m, draw(st.floats(0.0, 60.0)), draw(st.integers(0, 1))) for m in loaded],
                loading=loading,
                capacity=capacity,
                max_ongoing_requests=draw(st.integers(1, 8)),
                draining=draw(st.integers(0, 5)) == 0,
            )
        )
    return reports


def frequencies(view: ClusterView, counts: Sequence[int]) -> None:
    for model_id, count in zip(POOL, counts, strict=False):
        asked(view, model_id, count)


def again(report: ReplicaSnapshot, sequence: int) -> ReplicaSnapshot:
    """The same contents, as a newer report: it cannot know of our dispatches."""
    return snapshot(
        report.replica_id,
        [(e.model_id, e.idle_s, e.in_use) for e in report.models],
        loading=report.loading,
        sequence=sequence,
        capacity=report.capacity,
        max_ongoing_requests=report.max_ongoing_requests,
        draining=report.draining,
    )


# -- property: a burst loads a cold model once -----------------------------------------------


def run_burst(
    reports: list[ReplicaSnapshot],
    requests: int,
    old_reports: list[int | None],
    seed: int,
    demand: Demand,
) -> set[str]:
    """A burst for one cold model through the router's own admission queue; no request
    finishes (the load is still under way). Returns the replicas made to load the model."""
    view = ClusterView(demand=demand)
    for report in reports:
        view.apply_report(report, NOW)
    policy = ModelplexPolicy(seed=seed)
    queue: AdmissionQueue[int] = AdmissionQueue(view, policy, max_queued=10_000)
    loaded_on: set[str] = set()
    for n in range(requests):
        now = NOW + n * 0.001
        actions = queue.arrive(n, "burst", now)
        for _, admitted in actions.dispatched:
            if admitted.cold:
                loaded_on.add(admitted.replica_id)
        for prefetch in actions.prefetches:
            check_prefetch(view, "burst", prefetch)
            loaded_on.add(prefetch.replica.replica_id)
        for _, refusal, _ in actions.refused:
            assert refusal is Refusal.NO_REPLICA
            assert not view.routable_ids
        assert len(loaded_on) <= 1, f"loads on {sorted(loaded_on)}"
        index = old_reports[n] if n < len(old_reports) else None
        if index is not None:
            view.apply_report(again(reports[index % len(reports)], 2 + n), now)
            queue.offer(now)
    return loaded_on


_TWO_IDLE_REPLICAS = [
    snapshot("r00", capacity=2, max_ongoing_requests=1),
    snapshot("r01", capacity=2, max_ongoing_requests=1),
]


@settings(max_examples=100, deadline=None)
@given(
    reports=clusters(max_size=40) | clusters(max_size=40, full=True),
    requests=st.integers(1, 100),
    old_reports=st.lists(st.none() | st.integers(0, 39), max_size=100),
    seed=st.integers(0, 3),
)
def test_a_burst_shorter_than_a_load_never_loads_a_cold_model_twice(
    reports: list[ReplicaSnapshot], requests: int, old_reports: list[int | None], seed: int
) -> None:
    """Loads take long enough that no queue in the burst is worth a second load."""
    run_burst(reports, requests, old_reports, seed, Demand(load_s_guess=1e6))


@settings(max_examples=150, deadline=None)
@given(
    reports=clusters(max_size=40) | clusters(max_size=40, full=True),
    requests=st.integers(1, 100),
    old_reports=st.lists(st.none() | st.integers(0, 39), max_size=100),
    seed=st.integers(0, 3),
)
@example(reports=_TWO_IDLE_REPLICAS, requests=30, old_reports=[], seed=0)
def test_a_burst_never_loads_a_cold_model_twice(
    reports: list[ReplicaSnapshot], requests: int, old_reports: list[int | None], seed: int
) -> None:
    """With the default estimates (1 s loads, 50 ms inferences)."""
    run_burst(reports, requests, old_reports, seed, Demand())


# -- property: a model in use is never evicted -----------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    reports=clusters(max_size=24) | clusters(max_size=24, full=True),
    counts=st.lists(st.integers(0, 5), max_size=len(POOL)),
    data=st.data(),
)
def test_no_decision_ever_evicts_a_model_in_use(
    reports: list[ReplicaSnapshot], counts: list[int], data: st.DataObject
) -> None:
    view = cluster(*reports)
    frequencies(view, counts)
    estimates(view, load_s=data.draw(st.sampled_from([0.01, 1.0]), label="load_s"), infer_s=0.1)
    policy = ModelplexPolicy(seed=data.draw(st.integers(0, 3), label="seed"))
    outstanding: list[tuple[str, str]] = []
    sequence = 2
    steps = data.draw(st.integers(1, 40), label="steps")
    for n in range(steps):
        now = NOW + n * 0.5
        action = data.draw(st.sampled_from(["request", "finish", "report", "copies"]))
        if action == "finish" and outstanding:
            index = data.draw(st.integers(0, len(outstanding) - 1), label="which")
            rid, model_id = outstanding.pop(index)
            view.finish(rid, model_id, now)
        elif action == "report":
            base = data.draw(st.sampled_from(reports), label="replica")
            resident = data.draw(st.lists(st.sampled_from(POOL), unique=True, max_size=4))
            view.apply_report(
                snapshot(
                    base.replica_id,
                    [(m, 1.0, data.draw(st.integers(0, 1), label="in_use")) for m in resident],
                    sequence=sequence,
                    capacity=base.capacity,
                    max_ongoing_requests=base.max_ongoing_requests,
                    draining=base.draining,
                ),
                now,
            )
            sequence += 1
        elif action == "copies":
            model_id = data.draw(st.sampled_from(POOL), label="hot model")
            view.demand.wait_started(model_id, now - 10.0)
            for prefetch in policy.plan_copies(view, model_id, now):
                check_prefetch(view, model_id, prefetch)
                view.prefetch(prefetch.replica.replica_id, model_id, now, evict=prefetch.evict)
            view.demand.wait_ended(model_id)
        else:
            model_id = data.draw(st.sampled_from(("", *POOL, "q0", "q1", "q2")), label="model")
            view.demand.arrived(model_id)
            decision = policy.choose(view, model_id, now)
            check_route(decision)
            if isinstance(decision, Route):
                replica = decision.replica
                before = set(replica.models)
                cold = view.dispatch(replica.replica_id, model_id, now, evict=decision.evict)
                outstanding.append((replica.replica_id, model_id))
                if cold:
                    assert set(replica.models) == before - {decision.evict} | {model_id}
                else:
                    assert decision.evict is None
                    assert set(replica.models) == before
            elif isinstance(decision, Reject):
                assert not view.routable()
            else:
                assert isinstance(decision, Wait)
        for rid, model_id in outstanding:
            if model_id:
                assert view.replicas[rid].models[model_id].in_flight > 0


# -- property: bounded load, and extra copies shed first -------------------------------------


def cold_candidates(view: ClusterView, model_id: str) -> list[ReplicaView]:
    return [r for r in view if can_take_a_new_model(view, r, model_id)]


@settings(max_examples=200, deadline=None)
@given(
    reports=clusters(max_size=16) | clusters(max_size=16, full=True),
    counts=st.lists(st.integers(0, 5), max_size=len(POOL)),
    data=st.data(),
)
def test_cold_placements_respect_the_load_bound_and_shed_extra_copies_first(
    reports: list[ReplicaSnapshot], counts: list[int], data: st.DataObject
) -> None:
    """Up to 16 replicas (no sampling): every cold Route goes to a replica within the bound
    when one can take the model, and evicts a single-copy model only when no replica within
    the bound offers an extra copy of another model."""
    view = cluster(*reports)
    frequencies(view, counts)
    policy = ModelplexPolicy()
    for n in range(data.draw(st.integers(1, 40), label="steps")):
        now = NOW + n * 0.1
        model_id = data.draw(st.sampled_from(("", *POOL, "q0", "q1")), label="model")
        with_room = [r.replica_id for r in view if r.routable and r.has_room]
        load_one: bool = data.draw(st.booleans(), label="load one replica")
        if with_room and load_one:
            view.dispatch(data.draw(st.sampled_from(with_room)), "", now)
            continue
        bound = load_bound(view)
        held_by = set(view.holders.get(model_id, ()))
        candidates = cold_candidates(view, model_id) if model_id else []
        within = [r for r in candidates if r.in_flight <= bound]
        decision = policy.choose(view, model_id, now)
        check_route(decision)
        if not isinstance(decision, Route):
            continue
        replica = decision.replica
        if model_id and replica.replica_id not in held_by:
            assert replica in candidates
            if within:
                assert replica.in_flight <= bound, (replica.in_flight, bound)
            if decision.evict is not None and len(view.holders[decision.evict]) == 1:
                extras = [
                    c
                    for r in within
                    for c in r.models.values()
                    if not c.loading and not c.in_use and loaded_copies(view, c.model_id) > 1
                ]
                assert not extras, f"evicted single {decision.evict}, extras {extras}"
        view.dispatch(replica.replica_id, model_id, now, evict=decision.evict)


# -- determinism -----------------------------------------------------------------------------


def _workload(seed: int, replicas: int) -> list[object]:
    """Drive a view and a policy through a random but seeded sequence of calls; return every
    decision, as plain data."""
    rng = random.Random(seed)
    view = ClusterView()
    for n in range(replicas):
        resident = rng.sample(POOL, rng.randint(0, 2))
        view.apply_report(
            snapshot(f"r{n:02}", resident, capacity=2, max_ongoing_requests=rng.randint(1, 4)),
            NOW,
        )
    policy = ModelplexPolicy(seed=seed)
    decisions: list[object] = []
    outstanding: list[tuple[str, str]] = []
    models = (*POOL, *(f"q{n}" for n in range(12)), "")
    for step in range(300):
        now = NOW + step * 0.05
        if outstanding and rng.random() < 0.4:
            rid, model_id = outstanding.pop(rng.randrange(len(outstanding)))
            view.finish(rid, model_id, now)
            continue
        model_id = rng.choice(models)
        view.demand.arrived(model_id)
        decision = policy.choose(view, model_id, now)
        if isinstance(decision, Route):
            rid = decision.replica.replica_id
            decisions.append(("route", model_id, rid, decision.evict))
            view.dispatch(rid, model_id, now, evict=decision.evict)
            outstanding.append((rid, model_id))
        else:
            decisions.append((type(decision).__name__, model_id))
            if model_id:
                view.demand.wait_started(model_id, now - 5.0)
                copies = policy.plan_copies(view, model_id, now)
                view.demand.wait_ended(model_id)
                decisions.append([(p.replica.replica_id, p.model_id, p.evict) for p in copies])
                for p in copies:
                    view.prefetch(p.replica.replica_id, model_id, now, evict=p.evict)
    return decisions


@pytest.mark.parametrize("replicas", [3, 12, 40])
def test_the_same_calls_with_the_same_seed_give_the_same_decisions(replicas: int) -> None:
    first = _workload(seed=7, replicas=replicas)
    assert any(d[0] == "route" for d in first if isinstance(d, tuple))
    assert _workload(seed=7, replicas=replicas) == first


def test_choosing_changes_nothing_in_the_view() -> None:
    view = cluster(
        snapshot("r1", [("x", 5.0), ("y", 1.0)], capacity=2),
        snapshot("r2", [("z", 9.0), ("w", 2.0)], capacity=2),
    )
    asked(view, "y", 3)

    def state() -> object:
        return (
            {m: set(ids) for m, ids in view.holders.items()},
            {r.replica_id: (r.in_flight, dict(r.models)) for r in view},
            dict(view.free),
            set(view.routable_ids),
            view.in_flight,
        )

    before = state()
    first = choose(view, "m")
    assert choose(view, "m") == first
    assert plan(view, "m") == []
    assert state() == before


_HASH_SEED_SCRIPT = """
import sys
from common.wire import ModelEntry, ReplicaSnapshot
from router.policy import ModelplexPolicy
from router.view import ClusterView

def report(rid, models, max_ongoing):
    return ReplicaSnapshot(
        replica_id=rid, incarnation="i", sequence=1, url="http://x.test:1", capacity=1,
        models=tuple(ModelEntry(model_id=m, idle_s=1.0, in_use=0) for m in models),
        loading=(), in_flight=0, max_ongoing_requests=max_ongoing, draining=False,
    )

view = ClusterView()
if sys.argv[1] == "choose":
    for n in range(6):
        view.apply_report(report(f"r{n}", ["m"], 4), 0.0)
    print(ModelplexPolicy().choose(view, "m", 0.0).replica.replica_id)
else:
    view.apply_report(report("a", ["hot"], 1), 0.0)
    view.apply_report(report("b", ["hot"], 8), 0.0)
    for n in range(4):
        view.apply_report(report(f"f{n}", [], 1), 0.0)
    view.dispatch("a", "hot", 1.0)
    for _ in range(8):
        view.dispatch("b", "hot", 1.0)
    for _ in range(7):
        view.demand.wait_started("hot", 1.0)
    print([p.replica.replica_id for p in ModelplexPolicy().plan_copies(view, "hot", 5.0)])
"""


@pytest.mark.parametrize(
    "call",
    [
        "choose",
        pytest.param(
            "plan_copies",
        ),
    ],
)
def test_decisions_do_not_depend_on_string_hashing(call: str) -> None:
    root = Path(__file__).resolve().parents[2]
    outputs = set()
    for hash_seed in range(6):
        result = subprocess.run(
            [sys.executable, "-c", _HASH_SEED_SCRIPT, call],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.add(result.stdout.strip())
    assert len(outputs) == 1, outputs


# -- sparing popular models --------------------------------------------------------------------


def popular_and_busy_cheap() -> ClusterView:
    """r1 holds a popular model, not in use (r1 serves a request without a model id, so it is
    not idle); r2's only model is rarely asked for but in use."""
    view = cluster(
        snapshot("r1", [("popular", 5.0)], capacity=1),
        snapshot("r2", [("rare", 1.0)], capacity=1),
    )
    busy(view, "r1", 1)
    busy(view, "r2", 1, "rare")
    asked(view, "popular", 40)
    asked(view, "rare", 1)
    asked(view, "m", 1)
    return view


def test_a_popular_model_is_spared_while_a_cheaper_one_is_about_to_free() -> None:
    view = popular_and_busy_cheap()
    decision = choose(view, "m")
    assert isinstance(decision, Wait)
    assert decision.for_slot
    view.finish("r2", "rare", NOW)
    assert routed_to(choose(view, "m")) == ("r2", "rare")


def test_sparing_a_popular_model_lasts_only_a_few_loads() -> None:
    view = popular_and_busy_cheap()
    estimates(view, load_s=1.0, infer_s=0.01)
    policy = ModelplexPolicy(patience=3.0)
    view.demand.wait_started("m", NOW)
    assert policy.choose(view, "m", NOW + 2.9) == Wait(for_slot=True, until=NOW + 3.0)
    assert routed_to(policy.choose(view, "m", NOW + 3.1)) == ("r1", "popular")


def test_a_cold_request_waits_for_a_cheaper_slot_about_one_load_time() -> None:
    view = popular_and_busy_cheap()
    estimates(view, load_s=1.0, infer_s=0.01)
    policy = ModelplexPolicy()
    view.demand.wait_started("m", NOW)
    decision = policy.choose(view, "m", NOW + 1.2)
    assert isinstance(decision, Wait)
    assert decision.for_slot
    assert decision.until == pytest.approx(NOW + 1.25)
    assert routed_to(policy.choose(view, "m", NOW + 1.3)) == ("r1", "popular")


def test_each_slot_about_to_free_is_waited_for_by_one_request_only() -> None:
    view = popular_and_busy_cheap()
    policy = ModelplexPolicy()
    assert isinstance(policy.choose(view, "m", NOW), Wait)
    view.demand.slot_waiters = 1  # an earlier request in the queue waits for r2's slot
    assert routed_to(policy.choose(view, "m", NOW)) == ("r1", "popular")


def test_a_slot_that_frees_later_than_the_wait_bound_is_not_waited_for() -> None:
    view = popular_and_busy_cheap()
    estimates(view, load_s=1.0, infer_s=0.01)
    view.dispatch("r2", "rare", NOW + 5.0)  # r2's model is in use until after NOW + 5
    view.finish("r2", "rare", NOW + 5.0)
    assert routed_to(ModelplexPolicy().choose(view, "m", NOW)) == ("r1", "popular")


def test_no_request_waits_while_a_replica_that_could_load_it_is_idle() -> None:
    view = cluster(
        snapshot("r1", [("popular", 5.0)], capacity=1),
        snapshot("r2", [("rare", 1.0)], capacity=1),
        snapshot("r3", [("liked", 5.0)], capacity=1),
    )
    busy(view, "r2", 1, "rare")
    busy(view, "r1", 1)  # r1 serves a request without a model id: not idle
    asked(view, "popular", 40)
    asked(view, "liked", 50)
    asked(view, "rare", 1)
    asked(view, "m", 1)
    assert routed_to(choose(view, "m")) == ("r3", "liked")


def test_a_model_asked_for_as_often_as_the_victim_is_not_made_to_wait() -> None:
    view = popular_and_busy_cheap()
    asked(view, "m", 39)
    assert routed_to(choose(view, "m")) == ("r1", "popular")


# -- load concurrency --------------------------------------------------------------------------


def test_a_cold_model_goes_where_a_loader_is_free() -> None:
    view = cluster(
        snapshot("r1", ["x"], capacity=3, max_concurrent_loads=1),
        snapshot("r2", ["y", "z"], capacity=3, max_concurrent_loads=1),
    )
    estimates(view, load_s=1.0, infer_s=0.01)
    view.dispatch("r1", "loading", NOW)  # r1's only loader is busy until NOW + 1
    assert routed_to(choose(view, "m")) == ("r2", None)


def test_with_every_loader_busy_a_cold_request_waits_in_the_router_for_the_first_to_free() -> None:
    view = cluster(
        snapshot("r1", ["x"], capacity=3, max_concurrent_loads=1),
        snapshot("r2", ["y"], capacity=3, max_concurrent_loads=1),
    )
    estimates(view, load_s=1.0, infer_s=0.01)
    view.dispatch("r1", "a", NOW - 0.5)  # r1's loader frees at NOW + 0.5
    view.dispatch("r2", "b", NOW - 0.2)  # r2's at NOW + 0.8
    decision = ModelplexPolicy().choose(view, "m", NOW)
    assert decision == Wait(for_slot=True, until=pytest.approx(NOW + 0.5))
    assert routed_to(ModelplexPolicy().choose(view, "m", NOW + 0.5)) == ("r1", None)
