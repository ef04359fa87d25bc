"""The cluster view: reports, optimistic dispatches, failures, and the model -> replicas index."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from common.wire import LoadFailure, ReplicaSnapshot
from router.breaker import CircuitBreaker
from router.view import (
    ChannelClosed,
    Claimed,
    ClusterView,
    ModelCopy,
    ReplicaStatus,
    ReportOutcome,
)

from reports import NOW, cluster, snapshot


def expected_index(view: ClusterView) -> dict[str, set[str]]:
    index: dict[str, set[str]] = {}
    for replica in view:
        for model_id in replica.models:
            index.setdefault(model_id, set()).add(replica.replica_id)
    return index


def held(view: ClusterView, replica_id: str) -> set[str]:
    return set(view.replicas[replica_id].models)


# -- reports ---------------------------------------------------------------------------------


def test_first_report_registers_the_replica_and_indexes_its_models() -> None:
    view = ClusterView()
    outcome = view.apply_report(
        snapshot("r1", ["a", "b"], capacity=2, max_ongoing_requests=5, in_flight=3), now=10.0
    )
    assert outcome is ReportOutcome.NEW_REPLICA
    replica = view.replicas["r1"]
    assert (replica.capacity, replica.max_ongoing_requests) == (2, 5)
    assert replica.reported_in_flight == 3
    assert replica.in_flight == 0
    assert replica.status is ReplicaStatus.HEALTHY
    assert replica.last_report_at == 10.0
    assert view.holders == {"a": {"r1"}, "b": {"r1"}}
    assert [r.replica_id for r in view.holders_of("a")] == ["r1"]
    assert view.holders_of("nope") == []


def test_newer_sequence_replaces_the_models() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a", "b"], sequence=1), now=0.0)
    outcome = view.apply_report(snapshot("r1", ["b", "c"], sequence=2, draining=True), now=1.0)
    assert outcome is ReportOutcome.APPLIED
    assert held(view, "r1") == {"b", "c"}
    assert view.holders == {"b": {"r1"}, "c": {"r1"}}
    assert view.replicas["r1"].status is ReplicaStatus.DRAINING
    assert view.replicas["r1"].sequence == 2


def test_a_report_sets_the_load_limit_and_a_stale_one_does_not() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1"), now=0.0)
    assert view.replicas["r1"].max_concurrent_loads is None
    view.apply_report(snapshot("r1", sequence=2, max_concurrent_loads=1), now=1.0)
    assert view.replicas["r1"].max_concurrent_loads == 1
    view.apply_report(snapshot("r1", sequence=1), now=2.0)  # out of order: ignored
    assert view.replicas["r1"].max_concurrent_loads == 1
    view.apply_report(snapshot("r1", sequence=3), now=3.0)
    assert view.replicas["r1"].max_concurrent_loads is None


@pytest.mark.parametrize("sequence", [5, 4, 0])
def test_a_report_that_is_not_newer_is_ignored(sequence: int) -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"], sequence=5), now=0.0)
    outcome = view.apply_report(
        snapshot("r1", ["z"], sequence=sequence, draining=True, capacity=9), now=1.0
    )
    assert outcome is ReportOutcome.OUT_OF_ORDER
    replica = view.replicas["r1"]
    assert held(view, "r1") == {"a"}
    assert view.holders == {"a": {"r1"}}
    assert (replica.sequence, replica.capacity, replica.draining) == (5, 3, False)
    assert replica.last_report_at == 0.0


def test_a_late_report_of_a_replaced_process_changes_nothing() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"], sequence=40, incarnation="old"), now=0.0)
    view.apply_report(snapshot("r1", ["b"], sequence=0, incarnation="new"), now=1.0)
    late = snapshot("r1", ["a", "z"], sequence=41, incarnation="old")  # sent before it died
    assert view.apply_report(late, now=2.0) is ReportOutcome.OUT_OF_ORDER
    assert held(view, "r1") == {"b"}
    assert view.replicas["r1"].incarnation == "new"


def test_reported_load_failures_are_remembered_until_a_load_or_a_restart_clears_them() -> None:
    view = ClusterView()
    failed = LoadFailure(model_id="bad", message="OSError: gone", age_s=2.0)
    view.apply_report(
        dataclasses.replace(snapshot("r1", sequence=1), load_failures=(failed,)), now=10.0
    )
    assert [(r.model_id, r.replica_id, r.at) for r in view.load_failures.records(10.0)] == [
        ("bad", "r1", 8.0)  # when it failed, on the router's clock
    ]
    view.apply_report(snapshot("r1", ["bad"], sequence=2), now=11.0)  # it loaded after all
    assert view.load_failures.records(11.0) == []
    view.apply_report(
        dataclasses.replace(snapshot("r1", sequence=3), load_failures=(failed,)), now=12.0
    )
    view.apply_report(snapshot("r1", incarnation="restarted"), now=13.0)
    assert view.load_failures.records(13.0) == []


def test_a_new_incarnation_forgets_what_the_old_process_held() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a", "b"], sequence=40, incarnation="old"), now=0.0)
    view.dispatch("r1", "pending", now=0.5)
    outcome = view.apply_report(snapshot("r1", ["c"], sequence=0, incarnation="new"), now=1.0)
    assert outcome is ReportOutcome.NEW_INCARNATION
    assert held(view, "r1") == {"c"}
    assert view.holders == {"c": {"r1"}}
    replica = view.replicas["r1"]
    assert (replica.incarnation, replica.sequence) == ("new", 0)
    # The new process counts its own sequence from scratch.
    assert view.apply_report(snapshot("r1", ["d"], sequence=1, incarnation="new"), now=2.0) is (
        ReportOutcome.APPLIED
    )


def test_lru_order_and_router_time_come_from_idle_s() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", [("a", 5.0), ("b", 1.0), ("c", 3.0)]), now=100.0)
    replica = view.replicas["r1"]
    assert {m: c.last_used for m, c in replica.models.items()} == {"a": 95.0, "b": 99.0, "c": 97.0}
    assert [c.model_id for c in replica.lru_models()] == ["a", "c", "b"]
    assert replica.eviction_candidate() is not None
    assert replica.eviction_candidate().model_id == "a"  # type: ignore[union-attr]


def test_a_report_never_makes_a_model_look_older_than_our_last_use() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", [("a", 0.0)], sequence=1), now=0.0)
    view.dispatch("r1", "a", now=10.0)
    view.apply_report(snapshot("r1", [("a", 5.0)], sequence=2), now=11.0)
    assert view.replicas["r1"].models["a"].last_used == 10.0
    assert view.replicas["r1"].models["a"].in_flight == 1


def test_loading_models_are_held_but_never_the_eviction_candidate() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", [("a", 1.0)], loading=["b"], capacity=2), now=50.0)
    replica = view.replicas["r1"]
    assert replica.models["b"].loading
    assert not replica.models["a"].loading
    assert view.holders == {"a": {"r1"}, "b": {"r1"}}
    assert replica.eviction_candidate().model_id == "a"  # type: ignore[union-attr]
    view.apply_report(snapshot("r1", [("b", 0.0, 1)], loading=["a"], sequence=2), now=51.0)
    assert replica.eviction_candidate() is None
    view.apply_report(snapshot("r1", [("a", 0.0), ("b", 0.0)], sequence=3), now=52.0)
    assert not replica.models["a"].loading
    assert not replica.models["b"].loading


def test_reported_in_use_models_are_not_eviction_candidates() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", [("a", 9.0, 2), ("b", 1.0, 0)]), now=10.0)
    replica = view.replicas["r1"]
    assert replica.models["a"].in_use
    assert replica.eviction_candidate().model_id == "b"  # type: ignore[union-attr]


# -- dispatch and finish ---------------------------------------------------------------------


def test_dispatching_a_cold_model_makes_the_replica_a_holder_at_once() -> None:
    view = ClusterView(pending_grace_s=2.0)
    view.apply_report(snapshot("r1", ["a"]), now=0.0)
    assert view.dispatch("r1", "m", now=3.0) is True
    copy = view.replicas["r1"].models["m"]
    assert view.holders["m"] == {"r1"}
    assert copy.loading
    assert (copy.in_flight, copy.last_used, copy.pending_until) == (1, 3.0, 5.0)
    assert view.replicas["r1"].in_flight == 1


def test_dispatching_a_warm_model_loads_nothing_and_refreshes_its_use() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", [("a", 7.0)]), now=10.0)
    assert view.dispatch("r1", "a", now=12.0) is False
    assert view.dispatch("r1", "a", now=13.0) is False
    copy = view.replicas["r1"].models["a"]
    assert (copy.in_flight, copy.last_used) == (2, 13.0)
    assert view.replicas["r1"].in_flight == 2
    assert [c.model_id for c in view.replicas["r1"].lru_models()][-1] == "a"


def test_a_request_without_a_model_counts_in_flight_only() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"]), now=0.0)
    assert view.dispatch("r1", "", now=1.0) is False
    assert view.replicas["r1"].in_flight == 1
    assert "" not in view.holders
    view.finish("r1", "", now=2.0)
    assert view.replicas["r1"].in_flight == 0


def test_a_cold_dispatch_at_capacity_drops_the_oldest_model_not_in_use() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", [("a", 9.0, 1), ("b", 5.0), ("c", 1.0)], capacity=3), now=10.0)
    assert view.dispatch("r1", "m", now=11.0) is True
    assert held(view, "r1") == {"a", "c", "m"}
    assert "b" not in view.holders
    # Our own in-flight request pins a model the same way a reported one does.
    view.dispatch("r1", "c", now=12.0)
    view.finish("r1", "m", now=12.5)
    view.apply_report(snapshot("r1", [("a", 9.0, 1), ("c", 0.0), ("m", 0.0)], sequence=2), now=13.0)
    assert view.dispatch("r1", "n", now=14.0) is True
    assert held(view, "r1") == {"a", "c", "n"}


def test_a_cold_dispatch_drops_the_model_it_was_told_to_evict() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", [("a", 9.0), ("b", 1.0)], capacity=2), now=10.0)
    assert view.dispatch("r1", "m", now=11.0, evict="b") is True
    assert held(view, "r1") == {"a", "m"}
    assert view.holders == {"a": {"r1"}, "m": {"r1"}}


def test_an_evict_that_is_already_gone_falls_back_to_the_replicas_own_choice() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", [("a", 9.0), ("b", 1.0)], capacity=2), now=10.0)
    view.dispatch("r1", "m", now=11.0, evict="zzz")
    assert held(view, "r1") == {"b", "m"}


def test_a_cold_dispatch_with_a_free_slot_drops_nothing() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a", "b"], capacity=3), now=10.0)
    view.dispatch("r1", "m", now=11.0)
    assert held(view, "r1") == {"a", "b", "m"}


def test_a_cold_dispatch_at_capacity_with_everything_in_use_drops_nothing() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", [("a", 9.0, 1)], loading=["b"], capacity=2), now=10.0)
    view.dispatch("r1", "m", now=11.0)
    assert held(view, "r1") == {"a", "b", "m"}


def test_finish_decrements_in_flight_and_never_below_zero() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"]), now=0.0)
    view.dispatch("r1", "a", now=1.0)
    view.dispatch("r1", "a", now=1.0)
    view.finish("r1", "a", now=2.0)
    replica = view.replicas["r1"]
    assert (replica.in_flight, replica.models["a"].in_flight) == (1, 1)
    for _ in range(3):
        view.finish("r1", "a", now=3.0)
    assert (replica.in_flight, replica.models["a"].in_flight) == (0, 0)
    assert replica.models["a"].last_used == 3.0
    view.finish("r1", "not-held", now=4.0)
    view.finish("unknown", "a", now=4.0)
    assert replica.in_flight == 0


# -- what every router reads alike: hits, the reported last use, the load ------------------


def copy_of(view: ClusterView, model_id: str, replica_id: str = "r1") -> ModelCopy:
    return view.replicas[replica_id].models[model_id]


def test_hits_are_taken_from_the_report() -> None:
    view = cluster(snapshot("r1", [("a", 5.0, 0, 12.5), ("b", 1.0, 0, 0.0)]))
    assert copy_of(view, "a").hits == 12.5
    assert copy_of(view, "b").hits == 0.0  # the replica reports hits: none for b


def test_a_replica_that_reports_no_hits_gives_none_not_zero() -> None:
    """An older replica (or one whose hits all faded): its models' worth is unknown."""
    view = cluster(snapshot("r1", [("a", 5.0), ("b", 1.0)]))
    assert (copy_of(view, "a").hits, copy_of(view, "b").hits) == (None, None)


def test_each_report_replaces_the_hits_of_the_last() -> None:
    view = cluster(snapshot("r1", [("a", 5.0, 0, 12.5)], sequence=1))
    view.apply_report(snapshot("r1", [("a", 5.0, 0, 3.0)], sequence=2), NOW + 1)
    assert copy_of(view, "a").hits == 3.0
    view.apply_report(snapshot("r1", [("a", 5.0, 0)], sequence=3), NOW + 2)
    assert copy_of(view, "a").hits is None
    view.apply_report(snapshot("r1", [("a", 5.0, 0, 9.0)], sequence=2), NOW + 3)  # late
    assert copy_of(view, "a").hits is None


def test_this_routers_requests_do_not_change_the_reported_hits() -> None:
    view = cluster(snapshot("r1", [("a", 5.0, 0, 4.0)]))
    for _ in range(3):
        view.dispatch("r1", "a", NOW + 1)
    view.finish("r1", "a", NOW + 2)
    assert copy_of(view, "a").hits == 4.0
    view.dispatch("r1", "new", NOW + 3)  # placed by this router: no report of it yet
    assert copy_of(view, "new").hits is None


def test_the_reported_last_use_is_the_reports_not_this_routers_requests() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", [("a", 30.0), ("b", 10.0)], sequence=1), NOW)
    assert copy_of(view, "a").reported_used == NOW - 30.0
    assert copy_of(view, "b").reported_used == NOW - 10.0
    view.dispatch("r1", "a", NOW + 1)
    view.finish("r1", "a", NOW + 2)
    assert copy_of(view, "a").last_used == NOW + 2  # this router's own view moved
    assert copy_of(view, "a").reported_used == NOW - 30.0  # what every router reads did not
    view.apply_report(snapshot("r1", [("a", 0.5), ("b", 20.0)], sequence=2), NOW + 5)
    assert copy_of(view, "a").reported_used == NOW + 4.5
    # b: the replica says 20 s idle now, not 10 s as before; the report is taken as it is
    assert copy_of(view, "b").reported_used == NOW - 15.0


def test_the_reported_last_use_of_a_report_older_than_our_last_request_is_still_the_reports() -> (
    None
):
    view = cluster(snapshot("r1", [("a", 30.0)], sequence=1))
    view.dispatch("r1", "a", NOW + 10)
    view.apply_report(snapshot("r1", [("a", 20.0)], sequence=2), NOW + 11)  # built before it
    assert copy_of(view, "a").last_used == NOW + 10
    assert copy_of(view, "a").reported_used == NOW - 9.0


def test_a_model_this_router_places_was_last_used_when_it_placed_it() -> None:
    view = cluster(snapshot("r1", ["a"], capacity=3))
    view.dispatch("r1", "m", NOW + 1)
    view.prefetch("r1", "p", NOW + 2)
    assert copy_of(view, "m").reported_used == NOW + 1
    assert copy_of(view, "p").reported_used == NOW + 2
    view.dispatch("r1", "m", NOW + 3)
    assert copy_of(view, "m").reported_used == NOW + 1


def test_the_load_is_the_reported_in_flight_plus_this_routers_changes_since() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"], in_flight=3, sequence=1), NOW)
    replica = view.replicas["r1"]
    assert replica.load == 3
    view.dispatch("r1", "a", NOW)
    view.dispatch("r1", "a", NOW)
    assert replica.load == 5
    view.finish("r1", "a", NOW)
    assert replica.load == 4
    # The next report counts the one of ours still in flight among its 6: nothing added.
    view.apply_report(snapshot("r1", ["a"], in_flight=6, sequence=2), NOW + 1)
    assert replica.load == 6
    view.finish("r1", "a", NOW + 1)  # the one the report counted
    assert replica.load == 5
    view.dispatch("r1", "", NOW + 1)  # a request without a model counts too
    assert replica.load == 6


def test_the_load_is_never_negative() -> None:
    """Two of ours went out just before a report built without them (in_flight 0): when they
    end, the load would be 0 + 0 - 2."""
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"], in_flight=0, sequence=1), NOW)
    view.dispatch("r1", "a", NOW)
    view.dispatch("r1", "a", NOW)
    view.apply_report(snapshot("r1", ["a"], in_flight=0, sequence=2), NOW + 0.01)
    replica = view.replicas["r1"]
    assert replica.load == 0
    view.finish("r1", "a", NOW + 1)
    view.finish("r1", "a", NOW + 1)
    assert replica.load == 0
    view.dispatch("r1", "a", NOW + 2)
    # One is in flight, but by the counts alone it is 0 reported - 2 ended + 1 sent: the
    # next report corrects it. All that is promised is that it never goes below zero.
    assert replica.load >= 0


def test_the_load_of_other_routers_is_read_from_the_report_alike() -> None:
    """Two routers with different traffic of their own read the same load from one report."""
    quiet, busy = ClusterView(), ClusterView()
    busy.apply_report(snapshot("r1", ["a"], in_flight=0, sequence=1), NOW)
    for _ in range(3):
        busy.dispatch("r1", "a", NOW)
    for view in (quiet, busy):
        view.apply_report(snapshot("r1", ["a"], in_flight=5, sequence=2), NOW + 1)
    assert quiet.replicas["r1"].load == busy.replicas["r1"].load == 5


# -- a report that predates a dispatch -------------------------------------------------------


def _with_pending(grace_s: float = 2.0) -> ClusterView:
    view = ClusterView(pending_grace_s=grace_s)
    view.apply_report(snapshot("r1", ["a"], sequence=1), now=0.0)
    view.dispatch("r1", "m", now=0.0)
    return view


def test_an_old_report_does_not_erase_a_placement_while_its_request_is_in_flight() -> None:
    view = _with_pending()
    view.apply_report(snapshot("r1", ["a"], sequence=2), now=100.0)
    assert "m" in held(view, "r1")
    assert view.holders["m"] == {"r1"}
    assert view.replicas["r1"].models["m"].in_flight == 1


def test_an_old_report_does_not_erase_a_placement_within_the_grace_after_its_answer() -> None:
    view = _with_pending(grace_s=2.0)
    view.finish("r1", "m", now=10.0)
    view.apply_report(snapshot("r1", ["a"], sequence=2), now=10.02)  # sent before the answer
    assert view.holders["m"] == {"r1"}


def test_a_report_erases_the_placement_once_the_request_and_the_grace_are_over() -> None:
    """After its answer a placement is kept only through the reports that may predate it
    (`answered_grace_s`), not for the whole dispatch grace: a report after that without the
    model means it was evicted since, by another router's request say, and the view follows
    at once rather than send requests there for seconds."""
    view = _with_pending(grace_s=2.0)
    view.apply_report(snapshot("r1", ["a"], sequence=2), now=1.0)
    view.finish("r1", "m", now=1.5)
    view.apply_report(snapshot("r1", ["a"], sequence=3), now=1.52)
    assert "m" in held(view, "r1")
    view.apply_report(snapshot("r1", ["a"], sequence=4), now=1.7)
    assert held(view, "r1") == {"a"}
    assert "m" not in view.holders


def test_a_placement_the_replica_confirmed_leaves_with_the_next_report_without_it() -> None:
    view = _with_pending(grace_s=2.0)
    view.finish("r1", "m", now=0.5)
    view.apply_report(snapshot("r1", ["a", "m"], sequence=2), now=1.0)
    view.apply_report(snapshot("r1", ["a"], sequence=3), now=1.5)
    assert "m" not in view.holders


def test_an_old_report_listing_the_model_as_loading_keeps_our_in_flight_count() -> None:
    view = _with_pending()
    view.apply_report(snapshot("r1", ["a"], loading=["m"], sequence=2), now=1.0)
    copy = view.replicas["r1"].models["m"]
    assert copy.loading
    assert copy.in_flight == 1


# -- failures --------------------------------------------------------------------------------


def test_mark_down_unindexes_the_replica_and_takes_it_out_of_routing() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a", "b"]), now=0.0)
    view.apply_report(snapshot("r2", ["b"]), now=0.0)
    view.dispatch("r1", "a", now=0.5)
    assert view.mark_down("r1", "inc-1") is True
    replica = view.replicas["r1"]
    assert replica.status is ReplicaStatus.DOWN
    assert not replica.routable
    assert replica.models == {}
    assert view.holders == {"b": {"r2"}}
    assert [r.replica_id for r in view.routable()] == ["r2"]
    view.finish("r1", "a", now=1.0)
    assert replica.in_flight == 0


def test_mark_down_without_incarnation_marks_whatever_process_is_there() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"]), now=0.0)
    assert view.mark_down("r1") is True
    assert view.replicas["r1"].down


def test_mark_down_of_a_stale_incarnation_or_unknown_replica_does_nothing() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"], incarnation="old"), now=0.0)
    view.apply_report(snapshot("r1", ["b"], incarnation="new"), now=1.0)
    assert view.mark_down("r1", "old") is False
    assert view.mark_down("nobody") is False
    assert view.replicas["r1"].status is ReplicaStatus.HEALTHY
    assert view.holders == {"b": {"r1"}}


def test_a_later_report_revives_a_replica_marked_down() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"], sequence=1), now=0.0)
    view.mark_down("r1")
    assert view.apply_report(snapshot("r1", ["a"], sequence=1), now=1.0) is (
        ReportOutcome.OUT_OF_ORDER
    )
    assert view.replicas["r1"].down
    assert view.apply_report(snapshot("r1", ["a", "c"], sequence=2), now=2.0) is (
        ReportOutcome.APPLIED
    )
    assert view.replicas["r1"].status is ReplicaStatus.HEALTHY
    assert view.holders == {"a": {"r1"}, "c": {"r1"}}


def test_expire_marks_quiet_replicas_stale_once_and_a_report_clears_it() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"], sequence=1), now=0.0)
    view.apply_report(snapshot("r2", ["a"]), now=4.0)
    view.apply_report(snapshot("r3", ["a"]), now=0.0)
    view.mark_down("r3")
    assert view.expire(now=5.0, timeout_s=5.0) == []
    assert view.expire(now=5.5, timeout_s=5.0) == ["r1"]
    assert view.replicas["r1"].status is ReplicaStatus.STALE
    assert view.replicas["r3"].status is ReplicaStatus.DOWN
    assert not view.replicas["r1"].routable
    assert view.holders["a"] == {"r1", "r2"}  # stale is not gone: its models stay indexed
    assert view.expire(now=6.0, timeout_s=5.0) == []
    view.apply_report(snapshot("r1", ["a"], sequence=2), now=7.0)
    assert view.replicas["r1"].status is ReplicaStatus.HEALTHY
    assert view.expire(now=11.0, timeout_s=5.0) == ["r2"]


def test_a_closed_channel_of_a_drained_replica_means_it_left() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"], draining=True), now=0.0)
    view.apply_report(snapshot("r2", ["a"]), now=0.0)
    assert view.channel_closed("r1", "inc-1") is ChannelClosed.LEFT
    assert "r1" not in view.replicas
    assert view.holders == {"a": {"r2"}}


def test_a_closed_channel_with_our_requests_in_flight_or_no_drain_means_down() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"], draining=True), now=0.0)
    view.apply_report(snapshot("r2", ["a"]), now=0.0)
    view.dispatch("r1", "a", now=0.5)  # in flight while it drains: not gone until answered
    assert view.channel_closed("r1", "inc-1") is ChannelClosed.DOWN
    assert view.channel_closed("r2", "inc-1") is ChannelClosed.DOWN
    assert view.replicas["r1"].status is ReplicaStatus.DOWN
    assert view.replicas["r2"].status is ReplicaStatus.DOWN
    assert view.holders == {}


def test_a_closed_channel_of_an_old_incarnation_or_unknown_replica_changes_nothing() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"], incarnation="old"), now=0.0)
    view.apply_report(snapshot("r1", ["b"], incarnation="new"), now=1.0)
    version = view.version
    assert view.channel_closed("r1", "old") is ChannelClosed.STALE_NEWS
    assert view.channel_closed("nobody", "x") is ChannelClosed.STALE_NEWS
    assert view.version == version
    assert view.replicas["r1"].status is ReplicaStatus.HEALTHY


def test_a_superseded_sender_is_taken_out_of_routing_but_not_its_successor() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"], incarnation="one"), now=0.0)
    assert view.superseded("r1", "one") is True
    assert view.replicas["r1"].status is ReplicaStatus.DOWN
    view.apply_report(snapshot("r1", ["a"], incarnation="two"), now=1.0)
    assert view.superseded("r1", "one") is False
    assert view.replicas["r1"].status is ReplicaStatus.HEALTHY


def test_forget_departed_drops_only_replicas_out_of_routing_for_long_enough() -> None:
    view = ClusterView()
    view.apply_report(snapshot("down", ["a"]), now=0.0)
    view.apply_report(snapshot("stale", ["b"]), now=0.0)
    view.apply_report(snapshot("quiet-but-healthy", ["c"]), now=0.0)
    view.apply_report(snapshot("recent", ["d"]), now=50.0)
    view.mark_down("down")
    view.mark_down("recent")
    view.replicas["stale"].stale = True
    assert view.forget_departed(now=60.0, after_s=60.0) == []
    assert sorted(view.forget_departed(now=61.0, after_s=60.0)) == ["down", "stale"]
    assert sorted(view.replicas) == ["quiet-but-healthy", "recent"]
    assert view.holders == {"c": {"quiet-but-healthy"}}


# -- circuit breaking ------------------------------------------------------------------------


def test_failed_requests_in_a_row_take_a_reporting_replica_out_until_a_probe_answers() -> None:
    view = ClusterView(breaker=CircuitBreaker(failure_threshold=2, cooldown_s=1.0))
    view.apply_report(snapshot("r1", ["a"], sequence=1), now=0.0)
    view.apply_report(snapshot("r2", ["a"]), now=0.0)
    assert view.request_failed("r1", now=0.1) is False
    assert view.request_failed("r1", now=0.2) is True
    replica = view.replicas["r1"]
    assert replica.status is ReplicaStatus.CIRCUIT_OPEN
    view.apply_report(snapshot("r1", ["a"], sequence=2), now=0.5)  # reports do not reopen it
    assert not replica.routable
    assert view.routable_ids == {"r2"}
    assert view.holders["a"] == {"r1", "r2"}  # its models stay known
    assert view.cool_down(now=1.1) == []
    assert view.cool_down(now=1.2) == ["r1"]
    assert replica.status is ReplicaStatus.PROBING
    assert view.with_room == {"r1", "r2"}
    view.dispatch("r1", "a", now=1.3)
    assert not replica.has_room  # one probe at a time
    assert view.with_room == {"r2"}
    view.finish("r1", "a", now=1.4)
    assert view.request_answered("r1") is True
    assert replica.status is ReplicaStatus.HEALTHY
    assert view.with_room == {"r1", "r2"}


def test_a_restarted_replica_starts_with_a_closed_breaker() -> None:
    view = ClusterView(breaker=CircuitBreaker(failure_threshold=1))
    view.apply_report(snapshot("r1", incarnation="one"), now=0.0)
    view.request_failed("r1", now=0.1)
    assert view.replicas["r1"].status is ReplicaStatus.CIRCUIT_OPEN
    view.apply_report(snapshot("r1", incarnation="two"), now=0.2)
    assert view.replicas["r1"].status is ReplicaStatus.HEALTHY
    assert view.replicas["r1"].breaker.failure_threshold == 1
    assert view.request_failed("nobody", now=0.3) is False
    assert view.request_answered("nobody") is False


def test_forget_removes_the_replica_and_its_index_entries() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a", "b"]), now=0.0)
    view.apply_report(snapshot("r2", ["b"]), now=0.0)
    view.dispatch("r1", "m", now=1.0)
    view.forget("r1")
    view.forget("nobody")
    assert "r1" not in view.replicas
    assert view.holders == {"b": {"r2"}}
    view.finish("r1", "m", now=2.0)
    assert view.apply_report(snapshot("r1", ["z"]), now=3.0) is ReportOutcome.NEW_REPLICA
    assert view.replicas["r1"].in_flight == 0


# -- property: the index always matches the replicas -----------------------------------------

REPLICA_IDS = ("r0", "r1", "r2")
MODEL_IDS = ("m0", "m1", "m2", "m3", "m4")
INCARNATIONS = ("i0", "i1")
HITS = (0.0, 0.0, 1.0, 7.5)


@st.composite
def reports(draw: st.DrawFn) -> ReplicaSnapshot:
    resident = draw(st.lists(st.sampled_from(MODEL_IDS), unique=True, max_size=4))
    return snapshot(
        draw(st.sampled_from(REPLICA_IDS)),
        [
            (m, draw(st.floats(0.0, 10.0)), draw(st.integers(0, 2)), draw(st.sampled_from(HITS)))
            for m in resident
        ],
        loading=draw(st.lists(st.sampled_from(MODEL_IDS), unique=True, max_size=2)),
        sequence=draw(st.integers(0, 8)),
        incarnation=draw(st.sampled_from(INCARNATIONS)),
        capacity=draw(st.sampled_from([-1, 1, 2, 3])),
        max_ongoing_requests=draw(st.integers(1, 4)),
        draining=draw(st.booleans()),
    )


class ViewMachine(RuleBasedStateMachine):
    """Drives a view with random operations and keeps a model of what it must remember:
    the requests dispatched and not finished, per replica and per (replica, model)."""

    def __init__(self) -> None:
        super().__init__()
        self.view = ClusterView(
            pending_grace_s=1.5, breaker=CircuitBreaker(failure_threshold=2, cooldown_s=1.0)
        )
        self.now = 0.0
        self.known: dict[str, tuple[str, int]] = {}  # replica id -> (incarnation, sequence)
        self.retired: dict[str, set[str]] = {}  # replica id -> incarnations it replaced
        self.replica_in_flight: dict[str, int] = {}
        self.model_in_flight: dict[tuple[str, str], int] = {}
        self.outstanding: list[tuple[str, str]] = []
        self.at_report: dict[str, int] = {}  # replica id -> our requests on it at its report

    def _forget_models_of(self, replica_id: str) -> None:
        for key in [k for k in self.model_in_flight if k[0] == replica_id]:
            del self.model_in_flight[key]

    @rule(dt=st.floats(0.0, 3.0))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(report=reports())
    def report(self, report: ReplicaSnapshot) -> None:
        rid = report.replica_id
        before = self.known.get(rid)
        in_flight_before = (
            {m: c.in_flight for m, c in self.view.replicas[rid].models.items()}
            if rid in self.view.replicas
            else {}
        )
        outcome = self.view.apply_report(report, self.now)
        if before is None:
            assert outcome is ReportOutcome.NEW_REPLICA
        elif report.incarnation in self.retired.get(rid, set()):
            assert outcome is ReportOutcome.OUT_OF_ORDER  # a replaced process, late
            return
        elif before[0] != report.incarnation:
            assert outcome is ReportOutcome.NEW_INCARNATION
            self.retired.setdefault(rid, set()).add(before[0])
            self._forget_models_of(rid)
        elif report.sequence <= before[1]:
            assert outcome is ReportOutcome.OUT_OF_ORDER
            return
        else:
            assert outcome is ReportOutcome.APPLIED
            for model_id, count in in_flight_before.items():
                if count > 0:
                    assert model_id in self.view.replicas[rid].models
        self.known[rid] = (report.incarnation, report.sequence)
        self.at_report[rid] = self.replica_in_flight.get(rid, 0)
        replica = self.view.replicas[rid]
        reports_hits = any(e.hits for e in report.models)
        for e in report.models:
            copy = replica.models[e.model_id]
            assert copy.hits == (e.hits if reports_hits else None)
            assert copy.reported_used == self.now - e.idle_s
        assert not replica.down
        assert not replica.stale
        assert replica.draining is report.draining
        reported = {e.model_id for e in report.models} | set(report.loading)
        assert reported <= set(replica.models)
        for model_id in report.loading:
            assert replica.models[model_id].loading

    @precondition(lambda self: bool(self.view.replicas))
    @rule(data=st.data(), model_id=st.sampled_from((*MODEL_IDS, "")))
    def dispatch(self, data: st.DataObject, model_id: str) -> None:
        rid = data.draw(st.sampled_from(sorted(self.view.replicas)))
        replica = self.view.replicas[rid]
        evictable = sorted(m for m, c in replica.models.items() if not c.in_use)
        evict = data.draw(st.none() | st.sampled_from((*evictable, "gone")))
        was_held = model_id in replica.models
        candidate = replica.eviction_candidate()
        full = replica.free_slots <= 0
        cold = self.view.dispatch(rid, model_id, self.now, evict=evict)
        self.replica_in_flight[rid] = self.replica_in_flight.get(rid, 0) + 1
        self.outstanding.append((rid, model_id))
        if not model_id:
            assert cold is False
            return
        assert cold is (not was_held)
        key = (rid, model_id)
        self.model_in_flight[key] = self.model_in_flight.get(key, 0) + 1
        assert model_id in replica.models
        assert replica.models[model_id].last_used == self.now
        if cold and evict in evictable:
            assert evict not in replica.models
        elif cold and full and candidate is not None:
            assert candidate.model_id not in replica.models

    @precondition(lambda self: bool(self.outstanding))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.outstanding) - 1))
        rid, model_id = self.outstanding.pop(index)
        self.view.finish(rid, model_id, self.now)
        if rid in self.replica_in_flight:
            self.replica_in_flight[rid] = max(0, self.replica_in_flight[rid] - 1)
        key = (rid, model_id)
        if key in self.model_in_flight:
            self.model_in_flight[key] = max(0, self.model_in_flight[key] - 1)

    @precondition(lambda self: bool(self.view.replicas))
    @rule(data=st.data(), model_id=st.sampled_from(MODEL_IDS))
    def prefetch(self, data: st.DataObject, model_id: str) -> None:
        rid = data.draw(st.sampled_from(sorted(self.view.replicas)))
        replica = self.view.replicas[rid]
        evictable = sorted(m for m, c in replica.models.items() if not c.in_use)
        evict = data.draw(st.none() | st.sampled_from((*evictable, "gone")))
        was_held = model_id in replica.models
        in_flight = (replica.in_flight, self.view.in_flight)
        self.view.prefetch(rid, model_id, self.now, evict=evict)
        assert model_id in replica.models
        assert (replica.in_flight, self.view.in_flight) == in_flight
        if not was_held:
            assert replica.models[model_id].loading
            if evict in evictable:
                assert evict not in replica.models

    @rule(
        rid=st.sampled_from(REPLICA_IDS),
        incarnation=st.none() | st.sampled_from(INCARNATIONS),
    )
    def mark_down(self, rid: str, incarnation: str | None) -> None:
        expected = rid in self.known and incarnation in (None, self.known[rid][0])
        assert self.view.mark_down(rid, incarnation) is expected
        if expected:
            self._forget_models_of(rid)
            replica = self.view.replicas[rid]
            assert replica.down
            assert not replica.routable
            assert replica.models == {}

    @rule(timeout_s=st.floats(0.5, 6.0))
    def expire(self, timeout_s: float) -> None:
        was_stale = {r.replica_id for r in self.view if r.stale}
        newly = self.view.expire(self.now, timeout_s)
        for replica in self.view:
            quiet = self.now - replica.last_report_at > timeout_s
            should_be_new = quiet and not replica.down and replica.replica_id not in was_stale
            assert (replica.replica_id in newly) is should_be_new
            if replica.replica_id in newly:
                assert replica.status is ReplicaStatus.STALE

    @rule(rid=st.sampled_from(REPLICA_IDS))
    def request_failed(self, rid: str) -> None:
        self.view.request_failed(rid, self.now)

    @rule(rid=st.sampled_from(REPLICA_IDS))
    def request_answered(self, rid: str) -> None:
        self.view.request_answered(rid)

    @rule()
    def cool_down(self) -> None:
        for rid in self.view.cool_down(self.now):
            assert self.view.replicas[rid].status in (
                ReplicaStatus.PROBING,
                ReplicaStatus.DOWN,
                ReplicaStatus.STALE,
                ReplicaStatus.DRAINING,
            )

    @rule(rid=st.sampled_from(REPLICA_IDS), incarnation=st.sampled_from(INCARNATIONS))
    def channel_closed(self, rid: str, incarnation: str) -> None:
        replica = self.view.replicas.get(rid)
        current = replica is not None and replica.incarnation == incarnation
        left = current and replica is not None and replica.draining and replica.in_flight == 0
        outcome = self.view.channel_closed(rid, incarnation)
        if not current:
            assert outcome is ChannelClosed.STALE_NEWS
        elif left:
            assert outcome is ChannelClosed.LEFT
            assert rid not in self.view.replicas
            self.known.pop(rid, None)
            self.retired.pop(rid, None)
            self.replica_in_flight.pop(rid, None)
            self._forget_models_of(rid)
        else:
            assert outcome is ChannelClosed.DOWN
            assert self.view.replicas[rid].status is ReplicaStatus.DOWN
            self._forget_models_of(rid)

    @rule(after_s=st.floats(0.0, 6.0))
    def forget_departed(self, after_s: float) -> None:
        expected = {
            r.replica_id
            for r in self.view
            if not r.routable and self.now - r.last_report_at > after_s
        }
        assert set(self.view.forget_departed(self.now, after_s)) == expected
        for rid in expected:
            assert rid not in self.view.replicas
            self.known.pop(rid, None)
            self.retired.pop(rid, None)
            self.replica_in_flight.pop(rid, None)
            self._forget_models_of(rid)

    @rule(rid=st.sampled_from(REPLICA_IDS))
    def forget(self, rid: str) -> None:
        self.view.forget(rid)
        assert rid not in self.view.replicas
        self.known.pop(rid, None)
        self.retired.pop(rid, None)
        self.replica_in_flight.pop(rid, None)
        self._forget_models_of(rid)

    @rule(rid=st.sampled_from(REPLICA_IDS))
    def drain(self, rid: str) -> None:
        assert self.view.drain(rid) is (rid in self.view.replicas)
        if rid in self.view.replicas:
            assert not self.view.replicas[rid].routable

    @rule(rid=st.sampled_from(REPLICA_IDS), model_id=st.sampled_from(MODEL_IDS))
    def evicted(self, rid: str, model_id: str) -> None:
        replica = self.view.replicas.get(rid)
        held = replica is not None and model_id in replica.models
        assert self.view.evicted(rid, model_id) is held
        if replica is not None:
            assert model_id not in replica.models
        self.model_in_flight.pop((rid, model_id), None)

    @invariant()
    def index_matches_the_replicas(self) -> None:
        assert self.view.holders == expected_index(self.view)
        assert all(self.view.holders.values())

    @invariant()
    def routable_and_free_indexes_match_the_replicas(self) -> None:
        view = self.view
        assert view.routable_ids == {r.replica_id for r in view if r.routable}
        assert set(view.free) == {r.replica_id for r in view if r.routable and r.free_slots > 0}
        assert view.with_room == {r.replica_id for r in view if r.routable and r.has_room}
        assert {r.replica_id for r in view.routable()} == view.routable_ids
        assert [r.replica_id for r in view.replica_list] == sorted(view.replicas)

    @invariant()
    def the_views_in_flight_is_the_sum_over_replicas(self) -> None:
        assert self.view.in_flight == sum(r.in_flight for r in self.view)
        assert self.view.in_flight == sum(self.replica_in_flight.values())

    @invariant()
    def in_flight_is_never_negative_and_matches_the_requests(self) -> None:
        for replica in self.view:
            assert replica.in_flight >= 0
            assert replica.in_flight == self.replica_in_flight.get(replica.replica_id, 0)
            for copy in replica.models.values():
                assert copy.in_flight >= 0

    @invariant()
    def the_load_is_the_report_plus_our_changes_since_never_negative(self) -> None:
        for replica in self.view:
            rid = replica.replica_id
            ours = self.replica_in_flight.get(rid, 0) - self.at_report.get(rid, 0)
            assert replica.load == max(0, replica.reported_in_flight + ours)

    @invariant()
    def a_model_with_requests_in_flight_stays(self) -> None:
        for (rid, model_id), count in self.model_in_flight.items():
            if count > 0:
                copy = self.view.replicas[rid].models.get(model_id)
                assert copy is not None, f"{model_id} left {rid} with {count} in flight"
                assert copy.in_flight == count
                assert copy.in_use


ViewMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_view_machine = ViewMachine.TestCase


def test_many_replicas_for_one_model_keep_the_index_exact() -> None:
    view = ClusterView()
    for n in range(5):
        view.apply_report(snapshot(f"r{n}", ["shared", f"own{n}"]), now=0.0)
    assert view.holders["shared"] == {f"r{n}" for n in range(5)}
    for n in range(5):
        view.mark_down(f"r{n}")
        assert view.holders == expected_index(view)
    assert view.holders == {}


def _sorted(holders: Mapping[str, set[str]]) -> list[tuple[str, list[str]]]:
    return sorted((m, sorted(ids)) for m, ids in holders.items())


def test_an_index_entry_survives_the_other_holders_leaving() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"]), now=0.0)
    view.apply_report(snapshot("r2", ["a"]), now=0.0)
    view.forget("r2")
    assert _sorted(view.holders) == [("a", ["r1"])]


def test_a_failed_answer_drops_a_placement_no_report_confirmed() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["held"]), 10.0)
    assert view.dispatch("r1", "refused", 11.0) is True
    view.finish("r1", "refused", 11.5, ok=False)
    assert "refused" not in view.replicas["r1"].models
    assert "refused" not in view.holders
    view.dispatch("r1", "held", 12.0)
    view.finish("r1", "held", 12.5, ok=False)  # a loaded model stays: the answer was the error
    assert "held" in view.replicas["r1"].models


def test_a_successful_answer_keeps_the_placement_until_a_report_says_otherwise() -> None:
    view = ClusterView(pending_grace_s=2.0)
    view.apply_report(snapshot("r1", []), 10.0)
    view.dispatch("r1", "m", 11.0)
    view.finish("r1", "m", 11.5, ok=True)
    view.apply_report(snapshot("r1", [], sequence=2), 11.52)  # sent before the load showed
    assert "m" in view.replicas["r1"].models
    view.apply_report(snapshot("r1", [], sequence=3), 11.7)
    assert "m" not in view.replicas["r1"].models


# -- the load schedule -----------------------------------------------------------------------


def test_loads_beyond_the_limit_are_scheduled_in_placement_order() -> None:
    view = cluster(snapshot("r1", capacity=4, max_concurrent_loads=1))
    for offset, model_id in enumerate(("a", "b", "c")):
        view.dispatch("r1", model_id, NOW + offset * 0.1)
    done, start_next = view.replicas["r1"].load_schedule(NOW + 0.5, load_s=1.0)
    assert done == pytest.approx({"a": NOW + 1.0, "b": NOW + 2.0, "c": NOW + 3.0})
    assert start_next == pytest.approx(NOW + 3.0)
    assert view.replicas["r1"].load_turns == 3


def test_without_a_limit_every_load_runs_at_once_and_a_new_one_starts_now() -> None:
    view = cluster(snapshot("r1", capacity=4))
    view.dispatch("r1", "a", NOW)
    view.dispatch("r1", "b", NOW + 0.5)
    done, start_next = view.replicas["r1"].load_schedule(NOW + 0.5, load_s=1.0)
    assert done == pytest.approx({"a": NOW + 1.0, "b": NOW + 1.5})
    assert start_next == NOW + 0.5
    assert view.replicas["r1"].load_turns == 0


def test_an_overdue_load_is_due_now_and_frees_its_loader_now() -> None:
    view = cluster(snapshot("r1", capacity=4, max_concurrent_loads=1))
    view.dispatch("r1", "a", NOW)
    done, start_next = view.replicas["r1"].load_schedule(NOW + 5.0, load_s=1.0)
    assert done == {"a": NOW + 5.0}
    assert start_next == NOW + 5.0


# -- an operator's requests ----------------------------------------------------------------


def test_an_operators_drain_takes_the_replica_out_of_routing_at_once() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a"]), now=0.0)
    view.apply_report(snapshot("r2", ["a"]), now=0.0)
    assert view.drain("r1") is True
    replica = view.replicas["r1"]
    assert replica.status is ReplicaStatus.DRAINING
    assert view.routable_ids == {"r2"}
    assert "r1" not in view.free
    assert "r1" not in view.with_room
    assert view.holders["a"] == {"r1", "r2"}  # it still holds its models while it drains
    assert view.drain("gone") is False
    view.apply_report(snapshot("r1", ["a"], sequence=2, draining=True), now=1.0)
    assert view.channel_closed("r1", "inc-1") is ChannelClosed.LEFT


def test_an_evicted_model_leaves_the_view_at_once() -> None:
    view = ClusterView()
    view.apply_report(snapshot("r1", ["a", "b"]), now=0.0)
    view.dispatch("r1", "a", now=1.0)
    assert view.evicted("r1", "a") is True
    assert held(view, "r1") == {"b"}
    assert "a" not in view.holders
    assert view.evicted("r1", "a") is False
    assert view.evicted("gone", "b") is False
    view.finish("r1", "a", now=2.0)  # its request in flight ends as usual
    assert view.in_flight == 0
    view.apply_report(snapshot("r1", ["b"], sequence=2), now=3.0)  # the replica confirms
    assert held(view, "r1") == {"b"}


# -- a placement another router claimed (the placement lease) -------------------------------


def _placed_on_r1() -> ClusterView:
    view = cluster(snapshot("r1", ["a"]), snapshot("r2", ["b"]), snapshot("r3", ["c"]))
    view.dispatch("r1", "m", NOW)  # this router's cold placement, not yet reported
    return view


def test_a_fresh_claim_elsewhere_moves_the_placement_there() -> None:
    view = _placed_on_r1()
    outcome = view.claimed_elsewhere("m", "r1", "r2", 0.01, NOW, fresh_s=0.25)
    assert outcome is Claimed.FOLLOW
    assert view.holders["m"] == {"r2"}  # loading there; nothing will load it on r1
    assert view.replicas["r2"].models["m"].loading


def test_a_claim_the_holder_has_given_up_since_is_stale() -> None:
    view = _placed_on_r1()
    assert view.claimed_elsewhere("m", "r1", "r2", 0.4, NOW, fresh_s=0.25) is Claimed.STALE
    assert view.holders["m"] == {"r1"}


def test_an_old_claim_whose_holder_shows_the_model_is_followed() -> None:
    view = _placed_on_r1()
    view.apply_report(snapshot("r2", ["b"], loading=["m"], sequence=2), NOW)
    assert view.claimed_elsewhere("m", "r1", "r2", 5.0, NOW, fresh_s=0.25) is Claimed.FOLLOW
    assert view.holders["m"] == {"r2"}


@pytest.mark.parametrize(
    ("holder", "avoid"), [("r1", ()), ("gone", ()), ("r2", ("r2",)), ("r3", ())]
)
def test_a_claim_for_no_replica_to_follow_keeps_this_routers_choice(
    holder: str, avoid: tuple[str, ...]
) -> None:
    view = _placed_on_r1()
    view.drain("r3")
    outcome = view.claimed_elsewhere(
        "m", "r1", holder, 0.0, NOW, fresh_s=0.25, avoid=frozenset(avoid)
    )
    assert outcome is Claimed.KEEP
    assert view.holders["m"] == {"r1"}


def test_a_claim_on_a_replica_that_failed_the_load_is_not_followed() -> None:
    view = _placed_on_r1()
    view.load_failures.record("m", "r2", "boom", NOW)
    assert view.claimed_elsewhere("m", "r1", "r2", 0.0, NOW, fresh_s=0.25) is Claimed.KEEP
