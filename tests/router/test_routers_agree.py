"""Several routers, one load per cold model: the adversarial case of issue 12, on the pure cores.

Three routers get the same replica reports, but each has its own history: it heard the reports
in its own order, it saw its own demand (different models asked for, different counts), it
served its own requests (which moved its last-use times and ended), and it estimates load times
from its own observations. A first request for a model no replica holds then reaches each of
them at the same instant, before any report could tell one about the others' choices. For one
load cluster-wide, all three must choose the same replica, with free slots left in the cluster
and with every slot taken (then the victim's worth comes from the replicas' reported hits,
which every router reads alike, not from its own counts).

What no shared state can settle is left to the placement lease (`router.placement_lease`, in
Redis; tests/integration/test_placement_lease.py): requests in flight that one router has sent
since the last report and the others do not know of yet.
"""

from __future__ import annotations

import random

import pytest

from common.wire import ReplicaSnapshot
from router.policy import ModelplexPolicy, Route
from router.view import ClusterView

from reports import NOW, asked, snapshot

REPLICAS = [f"r{n}" for n in range(1, 5)]
ROUTERS = 3
REPETITIONS = 50
POOL = [f"warm-{n}" for n in range(12)]


def reports(rng: random.Random, *, full: bool) -> list[ReplicaSnapshot]:
    """Four replicas of 2-3 slots holding models of POOL with hits as a replica reports them;
    with `full`, every slot is taken, else one replica or more has a free slot."""
    pool = rng.sample(POOL, len(POOL))
    made = []
    for index, rid in enumerate(REPLICAS):
        capacity = rng.randint(2, 3)
        held = capacity if full or index % 2 else capacity - 1
        models = [
            (pool.pop(), rng.uniform(0.5, 60.0), 0, float(rng.randint(1, 40))) for _ in range(held)
        ]
        made.append(snapshot(rid, models, capacity=capacity, max_ongoing_requests=8, in_flight=0))
    return made


def router_view(rng: random.Random, shared: list[ReplicaSnapshot]) -> ClusterView:
    """One router's view of the shared reports, with a history of its own."""
    view = ClusterView()
    view.demand.observe_load(rng.uniform(0.5, 5.0))
    for report in rng.sample(shared, len(shared)):  # heard in its own order
        view.apply_report(report, NOW - 1.0)
    for model_id in rng.sample(POOL, 6):  # its own demand, counted by itself
        asked(view, model_id, rng.randint(0, 50))
    for _ in range(rng.randint(0, 6)):  # its own requests, answered since the reports
        replica = view.replicas[rng.choice(REPLICAS)]
        if replica.models:
            model_id = rng.choice(list(replica.models))
            started = NOW - rng.uniform(0.1, 0.9)
            view.dispatch(replica.replica_id, model_id, started)
            view.finish(replica.replica_id, model_id, started + 0.05)
    return view


@pytest.mark.parametrize("full", [False, True], ids=["free slots", "every slot taken"])
def test_three_routers_with_divergent_views_place_a_cold_model_on_one_replica(full: bool) -> None:
    rng = random.Random(12)
    disagreements = []
    for repetition in range(REPETITIONS):
        shared = reports(rng, full=full)
        model_id = f"cold-{repetition}"
        chosen = set()
        for _ in range(ROUTERS):
            view = router_view(rng, shared)
            view.demand.arrived(model_id)  # its first request, at the same instant everywhere
            decision = ModelplexPolicy(seed=rng.randrange(1000)).choose(view, model_id, NOW)
            assert isinstance(decision, Route), decision
            chosen.add(decision.replica.replica_id)
        if len(chosen) > 1:
            disagreements.append((repetition, sorted(chosen)))
    assert not disagreements, f"{len(disagreements)} of {REPETITIONS} made more loads than one"


def test_the_same_history_but_a_different_join_order_changes_nothing() -> None:
    """Ties between equally good replicas are broken by the model id, not by which replica a
    router heard from first: over many models, both orders choose alike and spread."""
    rng = random.Random(7)
    shared = [snapshot(rid, [], capacity=2) for rid in REPLICAS]
    first, second = ClusterView(), ClusterView()
    for report in shared:
        first.apply_report(report, NOW)
    for report in reversed(shared):
        second.apply_report(report, NOW)
    spread = set()
    for _ in range(40):
        model_id = f"m{rng.random()}"
        a = ModelplexPolicy().choose(first, model_id, NOW)
        b = ModelplexPolicy().choose(second, model_id, NOW)
        assert isinstance(a, Route)
        assert isinstance(b, Route)
        assert a.replica.replica_id == b.replica.replica_id
        spread.add(a.replica.replica_id)
    assert spread == set(REPLICAS)
