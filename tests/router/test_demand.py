"""Demand: request counts with TinyLFU aging, waiting requests and since when, EWMA estimates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.wire import ReplicaSnapshot
from router.demand import ArrivalRate, Demand
from router.view import ClusterView


def arrive(demand: Demand, model_id: str, times: int = 1) -> None:
    for _ in range(times):
        demand.arrived(model_id)


# -- counts and aging ------------------------------------------------------------------------


def test_each_arrival_counts_once_per_model() -> None:
    demand = Demand()
    arrive(demand, "a", 3)
    arrive(demand, "b")
    assert demand.counts == {"a": 3, "b": 1}
    assert (demand.frequency("a"), demand.frequency("b"), demand.frequency("never")) == (3, 1, 0)


def test_a_request_without_a_model_is_not_counted() -> None:
    demand = Demand(window=2)
    arrive(demand, "", 5)
    assert demand.counts == {}
    arrive(demand, "a")
    assert demand.counts == {"a": 1}  # the empty ids did not bring the aging closer


def test_nothing_ages_before_window_arrivals() -> None:
    demand = Demand(window=10)
    arrive(demand, "a", 5)
    arrive(demand, "b", 3)
    arrive(demand, "c")
    assert demand.counts == {"a": 5, "b": 3, "c": 1}


def test_the_window_th_arrival_halves_every_count_and_drops_those_at_one() -> None:
    demand = Demand(window=10)
    arrive(demand, "a", 5)
    arrive(demand, "b", 3)
    arrive(demand, "c")
    arrive(demand, "d")
    assert demand.counts == {"a": 2, "b": 1}
    assert demand.frequency("c") == demand.frequency("d") == 0


def test_an_old_favourite_fades_out_within_a_few_windows() -> None:
    demand = Demand(window=100)
    arrive(demand, "old", 99)
    for n in range(400):
        demand.arrived(f"new{n % 50}")
    assert demand.frequency("old") == 0
    assert "old" not in demand.counts


@settings(max_examples=100, deadline=None)
@given(
    window=st.integers(2, 20),
    arrivals=st.lists(st.sampled_from(("a", "b", "c", "d", "e", "")), max_size=200),
)
def test_counts_stay_bounded_by_the_window(window: int, arrivals: list[str]) -> None:
    """Memory stays bounded by the window: the counts never add up to `window` or more."""
    demand = Demand(window=window)
    for model_id in arrivals:
        demand.arrived(model_id)
        assert sum(demand.counts.values()) < window
        assert all(count >= 1 for count in demand.counts.values())


@settings(max_examples=100, deadline=None)
@given(arrivals=st.lists(st.sampled_from(("a", "b", "c")), max_size=60))
def test_without_aging_counts_are_exact(arrivals: list[str]) -> None:
    demand = Demand(window=1_000)
    for model_id in arrivals:
        demand.arrived(model_id)
    assert demand.counts == {m: arrivals.count(m) for m in set(arrivals)}


# -- waiting requests ------------------------------------------------------------------------


def test_waiting_counts_requests_and_remembers_when_the_first_started() -> None:
    demand = Demand()
    demand.wait_started("m", 10.0)
    demand.wait_started("m", 11.0)
    demand.wait_started("n", 12.0)
    assert demand.waiting == {"m": 2, "n": 1}
    assert demand.waiting_since == {"m": 10.0, "n": 12.0}
    demand.wait_ended("m")
    assert demand.waiting == {"m": 1, "n": 1}
    assert demand.waiting_since["m"] == 10.0  # one is still waiting since then


def test_when_the_last_waiter_leaves_the_model_is_forgotten_and_since_restarts() -> None:
    demand = Demand()
    demand.wait_started("m", 10.0)
    demand.wait_started("m", 11.0)
    demand.wait_ended("m")
    demand.wait_ended("m")
    assert "m" not in demand.waiting
    assert "m" not in demand.waiting_since
    demand.wait_started("m", 20.0)
    assert (demand.waiting["m"], demand.waiting_since["m"]) == (1, 20.0)


def test_ending_a_wait_that_never_started_changes_nothing() -> None:
    demand = Demand()
    demand.wait_started("m", 1.0)
    demand.wait_ended("unknown")
    assert demand.waiting == {"m": 1}
    assert demand.waiting_since == {"m": 1.0}


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.sampled_from(("a", "b"))), max_size=60))
def test_waiting_matches_the_starts_less_the_ends(ops: list[tuple[bool, str]]) -> None:
    demand = Demand()
    expected: dict[str, int] = {}
    first: dict[str, float] = {}
    for step, (start, model_id) in enumerate(ops):
        if start:
            demand.wait_started(model_id, float(step))
            if expected.get(model_id, 0) == 0:
                first[model_id] = float(step)
            expected[model_id] = expected.get(model_id, 0) + 1
        elif expected.get(model_id, 0) > 0:
            demand.wait_ended(model_id)
            expected[model_id] -= 1
        assert demand.waiting == {m: n for m, n in expected.items() if n > 0}
        assert demand.waiting_since == {m: first[m] for m in demand.waiting}


# -- estimates -------------------------------------------------------------------------------


def test_estimates_start_from_the_guesses() -> None:
    demand = Demand(load_s_guess=2.5, infer_s_guess=0.2)
    assert (demand.load_s, demand.infer_s) == (2.5, 0.2)


def test_the_first_observation_replaces_the_guess_and_later_ones_move_it_by_a_tenth() -> None:
    demand = Demand(load_s_guess=9.0, infer_s_guess=9.0)
    demand.observe_inference(1.0)
    assert demand.infer_s == 1.0
    demand.observe_inference(2.0)
    assert demand.infer_s == pytest.approx(1.1)
    demand.observe_inference(2.0)
    assert demand.infer_s == pytest.approx(1.19)
    demand.observe_load(4.0)
    assert demand.load_s == 4.0
    demand.observe_load(0.0)
    assert demand.load_s == pytest.approx(3.6)
    assert demand.infer_s == pytest.approx(1.19)  # the two estimates are independent


def test_a_steady_duration_is_converged_on() -> None:
    demand = Demand()
    demand.observe_load(10.0)
    for _ in range(200):
        demand.observe_load(2.0)
    assert demand.load_s == pytest.approx(2.0, abs=1e-6)


def test_a_report_feeds_the_replicas_load_time_to_the_estimate() -> None:
    demand = Demand(load_s_guess=1.0)
    view = ClusterView(demand=demand)
    assert view.demand is demand
    report = ReplicaSnapshot(
        replica_id="r1",
        incarnation="i",
        sequence=1,
        url="http://r1.test:8000",
        capacity=2,
        models=(),
        loading=(),
        in_flight=0,
        max_ongoing_requests=1,
        draining=False,
        load_ms_avg=3000.0,
    )
    view.apply_report(report, 0.0)
    assert demand.load_s == pytest.approx(3.0)


# -- requests per minute ---------------------------------------------------------------------


def test_no_rates_without_a_clock() -> None:
    demand = Demand()
    arrive(demand, "a")
    assert demand.per_minute(0.0) == {}


def test_rates_count_the_last_minute_of_arrivals() -> None:
    now = [0.0]
    demand = Demand()
    demand.track_rates(lambda: now[0])
    arrive(demand, "a", 30)
    now[0] = 25.0
    arrive(demand, "b", 2)
    arrive(demand, "a", 10)
    assert demand.per_minute(30.0) == {"a": 40.0, "b": 2.0}
    assert demand.per_minute(65.0) == {"a": 10.0, "b": 2.0}  # the first bucket left the window
    assert demand.per_minute(200.0) == {}  # all forgotten


def test_rates_scale_a_shorter_window_to_a_minute() -> None:
    rate = ArrivalRate(window_s=10.0, buckets=2)
    for t in (0.0, 1.0, 6.0):
        rate.arrived("m", t)
    assert rate.per_minute(7.0) == {"m": 18.0}
    assert rate.per_minute(12.0) == {"m": 6.0}


def test_rate_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="window_s"):
        ArrivalRate(window_s=0.0)
    with pytest.raises(ValueError, match="buckets"):
        ArrivalRate(buckets=0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.floats(0.0, 300.0, allow_nan=False)), max_size=60)
)
def test_a_rate_never_exceeds_the_arrivals_in_its_buckets(
    arrivals: list[tuple[str, float]],
) -> None:
    rate = ArrivalRate()
    arrivals.sort(key=lambda a: a[1])
    for model_id, t in arrivals:
        rate.arrived(model_id, t)
    now = arrivals[-1][1] if arrivals else 0.0
    for model_id, per_minute in rate.per_minute(now).items():
        recent = sum(1 for m, t in arrivals if m == model_id and t > now - 70.0)
        assert 0 < per_minute <= recent
