"""Percentiles and the worst model's p99, shared by the simulator's and the bench's reports."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.simulation.tails import (
    MIN_MODEL_REQUESTS,
    ModelTail,
    percentile,
    tails,
    worst_model_p99,
)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 0.5) == 51.0  # rank round(49.5) = 50
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert math.isnan(percentile([], 0.99))


def test_no_requests_no_worst_model() -> None:
    assert worst_model_p99([], []) is None
    empty = tails([], [])
    assert empty.worst_model is None
    assert math.isnan(empty.p99)


def test_models_under_the_threshold_are_ignored() -> None:
    frequent = ["a"] * MIN_MODEL_REQUESTS
    rare = ["b"] * (MIN_MODEL_REQUESTS - 1)  # one short: its 10 s answers do not count
    models = frequent + rare
    latencies = [1.0] * len(frequent) + [10.0] * len(rare)
    assert worst_model_p99(models, latencies) == ModelTail("a", 1.0, MIN_MODEL_REQUESTS)
    assert worst_model_p99(rare, [10.0] * len(rare)) is None


def test_the_largest_per_model_p99_wins() -> None:
    models = ["fast"] * 30 + ["slow"] * 30
    latencies = [0.01] * 30 + [0.01] * 25 + [2.0] * 5
    worst = worst_model_p99(models, latencies)
    assert worst == ModelTail("slow", 2.0, 30)


def test_ties_go_to_the_model_id_that_sorts_first() -> None:
    models = ["m2"] * 25 + ["m10"] * 25 + ["m1"] * 25
    latencies = [5.0] * 75
    assert worst_model_p99(models, latencies) == ModelTail("m1", 5.0, 25)
    assert worst_model_p99(list(reversed(models)), latencies) == ModelTail("m1", 5.0, 25)


def test_the_threshold_is_a_parameter() -> None:
    assert worst_model_p99(["a", "a", "b"], [1.0, 1.0, 9.0], min_requests=1) == ModelTail(
        "b", 9.0, 1
    )


def test_mismatched_lengths_are_an_error() -> None:
    with pytest.raises(ValueError, match="model ids"):
        worst_model_p99(["a"], [1.0, 2.0])


def test_tails_without_model_ids_have_no_worst_model() -> None:
    run = tails([3.0, 1.0, 2.0], None)
    assert (run.p50, run.p99, run.p999) == (2.0, 3.0, 3.0)
    assert run.worst_model is None
    assert run.min_model_requests == MIN_MODEL_REQUESTS


@given(
    st.lists(
        st.tuples(st.sampled_from("abcde"), st.floats(min_value=0, max_value=1e3)),
        max_size=200,
    )
)
def test_the_worst_model_is_no_worse_than_the_slowest_request(
    answers: list[tuple[str, float]],
) -> None:
    models = [model for model, _ in answers]
    latencies = [latency for _, latency in answers]
    worst = worst_model_p99(models, latencies, min_requests=5)
    if worst is None:
        assert all(models.count(m) < 5 for m in set(models))
        return
    assert worst.requests == models.count(worst.model) >= 5
    assert worst.p99 <= max(latencies)
    for model in set(models):
        own = sorted(latency for m, latency in answers if m == model)
        if len(own) >= 5:
            assert worst.p99 >= percentile(own, 0.99)
