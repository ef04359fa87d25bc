"""The replica's report built from its caches: hits decayed to the report's time and merged
across caches (the rest of `build_snapshot` is tested with the reporter)."""

from __future__ import annotations

import pytest

from common.wire import ReplicaSnapshot, decode_snapshot, encode_snapshot
from replica._cache_core import HITS_HALF_LIFE_S, CacheCore, CacheState, ResidentModel
from replica._snapshot import build_snapshot

HALF = HITS_HALF_LIFE_S


def report(*states: CacheState, now: float) -> ReplicaSnapshot:
    return build_snapshot(
        replica_id="r",
        incarnation="i",
        sequence=0,
        url="http://h:1",
        states=states,
        fallback_capacity=3,
        in_flight=0,
        max_ongoing_requests=1,
        draining=False,
        load_ms_avg=None,
        now=now,
    )


def cache(*models: ResidentModel, capacity: int = 4) -> CacheState:
    return CacheState(capacity, models, ())


def reported_hits(snapshot: ReplicaSnapshot) -> dict[str, float]:
    return {m.model_id: m.hits for m in snapshot.models}


def test_hits_are_decayed_to_the_time_of_the_report() -> None:
    state = cache(ResidentModel("a", 0.0, 0, 8.0), ResidentModel("b", HALF, 0, 3.0))
    assert reported_hits(report(state, now=HALF)) == {"a": 4.0, "b": 3.0}
    assert reported_hits(report(state, now=3 * HALF)) == {"a": 1.0, "b": 0.75}


def test_hits_are_rounded_to_three_decimals() -> None:
    state = cache(ResidentModel("a", 0.0, 0, 1 / 3), ResidentModel("b", 0.0, 0, 2.0))
    assert reported_hits(report(state, now=0.0)) == {"a": 0.333, "b": 2.0}
    assert reported_hits(report(state, now=10.0)) == {
        "a": round(1 / 3 * 0.5 ** (10 / HALF), 3),
        "b": round(2.0 * 0.5 ** (10 / HALF), 3),
    }
    faded = report(cache(ResidentModel("old", 0.0, 0, 1.0)), now=12 * HALF)
    assert reported_hits(faded) == {"old": 0.0}  # 1/4096 rounds away


def test_a_model_in_several_caches_reports_the_sum_of_its_hits_at_its_latest_use() -> None:
    """In the first cache `a` was last used at 0 with 8 hits, in the second at one half-life
    with 2: at that later use the first counts 4, so 6 in all, decaying from there."""
    first = cache(ResidentModel("a", 0.0, 1, 8.0), ResidentModel("only-first", 0.0, 0, 5.0))
    second = cache(ResidentModel("a", HALF, 2, 2.0))
    for states in ((first, second), (second, first)):  # in either order
        snapshot = report(*states, now=2 * HALF)
        assert reported_hits(snapshot) == {"only-first": 1.25, "a": 3.0}
        merged = {m.model_id: m for m in snapshot.models}["a"]
        assert (merged.idle_s, merged.in_use) == (HALF, 3)


def test_a_model_in_three_caches_sums_all_three() -> None:
    states = [cache(ResidentModel("a", t, 0, 4.0)) for t in (0.0, HALF, 2 * HALF)]
    assert reported_hits(report(*states, now=2 * HALF)) == {"a": 1.0 + 2.0 + 4.0}


def test_the_hits_of_a_real_cache_reach_the_wire() -> None:
    core = CacheCore(capacity=2)
    core.acquire("a", 100.0, seed_hits=6.0)
    core.loaded("a")
    core.acquire("a", 100.0)
    core.acquire("b", 100.0)  # loading: reported among `loading`, with no hits
    snapshot = report(core.state(), now=100.0 + HALF)
    assert reported_hits(snapshot) == {"a": 3.5}
    assert snapshot.loading == ("b",)
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot


@pytest.mark.parametrize("now", [0.0, 50.0])
def test_a_report_built_before_a_models_last_use_does_not_grow_its_hits(now: float) -> None:
    """The clock read for a report may come before a use recorded by another task."""
    assert reported_hits(report(cache(ResidentModel("a", 100.0, 0, 2.0)), now=now)) == {"a": 2.0}
