"""Placement: which replica serves a request for a model, decided from the cluster view.

Pure and deterministic: the view and the time come in, a decision goes out; nothing is read
from a clock or the network. The live router and `scripts/simulate` run the same object.

Rules (affinity first, loads last):
1. A replica holding or loading the model, with room for another request: the one with the
   fewest requests in flight. The request never causes a load.
2. Holders exist but are all busy: wait for one (a load elsewhere costs more than a short wait).
3. No holder: a replica with a free slot and room (fewest models, then fewest in flight).
4. No free slot: the replica whose evictable model (loaded, not in use) was used least recently
   across the cluster; the request tells it which model to give up.
5. Nothing routable at all: reject; everything busy: wait.
Requests without a model id go to the routable replica with the fewest requests in flight.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final, Protocol

from router.view import ClusterView, ReplicaView

__all__ = [
    "WAIT",
    "AffinityPolicy",
    "Decision",
    "ModelplexPolicy",
    "Policy",
    "Prefetch",
    "Reject",
    "Route",
    "Wait",
]


@dataclass(frozen=True, slots=True)
class Route:
    replica: ReplicaView
    evict: str | None = None  # the model the replica should give up for this one


@dataclass(frozen=True, slots=True)
class Wait:
    """Every suitable replica is busy; ask again when one finishes a request."""


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str


@dataclass(frozen=True, slots=True)
class Prefetch:
    """Load another copy of a hot model on `replica`, with no request waiting on it."""

    replica: ReplicaView
    model_id: str
    evict: str | None = None


Decision = Route | Wait | Reject
WAIT: Final = Wait()
_NO_REPLICA: Final = Reject("no replica is available")


class Policy(Protocol):
    """What the router and the simulator need of a placement policy."""

    def choose(self, view: ClusterView, model_id: str, now: float) -> Decision:
        """Where to send a request for `model_id` at time `now` (seconds, any epoch)."""
        ...

    def plan_copies(self, view: ClusterView, model_id: str, now: float) -> list[Prefetch]:
        """Extra copies to load for `model_id`, whose requests are waiting."""
        ...


class AffinityPolicy:
    """Policy v1: send a model's requests where it is loaded, else where plain LRU says."""

    def plan_copies(self, view: ClusterView, model_id: str, now: float) -> list[Prefetch]:
        return []

    def choose(self, view: ClusterView, model_id: str, now: float) -> Decision:
        if not model_id:
            return self._least_loaded(view)
        best: ReplicaView | None = None
        held = False
        for replica in view.holders_of(model_id):
            if not replica.routable:
                continue
            held = True
            if replica.has_room and (
                best is None
                or (replica.in_flight, replica.replica_id) < (best.in_flight, best.replica_id)
            ):
                best = replica
        if best is not None:
            return Route(best)
        if held:
            return WAIT
        return self._place(view)

    def _least_loaded(self, view: ClusterView) -> Decision:
        best: ReplicaView | None = None
        any_routable = False
        for replica in view:
            if not replica.routable:
                continue
            any_routable = True
            if replica.has_room and (best is None or replica.in_flight < best.in_flight):
                best = replica
        if best is not None:
            return Route(best)
        return WAIT if any_routable else _NO_REPLICA

    def _place(self, view: ClusterView) -> Decision:
        free: ReplicaView | None = None
        oldest: tuple[float, ReplicaView, str] | None = None
        any_routable = False
        for replica in view:
            if not replica.routable:
                continue
            any_routable = True
            if not replica.has_room:
                continue
            if replica.free_slots > 0:
                key = (len(replica.models), replica.in_flight)
                if free is None or key < (len(free.models), free.in_flight):
                    free = replica
            elif free is None:
                victim = replica.eviction_candidate()
                if victim is not None and (oldest is None or victim.last_used < oldest[0]):
                    oldest = (victim.last_used, replica, victim.model_id)
        if free is not None:
            return Route(free)
        if oldest is not None:
            return Route(oldest[1], evict=oldest[2])
        return WAIT if any_routable else _NO_REPLICA


class ModelplexPolicy:
    """Policy v2: the cluster's caches act as one cache that weighs how often a model is used.

    - Holders first: a replica holding the model with room, loaded copies before loading
      ones, then the fewest in flight. A cold model never gets a second load from a burst:
      the first dispatch makes its replica a holder, and later requests wait for it.
    - Stickiness with spill: when every holder is busy the request waits, unless the expected
      wait (requests queued for the model x inference time / holder capacity) exceeds the
      expected load time; then it is placed like a cold model.
    - Placement of a cold model: a free slot if any (fewest models, then fewest in flight);
      otherwise evict the cheapest model in the cluster — extra copies of a model first, then
      the least frequently requested (frequencies age, TinyLFU style), the least recently used
      among equals — never a model in use or loading, and only on replicas whose load is within
      `load_bound` x the average (bounded load). The replica is told which model to give up.
    - Hot models get more copies (`plan_copies`): when requests for a model have queued for
      longer than a load takes, copies are prefetched on more replicas until the holders can
      serve the demand, without any request paying for those loads.
    Large clusters are handled by sampling `sample` replicas per decision instead of scanning.
    """

    def __init__(self, *, seed: int = 0, sample: int = 16, load_bound: float = 1.25) -> None:
        self._rng = random.Random(seed)
        self.sample = sample
        self.load_bound = load_bound

    def choose(self, view: ClusterView, model_id: str, now: float) -> Decision:
        if not model_id:
            return self._least_loaded(view)
        best: ReplicaView | None = None
        best_key: tuple[bool, int, str] | None = None
        holders = 0
        for replica in view.holders_of(model_id):
            if not replica.routable:
                continue
            holders += replica.max_ongoing_requests
            if replica.has_room:
                key = (replica.models[model_id].loading, replica.in_flight, replica.replica_id)
                if best_key is None or key < best_key:
                    best, best_key = replica, key
        if best is not None:
            return Route(best)
        if holders:
            demand = view.demand
            queued = demand.waiting.get(model_id, 0) + 1
            if queued * demand.infer_s / holders <= demand.load_s:
                return WAIT
        return self._place(view, model_id)

    def plan_copies(self, view: ClusterView, model_id: str, now: float) -> list[Prefetch]:
        """More copies of `model_id` when its queue has outlasted a load; [] otherwise."""
        demand = view.demand
        since = demand.waiting_since.get(model_id)
        if since is None or now - since < demand.load_s:
            return []
        holders = [r for r in view.holders_of(model_id) if r.routable]
        if not holders or any(r.models[model_id].loading for r in holders):
            return []  # the first load (or a copy) is still under way
        per_replica = max(1, holders[0].max_ongoing_requests)
        wanted = demand.waiting.get(model_id, 0) + sum(r.in_flight for r in holders)
        copies = min(-(-wanted // per_replica), len(view.replicas)) - len(holders)
        plan: list[Prefetch] = []
        taken = {r.replica_id for r in holders}
        for _ in range(copies):
            target = self._target(view, model_id, taken, value=demand.frequency(model_id))
            if target is None:
                break
            plan.append(Prefetch(target[0], model_id, target[1]))
            taken.add(target[0].replica_id)
        return plan

    # -- placement -------------------------------------------------------------------------

    def _least_loaded(self, view: ClusterView) -> Decision:
        best: ReplicaView | None = None
        routable = False
        for replica in self._candidates(view):
            routable = True
            if replica.has_room and (best is None or replica.in_flight < best.in_flight):
                best = replica
        if best is not None:
            return Route(best)
        return WAIT if routable or view.routable_ids else _NO_REPLICA

    def _place(self, view: ClusterView, model_id: str) -> Decision:
        target = self._target(view, model_id, set(), value=None)
        if target is not None:
            return Route(target[0], evict=target[1])
        return WAIT if view.routable_ids else _NO_REPLICA

    def _target(
        self, view: ClusterView, model_id: str, exclude: set[str], *, value: int | None
    ) -> tuple[ReplicaView, str | None] | None:
        """Where a new copy of `model_id` goes and what it evicts there.

        With `value`, only models worth less than it may be evicted (a copy must not push out
        something more useful than itself).
        """
        bound = self._load_limit(view)
        free = self._free_target(view, exclude, bound)
        if free is not None:
            return free, None
        demand = view.demand
        best: tuple[tuple[int, float], ReplicaView, str] | None = None
        for replica in self._candidates(view):
            if replica.replica_id in exclude or not replica.has_room:
                continue
            if replica.in_flight > bound or model_id in replica.models:
                continue
            for copy in replica.models.values():
                if copy.loading or copy.in_use:
                    continue
                extra = len(view.holders.get(copy.model_id, ())) > 1
                key = (-1 if extra else demand.frequency(copy.model_id), copy.last_used)
                if best is None or key < best[0]:
                    best = (key, replica, copy.model_id)
        if best is None or (value is not None and best[0][0] >= value):
            return None
        return best[1], best[2]

    def _free_target(
        self, view: ClusterView, exclude: set[str], bound: float
    ) -> ReplicaView | None:
        best: ReplicaView | None = None
        for index, replica_id in enumerate(view.free):
            if index >= self.sample and best is not None:
                break
            replica = view.replicas[replica_id]
            if replica_id in exclude or not replica.has_room or replica.in_flight > bound:
                continue
            key = (len(replica.models), replica.in_flight)
            if best is None or key < (len(best.models), best.in_flight):
                best = replica
        return best

    def _load_limit(self, view: ClusterView) -> float:
        return self.load_bound * view.in_flight / max(1, len(view.routable_ids)) + 1

    def _candidates(self, view: ClusterView) -> list[ReplicaView]:
        """Routable replicas to consider: all of them, or a random sample in a large cluster."""
        replicas = view.replica_list
        if len(replicas) > self.sample:
            replicas = [replicas[self._rng.randrange(len(replicas))] for _ in range(self.sample)]
        return [r for r in replicas if r.routable]
