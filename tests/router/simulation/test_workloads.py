"""Workloads: the same spec gives the same sequence; popularity, shifts, bursts and arrival
times have the shape the flags promise."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from router.simulation.workloads import Arrival, Dist, DistKind, Popularity, WorkloadSpec, generate


def test_zipf_is_skewed_towards_the_first_ranks() -> None:
    counts = Counter(generate(WorkloadSpec(requests=20_000, models=100, zipf_s=1.1)).model_ids)
    assert counts.most_common(1)[0][0] == "m0"
    assert counts["m0"] > 5 * counts["m20"]


def test_uniform_covers_the_models_evenly() -> None:
    spec = WorkloadSpec(requests=20_000, models=10, popularity=Popularity.UNIFORM)
    counts = Counter(generate(spec).model_ids)
    assert len(counts) == 10
    assert max(counts.values()) < 1.2 * min(counts.values())


def test_shifts_change_the_favourite() -> None:
    spec = WorkloadSpec(requests=40_000, models=200, zipf_s=1.2, shift_every=10_000, seed=5)
    ids = generate(spec).model_ids
    chunks = [ids[i : i + 10_000] for i in range(0, 40_000, 10_000)]
    favourites = {Counter(chunk).most_common(1)[0][0] for chunk in chunks}
    assert len(favourites) > 1


def test_a_burst_makes_a_cold_model_hot_for_a_while() -> None:
    spec = WorkloadSpec(
        requests=3000, models=1000, bursts=True, burst_every=1000, burst_length=200, seed=2
    )
    ids = generate(spec).model_ids
    burst = Counter(ids[500:700]).most_common(1)[0]
    assert burst[1] > 60  # about half of the 200 requests
    assert Counter(ids[:500])[burst[0]] <= 2  # it was cold before


def test_poisson_arrivals_have_the_rate() -> None:
    spec = WorkloadSpec(requests=20_000, models=5, arrival=Arrival.POISSON, rate=100.0)
    arrivals = generate(spec).arrivals
    assert arrivals is not None
    assert all(a < b for a, b in itertools.pairwise(arrivals))
    assert arrivals[-1] / len(arrivals) == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("kind", list(DistKind))
def test_distributions_keep_their_mean(kind: DistKind) -> None:
    spec = WorkloadSpec(requests=20_000, models=1, infer=Dist(kind, 0.02))
    infer = generate(spec).infer_s
    assert sum(infer) / len(infer) == pytest.approx(0.02, rel=0.05)
    assert min(infer) >= 0
