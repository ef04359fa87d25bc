"""Baseline placement policies, each a `router.policy.Policy` over the same `ClusterView`.

- `RandomPolicy`: a uniformly random routable replica with room (rejection sampling).
- `RoundRobinPolicy`: the next routable replica with room, in a fixed cyclic order.
- `ConsistentHashPolicy`: a hash ring with virtual nodes over the replicas, keyed by model id;
  a full or unroutable replica is skipped for the next one on the ring; all full: wait.
- `RayPolicy`: Ray Serve's `PowerOfTwoChoicesRequestRouter` with its `MultiplexMixin`
  (python/ray/serve/_private/request_router/{pow_2_router,request_router}.py):
  1. while a request has waited less than the matching timeout (drawn uniformly from
     [T, 2T] at every attempt, T = RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S = 1 s):
     the replicas holding the model (loaded or loading). If none holds it and no request for
     it fell back yet, or this request already tried the holders once: the replicas with the
     fewest models (and the model is marked "fell back"; a match clears the mark). No holder
     but someone fell back already: no candidate this attempt;
  2. after the timeout: the replicas with the fewest models, once; then every replica;
  3. among the candidates, power of two choices: two at random, the shorter queue wins; a
     replica at max_ongoing_requests rejects. No pick: retry after Ray's backoff
     (0, 25 ms, 50 ms, ... doubling, at most 500 ms).
  Ray's router learns which replica holds which model from its controller, not from its own
  dispatches: here from the replicas' reports, `model_ids_delay_s` after they reach the router
  (PUSH_MULTIPLEXED_MODEL_IDS_INTERVAL_S = 0.1 s; the controller's broadcast is not modelled).
  Queue lengths are the router's exact in-flight counts (Ray probes the replicas). Not
  modelled: the cap on routing tasks, and handing a found replica to an older request for the
  same model (FIFOMixin). Ray never sends eviction hints: its replicas evict plain LRU.

Set iteration order is never relied on, so a seed gives the same decisions in every process.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from common.wire import ReplicaSnapshot
from router.policy import WAIT, Decision, Prefetch, Reject, Route
from router.simulation.contract import SimRequest
from router.view import ClusterView, ReplicaView

__all__ = ["ConsistentHashPolicy", "RandomPolicy", "RayPolicy", "RoundRobinPolicy"]

_NO_REPLICA = Reject("no replica is available")
_NONE: frozenset[str] = frozenset()


def _none_routable(view: ClusterView, avoid: AbstractSet[str] = frozenset()) -> Decision:
    return WAIT if any(r.routable and r.replica_id not in avoid for r in view) else _NO_REPLICA


def _usable(replica: ReplicaView, avoid: AbstractSet[str]) -> bool:
    """Routable, with room, and not one that already failed the request."""
    return replica.routable and replica.has_room and replica.replica_id not in avoid


class _ReplicaList:
    """The view's replicas as a list, rebuilt only when their number changes."""

    def __init__(self) -> None:
        self._items: list[ReplicaView] = []

    def of(self, view: ClusterView) -> list[ReplicaView]:
        if len(self._items) != len(view.replicas):
            self._items = [view.replicas[k] for k in sorted(view.replicas)]
        return self._items


class RandomPolicy:
    def __init__(self, *, seed: int = 0) -> None:
        self._rng = random.Random(f"random/{seed}")
        self._replicas = _ReplicaList()

    def plan_copies(self, view: ClusterView, model_id: str, now: float) -> list[Prefetch]:
        return []  # no prefetched copies

    def choose(
        self, view: ClusterView, model_id: str, now: float, *, avoid: AbstractSet[str] = _NONE
    ) -> Decision:
        replicas = self._replicas.of(view)
        if not replicas:
            return _NO_REPLICA
        for _ in range(4 * len(replicas)):
            replica = replicas[int(self._rng.random() * len(replicas))]
            if _usable(replica, avoid):
                return Route(replica)
        ready = [r for r in replicas if _usable(r, avoid)]
        return Route(self._rng.choice(ready)) if ready else _none_routable(view, avoid)


class RoundRobinPolicy:
    def __init__(self) -> None:
        self._next = 0
        self._replicas = _ReplicaList()

    def plan_copies(self, view: ClusterView, model_id: str, now: float) -> list[Prefetch]:
        return []  # no prefetched copies

    def choose(
        self, view: ClusterView, model_id: str, now: float, *, avoid: AbstractSet[str] = _NONE
    ) -> Decision:
        replicas = self._replicas.of(view)
        for step in range(len(replicas)):
            replica = replicas[(self._next + step) % len(replicas)]
            if _usable(replica, avoid):
                self._next = (self._next + step + 1) % len(replicas)
                return Route(replica)
        return _none_routable(view, avoid) if replicas else _NO_REPLICA


def _hash64(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class ConsistentHashPolicy:
    def __init__(self, *, virtual_nodes: int = 100) -> None:
        self.virtual_nodes = virtual_nodes
        self._points: list[int] = []
        self._owners: list[str] = []
        self._ring_of: frozenset[str] = frozenset()

    def plan_copies(self, view: ClusterView, model_id: str, now: float) -> list[Prefetch]:
        return []  # no prefetched copies

    def choose(
        self, view: ClusterView, model_id: str, now: float, *, avoid: AbstractSet[str] = _NONE
    ) -> Decision:
        if len(self._ring_of) != len(view.replicas) or not self._ring_of.issuperset(view.replicas):
            self._build(view)
        if not self._points:
            return _NO_REPLICA
        start = bisect.bisect(self._points, _hash64(model_id))
        seen: set[str] = set()
        size = len(self._points)
        for step in range(size):
            replica_id = self._owners[(start + step) % size]
            if replica_id in seen:
                continue
            seen.add(replica_id)
            replica = view.replicas[replica_id]
            if _usable(replica, avoid):
                return Route(replica)
            if len(seen) == len(self._ring_of):
                break
        return _none_routable(view, avoid)

    def _build(self, view: ClusterView) -> None:
        ring = sorted(
            (_hash64(f"{replica_id}#{v}"), replica_id)
            for replica_id in view.replicas
            for v in range(self.virtual_nodes)
        )
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]
        self._ring_of = frozenset(view.replicas)


@dataclass(slots=True)
class _RayRouting:
    """A request's routing context, as Ray keeps it (`RequestRoutingContext`)."""

    started_matching: float
    tried_first: bool = False
    tried_fewest: bool = False
    failures: int = 0


class RayPolicy:
    def __init__(
        self,
        *,
        seed: int = 0,
        matching_timeout_s: float = 1.0,
        model_ids_delay_s: float = 0.1,
        initial_backoff_s: float = 0.025,
        backoff_multiplier: float = 2.0,
        max_backoff_s: float = 0.5,
    ) -> None:
        self.matching_timeout_s = matching_timeout_s
        self.model_ids_delay_s = model_ids_delay_s
        self.initial_backoff_s = initial_backoff_s
        self.backoff_multiplier = backoff_multiplier
        self.max_backoff_s = max_backoff_s
        self._rng = random.Random(f"ray/{seed}")
        self._inbox: list[tuple[float, ReplicaSnapshot]] = []
        self._inbox_head = 0
        self._models_of: dict[str, frozenset[str]] = {}  # replica id -> loaded and loading
        self._holders: dict[str, set[str]] = {}
        self._fell_back: set[str] = set()
        self._fewest: tuple[str, ...] | None = None  # None: recompute
        self._fewest_among = 0  # how many replicas the view had when _fewest was computed
        self._all: tuple[str, ...] = ()

    # -- what Ray's router knows -----------------------------------------------------------

    def observe_report(self, snapshot: ReplicaSnapshot, now: float) -> None:
        self._inbox.append((now + self.model_ids_delay_s, snapshot))

    def _catch_up(self, now: float) -> None:
        inbox = self._inbox
        head = self._inbox_head
        while head < len(inbox) and inbox[head][0] <= now:
            self._learn(inbox[head][1])
            head += 1
        if head > 1024 and head * 2 > len(inbox):
            del inbox[:head]
            head = 0
        self._inbox_head = head

    def _learn(self, snapshot: ReplicaSnapshot) -> None:
        rid = snapshot.replica_id
        models = frozenset([m.model_id for m in snapshot.models]).union(snapshot.loading)
        old = self._models_of.get(rid, frozenset())
        if models == old:
            return
        for model_id in old - models:
            holders = self._holders[model_id]
            holders.discard(rid)
            if not holders:
                del self._holders[model_id]
        for model_id in models - old:
            self._holders.setdefault(model_id, set()).add(rid)
        if len(models) != len(old):
            self._fewest = None
        self._models_of[rid] = models

    def _fewest_models(self, view: ClusterView) -> tuple[str, ...]:
        if self._fewest is None or self._fewest_among != len(view.replicas):
            self._fewest_among = len(view.replicas)
            counts = {r.replica_id: len(self._models_of.get(r.replica_id, ())) for r in view}
            least = min(counts.values(), default=0)
            self._fewest = tuple(sorted(rid for rid, c in counts.items() if c == least))
        return self._fewest

    # -- choosing --------------------------------------------------------------------------

    def plan_copies(self, view: ClusterView, model_id: str, now: float) -> list[Prefetch]:
        return []  # no prefetched copies

    def choose(
        self, view: ClusterView, model_id: str, now: float, *, avoid: AbstractSet[str] = _NONE
    ) -> Decision:
        """A request seen for the first time (no routing history)."""
        return self.choose_request(view, SimRequest(-1, model_id, now, 0.0), now, avoid=avoid)

    def choose_request(
        self,
        view: ClusterView,
        request: SimRequest,
        now: float,
        *,
        avoid: AbstractSet[str] = _NONE,
    ) -> Decision:
        self._catch_up(now)
        routing = request.state
        if not isinstance(routing, _RayRouting):
            routing = _RayRouting(now)
            request.state = routing
        candidates = self._candidates(view, request.model_id, routing, now)
        chosen = self._pick_two(view, candidates, avoid) if candidates else None
        if chosen is not None:
            routing.failures = 0
            return Route(chosen)
        routing.failures += 1
        return _none_routable(view, avoid)

    def retry_at(self, request: SimRequest, now: float) -> float | None:
        routing = request.state
        failures = routing.failures if isinstance(routing, _RayRouting) else 1
        if failures <= 1:
            return now  # Ray retries once at once, then backs off
        backoff = self.initial_backoff_s * self.backoff_multiplier ** (failures - 2)
        return now + min(backoff, self.max_backoff_s)

    def _candidates(
        self, view: ClusterView, model_id: str, routing: _RayRouting, now: float
    ) -> tuple[str, ...]:
        if not model_id:
            return self._every(view)
        timeout = self._rng.uniform(self.matching_timeout_s, 2 * self.matching_timeout_s)
        if now - routing.started_matching < timeout:
            holders = self._holders.get(model_id)
            candidates: tuple[str, ...] = ()
            if (not holders and model_id not in self._fell_back) or routing.tried_first:
                candidates = self._fewest_models(view)
                self._fell_back.add(model_id)
            elif holders:
                self._fell_back.discard(model_id)
                candidates = tuple(sorted(holders))
            routing.tried_first = True
            return candidates
        if not routing.tried_fewest:
            routing.tried_fewest = True
            return self._fewest_models(view)
        return self._every(view)

    def _every(self, view: ClusterView) -> tuple[str, ...]:
        if len(self._all) != len(view.replicas):
            self._all = tuple(sorted(view.replicas))
        return self._all

    def _pick_two(
        self, view: ClusterView, candidates: tuple[str, ...], avoid: AbstractSet[str]
    ) -> ReplicaView | None:
        n = len(candidates)
        if n == 1:
            chosen = [candidates[0]]
        else:
            i = self._rng.randrange(n)
            j = self._rng.randrange(n - 1)
            chosen = [candidates[i], candidates[j + 1 if j >= i else j]]
        best: ReplicaView | None = None
        for replica_id in chosen:
            replica = view.replicas.get(replica_id)
            if replica is None or not _usable(replica, avoid):
                continue
            if best is None or replica.in_flight < best.in_flight:
                best = replica
        return best
