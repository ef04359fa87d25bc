"""Several routers, one load per cold model: the adversarial case of issue 12, on the pure cores.

Three routers get the same replica reports but have seen different traffic (each counts only
its own requests in flight and its own demand). A first request for the same cold model reaches
each of them at the same instant, before any report could tell one about the others' choices.
For one load cluster-wide, all three must pick the same replica. Today each breaks ties by its
own in-flight counts, so they can disagree: this test documents the gap (strict xfail) until
placement agrees across routers whose views differ (issue 12, item 2).
"""

import random

import pytest

from router.policy import ModelplexPolicy, Route
from router.view import ClusterView

from reports import NOW, busy, cluster, snapshot

REPLICAS = [f"r{n}" for n in range(1, 5)]


def router_view(rng: random.Random) -> ClusterView:
    """Every router's view of the same four replicas (one free slot each), plus its own
    traffic: a few requests of its own in flight on replicas of its choosing."""
    view = cluster(*(snapshot(rid, [f"{rid}-a", f"{rid}-b"], capacity=3) for rid in REPLICAS))
    for rid in REPLICAS:
        busy(view, rid, rng.randrange(0, 4), f"{rid}-a")
    return view


@pytest.mark.xfail(
    strict=True,
    reason="issue 12: routers break placement ties by their own in-flight counts, so routers "
    "with divergent views can place one cold model on different replicas",
)
def test_three_routers_with_divergent_views_place_a_cold_model_on_one_replica() -> None:
    rng = random.Random(12)
    disagreements = 0
    for repetition in range(50):
        chosen = set()
        for _ in range(3):
            decision = ModelplexPolicy().choose(router_view(rng), f"cold-{repetition}", NOW)
            assert isinstance(decision, Route)
            chosen.add(decision.replica.replica_id)
        disagreements += len(chosen) > 1
    assert disagreements == 0, f"{disagreements} of 50 repetitions made more than one load"
