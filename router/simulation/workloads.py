"""Synthetic workloads: which model each request names, when it arrives, how long it runs.

A workload is generated once per run from the seed and replayed unchanged for every policy,
so policies are compared on the same request sequence. Model popularity is uniform or Zipf
(rank r drawn with weight 1 / r**s), optionally shifting (ranks re-permuted every N requests)
and with on/off bursts of a cold model (a model from the less popular half becomes hot for a
while). Service times are constants or drawn from a distribution with the given mean.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
from array import array
from dataclasses import dataclass

__all__ = ["Arrival", "Dist", "DistKind", "Popularity", "Workload", "WorkloadSpec", "generate"]


class DistKind(enum.Enum):
    CONST = "const"
    EXP = "exp"
    LOGNORMAL = "lognormal"


class Popularity(enum.Enum):
    UNIFORM = "uniform"
    ZIPF = "zipf"


class Arrival(enum.Enum):
    CLOSED = "closed"  # a fixed number of clients, each sending its next request on an answer
    POISSON = "poisson"  # open loop at a fixed mean rate


@dataclass(frozen=True, slots=True)
class Dist:
    """A positive duration in seconds: a constant, or random with mean `mean_s`."""

    kind: DistKind
    mean_s: float
    sigma: float = 0.5  # lognormal shape (the log's standard deviation)

    def sample(self, rng: random.Random) -> float:
        if self.kind is DistKind.CONST:
            return self.mean_s
        if self.mean_s <= 0:
            return 0.0
        if self.kind is DistKind.EXP:
            return rng.expovariate(1.0 / self.mean_s)
        mu = math.log(self.mean_s) - self.sigma * self.sigma / 2  # so that the mean is mean_s
        return rng.lognormvariate(mu, self.sigma)


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkloadSpec:
    requests: int
    models: int
    popularity: Popularity = Popularity.ZIPF
    zipf_s: float = 1.1
    shift_every: int = 0  # re-permute popularity ranks every this many requests; 0: never
    bursts: bool = False
    burst_every: int = 5000  # requests from one burst's start to the next
    burst_length: int = 500  # requests a burst lasts
    burst_share: float = 0.5  # fraction of the requests during a burst that name its model
    arrival: Arrival = Arrival.CLOSED
    rate: float = 0.0  # requests per simulated second, for POISSON
    infer: Dist = Dist(DistKind.CONST, 0.02)
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Workload:
    model_ids: list[str]  # per request, in the order the requests are issued
    arrivals: array[float] | None  # open loop: arrival times (seconds); closed loop: None
    infer_s: array[float]  # per request
    distinct_models: int


def generate(spec: WorkloadSpec) -> Workload:
    """The request sequence `spec` describes; the same spec gives the same workload."""
    rng = random.Random(f"workload/{spec.seed}")
    ranks = _ranks(spec, rng)
    order = list(range(spec.models))  # popularity rank -> model number
    numbers = array("q", bytes(8 * spec.requests))
    cold_from = spec.models // 2
    burst_model = -1
    for i in range(spec.requests):
        if spec.shift_every > 0 and i and i % spec.shift_every == 0:
            rng.shuffle(order)
        if spec.bursts:
            phase = (i - spec.burst_every // 2) % max(1, spec.burst_every)
            if phase == 0:  # a burst starts: pick a model from the less popular half
                burst_model = order[rng.randrange(cold_from, spec.models)]
            if phase < spec.burst_length and burst_model >= 0 and rng.random() < spec.burst_share:
                numbers[i] = burst_model
                continue
        numbers[i] = order[ranks[i]]
    names: dict[int, str] = {}
    model_ids = [names.get(n) or names.setdefault(n, f"m{n}") for n in numbers]
    arrivals: array[float] | None = None
    if spec.arrival is Arrival.POISSON:
        if spec.rate <= 0:
            raise ValueError("a Poisson arrival process needs a rate > 0")
        clock = 0.0
        arrivals = array("d", bytes(8 * spec.requests))
        for i in range(spec.requests):
            clock += rng.expovariate(spec.rate)
            arrivals[i] = clock
    infer = array("d", (spec.infer.sample(rng) for _ in range(spec.requests)))
    return Workload(model_ids, arrivals, infer, len(names))


def _ranks(spec: WorkloadSpec, rng: random.Random) -> list[int]:
    if spec.models < 1:
        raise ValueError("a workload needs at least one model")
    if spec.popularity is Popularity.UNIFORM:
        return [int(rng.random() * spec.models) for _ in range(spec.requests)]
    weights = (1.0 / (r**spec.zipf_s) for r in range(1, spec.models + 1))
    cumulative = list(itertools.accumulate(weights))
    return rng.choices(range(spec.models), cum_weights=cumulative, k=spec.requests)
