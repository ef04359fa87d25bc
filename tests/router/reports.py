"""Builders shared by the router's view, policy and admission tests: replica reports, views,
and reading a policy's decision."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from common.wire import ModelEntry, ReplicaSnapshot
from router.policy import Reject, Route, Wait
from router.view import ClusterView

ModelSpec = str | tuple[str, float] | tuple[str, float, int] | tuple[str, float, int, float]
NOW = 100.0


def snapshot(
    replica_id: str,
    models: Sequence[ModelSpec] = (),
    *,
    loading: Iterable[str] = (),
    sequence: int = 1,
    incarnation: str = "inc-1",
    capacity: int = 3,
    max_ongoing_requests: int = 4,
    in_flight: int = 0,
    draining: bool = False,
    load_ms_avg: float | None = None,
    max_concurrent_loads: int | None = None,
) -> ReplicaSnapshot:
    """A replica's report. `models` come least recently used first, as on the wire: a bare id
    gets an idle time from its position (the first is the idlest); a tuple gives
    (id, idle_s), (id, idle_s, in_use) or (id, idle_s, in_use, hits)."""
    entries = []
    for index, spec in enumerate(models):
        if isinstance(spec, str):
            entries.append(ModelEntry(model_id=spec, idle_s=float(len(models) - index), in_use=0))
        else:
            model_id, idle_s, *rest = spec
            in_use = int(rest[0]) if rest else 0
            hits = float(rest[1]) if len(rest) > 1 else 0.0
            entries.append(ModelEntry(model_id=model_id, idle_s=idle_s, in_use=in_use, hits=hits))
    return ReplicaSnapshot(
        replica_id=replica_id,
        incarnation=incarnation,
        sequence=sequence,
        url=f"http://{replica_id}.test:8000",
        capacity=capacity,
        models=tuple(entries),
        loading=tuple(loading),
        in_flight=in_flight,
        max_ongoing_requests=max_ongoing_requests,
        draining=draining,
        load_ms_avg=load_ms_avg,
        max_concurrent_loads=max_concurrent_loads,
    )


def cluster(*snapshots: ReplicaSnapshot) -> ClusterView:
    view = ClusterView()
    for report in snapshots:
        view.apply_report(report, NOW)
    return view


def asked(view: ClusterView, model_id: str, times: int) -> None:
    """`times` requests for `model_id` arrived (its frequency)."""
    for _ in range(times):
        view.demand.arrived(model_id)


def busy(view: ClusterView, replica_id: str, requests: int, model_id: str = "") -> None:
    for _ in range(requests):
        view.dispatch(replica_id, model_id, NOW)


def routed_to(decision: Route | Wait | Reject) -> tuple[str, str | None]:
    assert isinstance(decision, Route), decision
    return decision.replica.replica_id, decision.evict


def check_route(decision: Route | Wait | Reject) -> None:
    """What holds for every Route: a replica that can take it, and an eviction only of a
    loaded model nobody uses, on a replica that has no free slot."""
    if not isinstance(decision, Route):
        return
    replica = decision.replica
    assert replica.routable
    assert replica.has_room
    if decision.evict is not None:
        copy = replica.models[decision.evict]
        assert copy.in_flight == 0
        assert copy.reported_in_use == 0
        assert not copy.loading
        assert replica.free_slots <= 0
