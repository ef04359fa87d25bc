"""The replica's state report, built from its caches: pure, the time is passed in.

A replica may hold several multiplexed caches (one per decorated loader and instance); the
router sees one replica, so they are merged here:
- models from every cache in one LRU order (least recently used first, by last use); an id
  resident in two caches appears once, with its latest use and the sum of its pins;
- capacity is the sum of the caches' capacities, or unlimited (-1) if any cache is unlimited;
  with no cache yet, the capacity the replica will create caches with (`fallback_capacity`);
- the load limit is the sum over caches of the loads each runs at once: its
  `max_concurrent_loads`, or its capacity when the limit is None or not below it; None (no
  limit below the slots) when no cache's limit is below its capacity, or when a cache of
  unlimited capacity has no limit;
- ids the wire format refuses (a loader may be called with any non-empty string) are left out,
  so one odd id never silences the whole report.

`state_document` turns a snapshot into the JSON document of the replica's `GET /-/state`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence

from common.model_id import InvalidModelId, validate_model_id
from common.status import ReplicaStateDocument, ReportedRouterDocument, ResidentModelDocument
from common.wire import (
    MAX_LOAD_FAILURES,
    MAX_MODELS_PER_REPORT,
    UNLIMITED_CAPACITY,
    LoadFailure,
    ModelEntry,
    ReplicaSnapshot,
)
from replica._cache_core import CacheState, ResidentModel
from replica._metrics import CacheMetrics

__all__ = [
    "DEFAULT_CAPACITY",
    "build_snapshot",
    "combined_capacity",
    "combined_load_limit",
    "mean_load_ms",
    "state_document",
]

DEFAULT_CAPACITY = 3
"""`@multiplexed`'s default `max_num_models_per_replica`, as in Ray Serve."""


def combined_capacity(capacities: Iterable[int], *, fallback: int) -> int:
    """The slots of several caches together; `fallback` when there is no cache."""
    total = 0
    seen = False
    for capacity in capacities:
        if capacity == UNLIMITED_CAPACITY:
            return UNLIMITED_CAPACITY
        total += capacity
        seen = True
    return total if seen else fallback


def combined_load_limit(
    states: Sequence[CacheState], *, fallback_capacity: int, fallback: int | None
) -> int | None:
    """Loads the caches run at once together, or None when that is as many as they have slots;
    with no cache, that of one cache of `fallback_capacity` slots and limit `fallback`."""
    limits = [(s.capacity, s.max_concurrent_loads) for s in states]
    total = 0
    limited = False
    for capacity, limit in limits or [(fallback_capacity, fallback)]:
        if limit is not None and (capacity == UNLIMITED_CAPACITY or limit < capacity):
            total += limit
            limited = True
        elif capacity == UNLIMITED_CAPACITY:
            return None
        else:
            total += capacity
    return total if limited else None


def mean_load_ms(metrics: Iterable[CacheMetrics]) -> float | None:
    """Mean model-load latency over every cache, in milliseconds; None before the first load."""
    count = 0
    total_ms = 0.0
    for m in metrics:
        count += m.load_latency_ms.count
        total_ms += m.load_latency_ms.sum_ms
    return total_ms / count if count else None


@functools.lru_cache(maxsize=8192)  # a replica reports the same few ids again and again
def _reportable(model_id: str) -> bool:
    try:
        validate_model_id(model_id)
    except InvalidModelId:
        return False
    return model_id != ""


def _merged_models(states: Sequence[CacheState], now: float) -> tuple[ModelEntry, ...]:
    models: Iterable[ResidentModel]
    if len(states) == 1:
        models = states[0].models
    else:
        merged: dict[str, ResidentModel] = {}
        for state in states:
            for m in state.models:
                seen = merged.get(m.model_id)
                if seen is None:
                    merged[m.model_id] = m
                else:
                    last_used = max(seen.last_used, m.last_used)
                    hits = seen.hits_at(last_used) + m.hits_at(last_used)
                    merged[m.model_id] = ResidentModel(
                        m.model_id, last_used, seen.pins + m.pins, hits
                    )
        models = sorted(merged.values(), key=lambda m: m.last_used)
    entries = [
        ModelEntry(
            model_id=m.model_id,
            idle_s=max(0.0, float(now - m.last_used)),
            in_use=m.pins,
            hits=round(m.hits_at(now), 3),
        )
        for m in models
        if _reportable(m.model_id)
    ]
    return tuple(entries[-MAX_MODELS_PER_REPORT:])  # the most recently used, if ever too many


def _merged_loading(states: Sequence[CacheState]) -> tuple[str, ...]:
    loading = dict.fromkeys(
        model_id for state in states for model_id in state.loading if _reportable(model_id)
    )
    return tuple(loading)[:MAX_MODELS_PER_REPORT]


def build_snapshot(
    *,
    replica_id: str,
    incarnation: str,
    sequence: int,
    url: str,
    states: Sequence[CacheState],
    fallback_capacity: int,
    in_flight: int,
    max_ongoing_requests: int,
    draining: bool,
    load_ms_avg: float | None,
    now: float,
    fallback_max_concurrent_loads: int | None = None,
    load_failures: Sequence[LoadFailure] = (),
) -> ReplicaSnapshot:
    """The snapshot of a replica whose caches are in `states`, at `now` on the caches' clock;
    `load_failures` from every cache (the latest per model is reported)."""
    return ReplicaSnapshot(
        replica_id=replica_id,
        incarnation=incarnation,
        sequence=sequence,
        url=url,
        capacity=combined_capacity((s.capacity for s in states), fallback=fallback_capacity),
        models=_merged_models(states, now),
        loading=_merged_loading(states),
        in_flight=in_flight,
        max_ongoing_requests=max_ongoing_requests,
        draining=draining,
        load_ms_avg=load_ms_avg,
        max_concurrent_loads=combined_load_limit(
            states, fallback_capacity=fallback_capacity, fallback=fallback_max_concurrent_loads
        ),
        load_failures=_latest_failures(load_failures),
    )


def _latest_failures(failures: Sequence[LoadFailure]) -> tuple[LoadFailure, ...]:
    """One per model (the latest), newest last, at most `MAX_LOAD_FAILURES`."""
    latest: dict[str, LoadFailure] = {}
    for failure in failures:
        known = latest.get(failure.model_id)
        if known is None or failure.age_s < known.age_s:
            latest[failure.model_id] = failure
    ordered = sorted(latest.values(), key=lambda f: -f.age_s)
    return tuple(ordered[-MAX_LOAD_FAILURES:])


def state_document(
    snapshot: ReplicaSnapshot, routers: Mapping[str, bool] | None = None
) -> ReplicaStateDocument:
    """`snapshot` as the replica's `/-/state` document (JSON-ready); `routers`: each router
    it reports to, and whether that channel is connected."""
    return ReplicaStateDocument(
        replica_id=snapshot.replica_id,
        incarnation=snapshot.incarnation,
        sequence=snapshot.sequence,
        url=snapshot.url,
        capacity=snapshot.capacity,
        models=[
            ResidentModelDocument(
                model_id=m.model_id, idle_s=m.idle_s, in_use=m.in_use, hits=m.hits
            )
            for m in snapshot.models
        ],
        loading=list(snapshot.loading),
        in_flight=snapshot.in_flight,
        max_ongoing_requests=snapshot.max_ongoing_requests,
        draining=snapshot.draining,
        load_ms_avg=snapshot.load_ms_avg,
        max_concurrent_loads=snapshot.max_concurrent_loads,
        routers=[
            ReportedRouterDocument(url=url, connected=connected)
            for url, connected in sorted((routers or {}).items())
        ],
    )
