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

from dataclasses import dataclass
from typing import Final, Protocol

from router.view import ClusterView, ReplicaView

__all__ = ["WAIT", "AffinityPolicy", "Decision", "Policy", "Reject", "Route", "Wait"]


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


Decision = Route | Wait | Reject
WAIT: Final = Wait()
_NO_REPLICA: Final = Reject("no replica is available")


class Policy(Protocol):
    """What the router and the simulator need of a placement policy."""

    def choose(self, view: ClusterView, model_id: str, now: float) -> Decision:
        """Where to send a request for `model_id` at time `now` (seconds, any epoch)."""
        ...


class AffinityPolicy:
    """Send a model's requests where it is loaded; load it where that costs the least."""

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
