"""The simulator with several routers (`EngineConfig.routers`): each router is its own view,
policy object and admission queue, requests go to them in turn, and every replica's report
reaches every router. What one router does is seen by the others only through reports."""

from __future__ import annotations

import pytest

from router.simulation.engine import EngineConfig, simulate
from router.simulation.runner import Scenario, make_policy
from router.simulation.workloads import Popularity, WorkloadSpec, generate

SPEC = WorkloadSpec(requests=1200, models=30, zipf_s=1.1, seed=5)


def run(routers: int, spec: WorkloadSpec = SPEC, **engine: object) -> object:
    config = EngineConfig(
        replicas=4, capacity=3, max_ongoing_requests=4, concurrency=8, routers=routers, **engine
    )
    policy = make_policy("modelplex", Scenario(engine=config, workload=spec))
    return simulate(config, generate(spec), policy, name="modelplex")


def test_two_routers_finish_every_request_and_each_decides_for_its_own() -> None:
    one, two = run(1), run(2)
    assert one.completed == two.completed == SPEC.requests  # type: ignore[attr-defined]
    assert two.decisions >= SPEC.requests  # type: ignore[attr-defined]
    assert run(2).loads == two.loads  # type: ignore[attr-defined]  # deterministic


def test_routers_learn_each_others_placements_from_reports() -> None:
    """Models that fit: one router loads each once. Several routers may both place one in the
    first instant, when each has placed others of its own that the other cannot know of yet
    (the gap the placement lease closes), but after that a router finds the others'
    placements in the reports and routes there: nothing is evicted, nothing loads again."""
    spec = WorkloadSpec(requests=600, models=8, popularity=Popularity.UNIFORM, seed=2)
    assert run(1, spec).loads == 8  # type: ignore[attr-defined]
    for routers in (2, 3):
        stats = run(routers, spec)
        assert stats.completed == 600  # type: ignore[attr-defined]
        assert stats.evictions == 0, routers  # type: ignore[attr-defined]
        assert 8 <= stats.loads <= 12, routers  # type: ignore[attr-defined]  # 4 x 3 slots


def test_a_policy_that_observes_reports_runs_on_one_router_only() -> None:
    config = EngineConfig(replicas=2, routers=2)
    policy = make_policy("ray", Scenario(engine=config, workload=SPEC))
    with pytest.raises(ValueError, match="one router only"):
        simulate(config, generate(SPEC), policy, name="ray")
