"""Baselines: each is a Policy over the ClusterView; the Ray router follows its documented
order (holders, then fewest models), and consistent hashing keeps a model on one replica."""

from __future__ import annotations

from router.policy import Route, Wait
from router.simulation.baselines import (
    ConsistentHashPolicy,
    RandomPolicy,
    RayPolicy,
    RoundRobinPolicy,
)
from router.simulation.contract import SimRequest
from router.simulation.replica_model import SimReplica
from router.view import ClusterView


def cluster(n: int, max_ongoing: int = 2) -> tuple[ClusterView, list[SimReplica]]:
    view = ClusterView()
    sims = [SimReplica(i, capacity=2, max_ongoing_requests=max_ongoing) for i in range(n)]
    for sim in sims:
        view.apply_report(sim.snapshot(0.0), 0.0)
    return view, sims


def test_round_robin_cycles_and_waits_when_full() -> None:
    view, _ = cluster(3, max_ongoing=1)
    policy = RoundRobinPolicy()
    chosen = []
    for _ in range(3):
        decision = policy.choose(view, "m", 0.0)
        assert isinstance(decision, Route)
        chosen.append(decision.replica.replica_id)
        view.dispatch(decision.replica.replica_id, "m", 0.0)
    assert sorted(chosen) == ["replica-0", "replica-1", "replica-2"]
    assert isinstance(policy.choose(view, "m", 0.0), Wait)


def test_random_only_routes_to_replicas_with_room() -> None:
    view, _ = cluster(4, max_ongoing=1)
    policy = RandomPolicy(seed=7)
    for _ in range(4):
        decision = policy.choose(view, "m", 0.0)
        assert isinstance(decision, Route)
        view.dispatch(decision.replica.replica_id, "m", 0.0)
    assert isinstance(policy.choose(view, "m", 0.0), Wait)


def test_consistent_hash_is_sticky_and_spills_to_the_next_replica() -> None:
    view, _ = cluster(5, max_ongoing=1)
    policy = ConsistentHashPolicy()
    first = policy.choose(view, "model-x", 0.0)
    again = policy.choose(view, "model-x", 0.0)
    assert isinstance(first, Route)
    assert isinstance(again, Route)
    assert first.replica is again.replica
    view.dispatch(first.replica.replica_id, "model-x", 0.0)
    spilled = policy.choose(view, "model-x", 0.0)
    assert isinstance(spilled, Route)
    assert spilled.replica is not first.replica


def test_ray_prefers_holders_once_it_learns_of_them() -> None:
    view, sims = cluster(4, max_ongoing=4)
    policy = RayPolicy(seed=1, model_ids_delay_s=0.1)
    holder = sims[2]
    holder.arrive(SimRequest(0, "m", 0.0, 0.1), 0.0)
    report = holder.snapshot(0.0)
    view.apply_report(report, 0.0)
    policy.observe_report(report, 0.0)
    for _ in range(20):
        request = SimRequest(1, "m", 0.2, 0.1)
        decision = policy.choose_request(view, request, 0.2)
        assert isinstance(decision, Route)
        assert decision.replica.replica_id == holder.replica_id


def test_ray_backs_off_when_every_candidate_is_full() -> None:
    view, _ = cluster(2, max_ongoing=1)
    for replica_id in view.replicas:
        view.dispatch(replica_id, "x", 0.0)
    policy = RayPolicy(seed=1)
    request = SimRequest(0, "m", 0.0, 0.1)
    assert isinstance(policy.choose_request(view, request, 0.0), Wait)
    assert policy.retry_at(request, 0.0) == 0.0  # the first retry is immediate
    assert isinstance(policy.choose_request(view, request, 0.0), Wait)
    assert policy.retry_at(request, 0.0) == 0.025
    for _ in range(10):
        policy.choose_request(view, request, 0.0)
    assert policy.retry_at(request, 0.0) == 0.5
