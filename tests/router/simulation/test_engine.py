"""The engine: deterministic for a seed, drives the real policy to the ideal on a workload that
fits, and finishes every request under every arrival process."""

from __future__ import annotations

import dataclasses

import pytest

from common.wire import ReplicaSnapshot
from router.policy import AffinityPolicy, Prefetch
from router.simulation import engine as engine_module
from router.simulation.contract import SimRequest
from router.simulation.engine import EngineConfig, RunStats, simulate
from router.simulation.replica_model import SimReplica
from router.simulation.runner import POLICY_NAMES, Scenario, make_policy
from router.simulation.workloads import (
    Arrival,
    Dist,
    DistKind,
    Popularity,
    WorkloadSpec,
    generate,
)
from router.view import ClusterView

SMALL = EngineConfig(replicas=4, capacity=2, max_ongoing_requests=4, concurrency=8, seed=3)
ZIPF = WorkloadSpec(requests=1500, models=40, zipf_s=1.1, seed=3)


def fingerprint(stats: RunStats) -> tuple[object, ...]:
    return (
        stats.loads,
        stats.hits,
        stats.completed,
        stats.decisions,
        stats.sim_time_s,
        tuple(stats.per_replica),
        tuple(stats.latencies),
    )


def test_same_seed_same_run() -> None:
    workload = generate(ZIPF)
    assert generate(ZIPF) == workload
    scenario = Scenario(engine=SMALL, workload=ZIPF)
    for name in POLICY_NAMES:
        first = simulate(SMALL, workload, make_policy(name, scenario), name=name)
        second = simulate(SMALL, workload, make_policy(name, scenario), name=name)
        assert fingerprint(first) == fingerprint(second), name


def test_uniform_fit_loads_each_model_once() -> None:
    engine = EngineConfig(replicas=2, capacity=2, max_ongoing_requests=8, concurrency=4)
    spec = WorkloadSpec(requests=500, models=4, popularity=Popularity.UNIFORM, seed=1)
    workload = generate(spec)
    policy = make_policy("modelplex", Scenario(engine=engine, workload=spec))
    stats = simulate(engine, workload, policy, name="modelplex")
    assert workload.distinct_models == 4
    assert stats.completed == 500
    assert stats.loads == 4
    assert stats.evictions == 0


def test_every_policy_finishes_every_request() -> None:
    spec = dataclasses.replace(
        ZIPF,
        requests=800,
        infer=Dist(DistKind.EXP, 0.02),
        shift_every=200,
        bursts=True,
        burst_every=300,
        burst_length=50,
    )
    engine = dataclasses.replace(SMALL, load=Dist(DistKind.LOGNORMAL, 0.5))
    workload = generate(spec)
    scenario = Scenario(engine=engine, workload=spec)
    for name in POLICY_NAMES:
        stats = simulate(engine, workload, make_policy(name, scenario), name=name)
        assert stats.completed == 800, name
        assert stats.loads >= workload.distinct_models, name
        assert sum(stats.per_replica) == 800, name
        assert stats.view is not None
        assert sum(r.in_flight for r in stats.view) == 0, name


def test_open_loop_overload_refuses_beyond_the_queue_bound() -> None:
    spec = dataclasses.replace(ZIPF, requests=600, arrival=Arrival.POISSON, rate=5000.0)
    engine = dataclasses.replace(SMALL, max_queued=20, queue_timeout_s=0.5)
    stats = simulate(engine, generate(spec), AffinityPolicy(), name="modelplex")
    assert stats.rejected + stats.timed_out > 0
    assert stats.completed + stats.rejected + stats.timed_out == 600
    assert stats.max_queued <= 20


def test_hot_model_demand_beyond_one_replica_is_served() -> None:
    engine = EngineConfig(replicas=4, capacity=2, max_ongoing_requests=2, concurrency=6)
    spec = WorkloadSpec(requests=200, models=1, popularity=Popularity.UNIFORM)
    policy = make_policy("modelplex", Scenario(engine=engine, workload=spec))
    stats = simulate(engine, generate(spec), policy, name="modelplex")
    assert stats.completed == 200
    assert stats.loads == stats.max_copies  # nothing else to evict it for
    assert 1 <= stats.max_copies <= 4


class OneCopyMore(AffinityPolicy):
    """Policy v1, plus one prefetched copy of any model with requests waiting."""

    def plan_copies(self, view: ClusterView, model_id: str, now: float) -> list[Prefetch]:
        if view.demand.waiting.get(model_id, 0) == 0:
            return []
        for replica in view:
            if model_id not in replica.models and replica.free_slots > 0:
                return [Prefetch(replica, model_id)]
        return []


def test_prefetched_copies_load_without_a_request() -> None:
    engine = EngineConfig(replicas=3, capacity=1, max_ongoing_requests=1, concurrency=3)
    spec = WorkloadSpec(requests=100, models=1, popularity=Popularity.UNIFORM)
    stats = simulate(engine, generate(spec), OneCopyMore(), name="prefetching")
    assert stats.completed == 100
    assert stats.prefetches == 2
    assert stats.loads == 3  # one for the first request, one per prefetched copy
    assert stats.view is not None
    assert all("m0" in replica.models for replica in stats.view)
    assert sum(stats.per_replica) == 100
    assert min(stats.per_replica) > 0  # the copies served requests


class CountingReplica(SimReplica):
    """A simulated replica that counts its running loads from its own outbox: a load runs from
    the call that put it in `loads_started` to its `loaded`."""

    peak_running = 0  # over every replica of the run
    peak_loading = 0
    running = 0  # this replica's, once it changes

    def _count_started(self, before: int) -> None:
        self.running += len(self.loads_started) - before
        CountingReplica.peak_running = max(CountingReplica.peak_running, self.running)

    def arrive(self, request: SimRequest, now: float) -> None:
        before = len(self.loads_started)
        super().arrive(request, now)
        self._count_started(before)

    def finish(self, request: SimRequest, now: float) -> None:
        before = len(self.loads_started)
        super().finish(request, now)
        self._count_started(before)

    def loaded(self, model_id: str, now: float, load_s: float) -> None:
        self.running -= 1
        before = len(self.loads_started)
        super().loaded(model_id, now, load_s)
        self._count_started(before)

    def snapshot(self, now: float) -> ReplicaSnapshot:
        report = super().snapshot(now)
        CountingReplica.peak_loading = max(CountingReplica.peak_loading, len(report.loading))
        return report


@pytest.mark.parametrize("name", ["modelplex", "ray"])
def test_one_load_at_a_time_per_replica_is_kept_and_every_request_served(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(engine_module, "SimReplica", CountingReplica)
    monkeypatch.setattr(CountingReplica, "peak_running", 0)
    monkeypatch.setattr(CountingReplica, "peak_loading", 0)
    engine = dataclasses.replace(SMALL, capacity=3, max_concurrent_loads=1)
    spec = dataclasses.replace(ZIPF, requests=600)
    stats = simulate(
        engine, generate(spec), make_policy(name, Scenario(engine=engine, workload=spec))
    )
    assert stats.completed == 600
    assert CountingReplica.peak_running == 1
    if name == "ray":  # blind to the limit: its loads queue on the replicas, shown as loading
        assert CountingReplica.peak_loading > 1
    else:  # modelplex knows the limit: cold requests wait in the router for a free loader
        assert CountingReplica.peak_loading == 1
    assert stats.view is not None
    assert {replica.max_concurrent_loads for replica in stats.view} == {1}
