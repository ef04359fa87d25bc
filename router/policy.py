"""Placement: which replica serves a request for a model, decided from the cluster view.

Pure and deterministic: the view and the time come in, a decision goes out; nothing is read
from a clock or the network. The live router and `scripts/simulate` run the same object.

`ModelplexPolicy` (v3, the router's) keeps these rules, each with its own tests:
1. A model is served where it is held or loading; a burst for a cold model makes one load.
2. A cold model takes a free slot first, on a replica whose loader is free; otherwise the
   cluster's cheapest model goes: a spare copy, then the least frequently asked for, then the
   least recently used. A model in use or loading is never evicted.
3. A cold request waits rather than evict a model asked for more often than itself only while
   a cheaper model is about to free a slot for it: within 1.25 load times of its arrival, one
   such slot per request waiting ahead of it, and never while a replica that could load it
   sits idle. So its wait for a slot is bounded by about one load time, unless every slot is
   in use, and one-off requests churn through the cheap slots while popular models stay.
4. With a load limit per replica (`max_concurrent_loads`), a request whose every possible
   loader is busy waits in the router's queue until the first one frees, instead of queueing
   behind one replica's loads.
5. Hot models get more copies when their queue outlasts a load (`plan_copies`).
6. Several routers agree where a cold model goes without talking: the replica is chosen from
   what they all read alike in the reports (free slots, the replicas' reported hits as a
   model's worth, reported last use and load), ties broken by rendezvous hashing on the model
   id; only what the chosen replica gives up is this router's own call.
`AffinityPolicy` (v1) is plain affinity plus LRU, kept as a baseline for the simulator.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
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
    """Every suitable replica is busy; ask again when one finishes a request.

    `for_slot`: the request needs a model slot and waits for one that is about to free
    rather than evict a model worth more. `until`: ask again by then (router clock, seconds)
    even if nothing changed, since the wait is over at that time.
    """

    for_slot: bool = False
    until: float | None = None


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
_NO_PLANS: Final[Mapping[str, int]] = {}


@dataclass(slots=True)
class _Victim:
    replica: ReplicaView
    model_id: str  # its cheapest model by the reports, which `worth` is the worth of
    worth: float  # -1 for a spare copy, else the model's hits (or recent request count)
    cheapest_busy: float | None
    # Models in use or loading (so not evictable now): (worth, when expected to be free).
    busy: list[tuple[float, float]]
    load_start_at: float = 0.0  # when a load could start on the victim's replica
    # What it is told to give up: its cheapest model that none of this router's requests
    # uses (None: every one is in use, so the request waits for one to end).
    evict: str | None = None
    idle: _Victim | None = None  # the cheapest model on a replica with nothing to do


WAIT: Final = Wait()
# How long a cold request may wait for a cheaper slot, in load times from its arrival: about
# one, with a quarter more so that a load started just after it arrived still counts.
_SLOT_WAIT_LOADS: Final = 1.25
_ANY: Final = 1 << 30  # load turns: any replica, however many loads it has queued
_NO_REPLICA: Final = Reject("no replica is available")
_NONE: Final[frozenset[str]] = frozenset()
_FREE_SCANNED: Final = 256  # replicas with a free slot looked at per placement, at most


class Policy(Protocol):
    """What the router and the simulator need of a placement policy."""

    def choose(
        self, view: ClusterView, model_id: str, now: float, *, avoid: AbstractSet[str] = _NONE
    ) -> Decision:
        """Where to send a request for `model_id` at time `now` (seconds, any epoch).

        `avoid`: replicas that already failed this request; it goes to none of them, and with
        no other replica routable it is rejected.
        """
        ...

    def plan_copies(self, view: ClusterView, model_id: str, now: float) -> list[Prefetch]:
        """Extra copies to load for `model_id`, whose requests are waiting."""
        ...


class AffinityPolicy:
    """Policy v1: send a model's requests where it is loaded, else where plain LRU says."""

    def plan_copies(self, view: ClusterView, model_id: str, now: float) -> list[Prefetch]:
        return []

    def choose(
        self, view: ClusterView, model_id: str, now: float, *, avoid: AbstractSet[str] = _NONE
    ) -> Decision:
        if not model_id:
            return self._least_loaded(view, avoid)
        best: ReplicaView | None = None
        held = False
        for replica in view.holders_of(model_id):
            if not replica.routable or replica.replica_id in avoid:
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
        return self._place(view, avoid)

    def _least_loaded(self, view: ClusterView, avoid: AbstractSet[str]) -> Decision:
        best: ReplicaView | None = None
        any_routable = False
        for replica in view:
            if not replica.routable or replica.replica_id in avoid:
                continue
            any_routable = True
            if replica.has_room and (best is None or replica.in_flight < best.in_flight):
                best = replica
        if best is not None:
            return Route(best)
        return WAIT if any_routable else _NO_REPLICA

    def _place(self, view: ClusterView, avoid: AbstractSet[str]) -> Decision:
        free: ReplicaView | None = None
        oldest: tuple[float, ReplicaView, str] | None = None
        any_routable = False
        for replica in view:
            if not replica.routable or replica.replica_id in avoid:
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
    """Policy v3: the cluster's caches act as one cache that weighs how often a model is used
    and bounds how long a cold request waits for a slot.

    - Holders first: a replica holding the model with room, loaded copies before loading
      ones, then the fewest in flight. A cold model never gets a second load from a burst:
      the first dispatch makes its replica a holder, and later requests wait for it.
    - Stickiness with spill: when every holder is busy the request waits, unless the expected
      wait (requests queued for the model x inference time / holder capacity) exceeds the
      expected load time; then it is placed like a cold model.
    - Placement of a cold model, on a replica whose loader is free if any: a free slot if any
      (fewest models, then fewest in flight); otherwise evict the cheapest model in the
      cluster — extra copies of a model first, then the least frequently requested
      (frequencies age, TinyLFU style), the least recently used among equals — never a model
      in use or loading, and preferably on replicas whose load is within `load_bound` x the
      average. The replica is told which model to give up.
    - The wait for a cheaper slot (the module's rule 3): `Wait(for_slot=True, until=...)`,
      which admission counts (`Demand.slot_waiters`) and offers again at `until`.
      `patience` (load times), when set, replaces that bound with policy v2's fixed one: the
      request waits up to `patience` load times for any cheaper slot. A rarely needed override.
    - Hot models get more copies (`plan_copies`): when requests for a model have queued for
      longer than a load takes, copies are prefetched on more replicas until the holders can
      serve the demand, without any request paying for those loads.
    Large clusters are handled by sampling `sample` replicas per decision instead of scanning.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        sample: int = 16,
        load_bound: float = 1.25,
        protect_popular: bool = True,
        patience: float | None = None,
    ) -> None:
        self._rng = random.Random(seed)
        self.sample = sample
        self.load_bound = load_bound
        self.protect_popular = protect_popular
        self.patience = patience
        self._slot_key: tuple[int, int, int] | None = None
        self._slot: tuple[ReplicaView | None, _Victim | None] = (None, None)

    def choose(
        self, view: ClusterView, model_id: str, now: float, *, avoid: AbstractSet[str] = _NONE
    ) -> Decision:
        if not model_id:
            return self._least_loaded(view, avoid)
        best: ReplicaView | None = None
        best_key: tuple[bool, int, str] | None = None
        capacity = 0
        first_load = False
        for replica in view.holders_of(model_id):
            if not replica.routable or replica.replica_id in avoid:
                continue
            capacity += replica.max_ongoing_requests
            loading = replica.models[model_id].loading
            first_load = first_load or loading
            if replica.has_room:
                key = (loading, replica.in_flight, replica.replica_id)
                if best_key is None or key < best_key:
                    best, best_key = replica, key
        if best is not None:
            return Route(best)
        if capacity:
            if first_load:
                return WAIT  # a burst waits for its one load and the holders, never more
            sustained_at = self._sustained_at(view, model_id, now)
            if now < sustained_at:
                return Wait(until=sustained_at) if sustained_at < math.inf else WAIT
            demand = view.demand
            queued = demand.waiting.get(model_id, 0) + 1
            if queued * demand.infer_s / capacity <= demand.load_s:
                return WAIT
        return self._place(view, model_id, now, avoid)

    @classmethod
    def _sustained(cls, view: ClusterView, model_id: str, now: float) -> bool:
        """Whether requests for `model_id` have queued for longer than a load since its
        holders were ready: demand a burst of first requests cannot fake, since its queue
        drains soon after the one load."""
        return now >= cls._sustained_at(view, model_id, now)

    @staticmethod
    def _sustained_at(view: ClusterView, model_id: str, now: float) -> float:
        """When the demand for `model_id` counts as sustained if its queue stays (inf: none)."""
        demand = view.demand
        since = demand.waiting_since.get(model_id)
        if since is None:
            return math.inf
        ready_at = now
        for replica_id in view.holders.get(model_id, ()):
            copy = view.replicas[replica_id].models[model_id]
            if copy.loaded_at is not None and copy.loaded_at < ready_at:
                ready_at = copy.loaded_at
        return max(since, ready_at) + demand.load_s

    def plan_copies(self, view: ClusterView, model_id: str, now: float) -> list[Prefetch]:
        """More copies of `model_id` when its queue has outlasted a load; [] otherwise."""
        demand = view.demand
        if not self._sustained(view, model_id, now):
            return []
        holders = [r for r in view.holders_of(model_id) if r.routable]
        if not holders or any(r.models[model_id].loading for r in holders):
            return []  # the first load (or a copy) is still under way
        wanted = demand.waiting.get(model_id, 0) + sum(
            r.models[model_id].in_flight for r in holders
        )
        capacity = sum(r.max_ongoing_requests for r in holders)
        plan: list[Prefetch] = []
        taken = {r.replica_id for r in holders}
        planned: Counter[str] = Counter()
        value = demand.frequency(model_id)
        while capacity < wanted and len(taken) < len(view.replicas):
            target = self._target(view, model_id, taken, value=value, now=now, planned=planned)
            if not isinstance(target, tuple):
                break
            replica, evict = target
            plan.append(Prefetch(replica, model_id, evict))
            taken.add(replica.replica_id)
            capacity += replica.max_ongoing_requests
            if evict is not None:
                planned[evict] += 1
        return plan

    # -- placement -------------------------------------------------------------------------

    def _least_loaded(self, view: ClusterView, avoid: AbstractSet[str]) -> Decision:
        best: ReplicaView | None = None
        routable = False
        for replica in self._candidates(view):
            if replica.replica_id in avoid:
                continue
            routable = True
            if replica.has_room and (best is None or replica.in_flight < best.in_flight):
                best = replica
        if best is not None:
            return Route(best)
        return WAIT if routable or _routable_besides(view, avoid) else _NO_REPLICA

    def _place(
        self, view: ClusterView, model_id: str, now: float, avoid: AbstractSet[str]
    ) -> Decision:
        target = self._target(view, model_id, set(avoid), value=None, now=now)
        if isinstance(target, Wait):
            return target
        if target is not None:
            return Route(target[0], evict=target[1])
        return WAIT if _routable_besides(view, avoid) else _NO_REPLICA

    def _target(
        self,
        view: ClusterView,
        model_id: str,
        exclude: set[str],
        *,
        value: int | None,
        now: float,
        planned: Counter[str] | None = None,
    ) -> tuple[ReplicaView, str | None] | Wait | None:
        """Where a new copy of `model_id` goes and what it evicts there.

        Replicas within the load bound first; if none can take it, any replica. With `value`
        (a prefetched copy), only models worth less than it may be evicted. `planned` counts
        evictions already planned, so the last copy of a model is never taken as a spare.
        """
        # A model no replica holds finds the same slot as any other until the view or the
        # demand changes: while a queue is offered, one search serves every cold request.
        key = (id(view), view.version, view.demand.version)
        cacheable = not exclude and planned is None and model_id not in view.holders
        if cacheable and self._slot_key == key:
            free, found = self._slot
        else:
            free, found = self._find_slot(view, model_id, exclude, planned or _NO_PLANS, now)
            if cacheable:
                self._slot_key, self._slot = key, (free, found)
        # Every loader that could take it is busy: wait for the first to free (in the router's
        # queue, which serves waiters in order, rather than in one replica's queue of loads).
        if free is not None:
            start_at = free.load_schedule(now, view.demand.load_s)[1]
            if start_at > now:
                return None if value is not None else Wait(for_slot=True, until=start_at)
            if not free.has_room:
                return None if value is not None else WAIT  # for one of our requests there
            return free, None
        if found is None:
            return None
        if value is not None and found.worth >= value:
            return None
        if found.load_start_at > now:
            return None if value is not None else Wait(for_slot=True, until=found.load_start_at)
        if value is None and self.protect_popular:
            wait = self._wait_for_slot(view, model_id, found, now)
            if wait is not None:
                if found.idle is None:
                    return wait
                # No replica that could load the model sits idle while a request waits.
                found = found.idle
        if found.evict is None or not found.replica.has_room:
            return None if value is not None else WAIT  # for one of our requests there to end
        return found.replica, found.evict

    def _wait_for_slot(
        self, view: ClusterView, model_id: str, found: _Victim, now: float
    ) -> Wait | None:
        """Whether a cold request should wait for a cheaper slot rather than evict `found`.

        Evicting a model asked for more often than this one costs a load later; waiting costs
        this request time. It waits only while a cheaper model (in use or loading) is expected
        to free its slot within `_SLOT_WAIT_LOADS` load times of the request's arrival: one
        such slot per request already waiting for a slot ahead of it, and never past that.
        """
        demand = view.demand
        if found.cheapest_busy is None or found.worth <= found.cheapest_busy:
            return None  # nothing cheaper will free up
        if found.worth <= demand.frequency(model_id):
            return None  # the newcomer is asked for as often: it earns the slot (TinyLFU)
        since = min(now, demand.waiting_since.get(model_id, now))
        if self.patience is not None:  # policy v2's fixed patience, an override
            until = since + self.patience * demand.load_s
            return Wait(for_slot=True, until=until) if now < until else None
        horizon = since + _SLOT_WAIT_LOADS * demand.load_s
        if now >= horizon:
            return None
        soon = sum(1 for worth, free_at in found.busy if worth < found.worth and free_at <= horizon)
        if demand.slot_waiters >= soon:
            return None
        return Wait(for_slot=True, until=horizon)

    def _find_slot(
        self,
        view: ClusterView,
        model_id: str,
        exclude: set[str],
        planned: Mapping[str, int],
        now: float,
    ) -> tuple[ReplicaView | None, _Victim | None]:
        """A free slot, else the cheapest victim: on a replica whose loader is free (within
        the load bound if possible), then behind a busy loader (likewise)."""
        limit = self._load_limit(view, model_id)
        for bound, turns in ((limit, 0), (math.inf, 0), (limit, _ANY), (math.inf, _ANY)):
            free = self._free_target(view, model_id, exclude, bound, turns, now)
            if free is not None:
                return free, None
            found = self._victim(view, model_id, exclude, bound, planned, turns, now)
            if found is not None:
                return None, found
        return None, None

    def _victim(
        self,
        view: ClusterView,
        model_id: str,
        exclude: set[str],
        bound: float,
        planned: Mapping[str, int],
        turns: int,
        now: float,
    ) -> _Victim | None:
        """The replica with the cheapest evictable model (spare copies first, then the least
        frequently used, then the least recently used), and what it gives up.

        The choice rests on what every router reads alike in the reports (the models' hits,
        the replicas' load), with ties broken by rendezvous hashing on the model id, so
        routers whose own traffic differs choose the same replica for a cold model and a first
        request reaching each of them at once makes one load. Only a model in use rules a
        replica's cheapest out, and a router knows its own requests before the others do.
        """
        demand = view.demand
        frequency = demand.frequency
        holders = view.holders
        best: tuple[float, float, bytes] | None = None
        victim: _Victim | None = None
        cheapest_busy: float | None = None  # a model that will be evictable once its use ends
        busy: list[tuple[float, float]] = []
        idle: _Victim | None = None
        best_idle: tuple[float, float, bytes] | None = None
        for replica in self._candidates(view, model_id):
            if replica.replica_id in exclude or not _within(replica, bound):
                continue
            if model_id in replica.models:
                continue
            if turns != _ANY and replica.load_turns > turns:
                continue
            schedule: dict[str, float] | None = None  # built at the first loading model
            start_next = now  # when a load could start here: now, unless loads are queued
            # Idle by this router's count too: a router that thinks otherwise only waits.
            replica_idle = replica.in_flight == 0 and replica.reported_in_flight == 0
            shared: tuple[float, float, str] | None = None  # its cheapest model, by the reports
            local: tuple[float, float, str] | None = None  # its cheapest model free of ours
            for name, copy in replica.models.items():
                worth: float = frequency(name) if copy.hits is None else copy.hits
                if copy.loading or copy.in_use:
                    if cheapest_busy is None or worth < cheapest_busy:
                        cheapest_busy = worth
                    if copy.loading:
                        if schedule is None:
                            schedule, start_next = replica.load_schedule(now, demand.load_s)
                        free_at = schedule[name] + demand.infer_s
                    else:
                        free_at = copy.last_used + demand.infer_s
                    busy.append((worth, free_at))
                if copy.loading:
                    replica_idle = False
                    continue
                if len(holders[name]) > 1 and (
                    self._loaded_copies(view, name) - planned.get(name, 0) > 1
                ):
                    worth = -1  # a spare copy goes first
                if not copy.in_use and (local is None or (worth, copy.last_used) < local[:2]):
                    local = (worth, copy.last_used, name)
                if copy.in_use:
                    replica_idle = False
                elif shared is None or (worth, copy.reported_used) < shared[:2]:
                    shared = (worth, copy.reported_used, name)
            if shared is None:
                continue
            key = (shared[0], shared[1], _rank(model_id, replica.replica_id))
            hint = None if local is None else local[2]
            if best is None or key < best:
                best = key
                victim = _Victim(replica, shared[2], shared[0], None, busy, start_next, hint)
            if replica_idle and (best_idle is None or key < best_idle):
                best_idle = key
                idle = _Victim(replica, shared[2], shared[0], None, busy, start_next, hint)
        if victim is not None:
            victim.cheapest_busy = cheapest_busy
            victim.idle = idle
        return victim

    @staticmethod
    def _loaded_copies(view: ClusterView, model_id: str) -> int:
        """Routable replicas where `model_id` is loaded (not merely loading)."""
        ids = view.holders.get(model_id)
        if not ids or len(ids) == 1:
            return len(ids) if ids else 0
        count = 0
        for replica_id in ids:
            replica = view.replicas[replica_id]
            if replica.routable and not replica.models[model_id].loading:
                count += 1
        return count

    def _free_target(
        self,
        view: ClusterView,
        model_id: str,
        exclude: set[str],
        bound: float,
        turns: int,
        now: float,
    ) -> ReplicaView | None:
        """The replica with the most free slots (ties: rendezvous hashing on `model_id`), from
        what every router reads alike: routers with different traffic of their own agree.
        Behind busy loaders (`turns` is `_ANY`), the one whose loader frees first."""
        best: ReplicaView | None = None
        best_key: tuple[float, int, bytes] | None = None
        for index, replica_id in enumerate(view.free):
            if index >= _FREE_SCANNED and best is not None:
                break
            replica = view.replicas[replica_id]
            if replica_id in exclude or not _within(replica, bound):
                continue
            if turns != _ANY and replica.load_turns > turns:
                continue
            start_at = 0.0
            if turns == _ANY and replica.load_turns > 0:
                start_at = replica.load_schedule(now, view.demand.load_s)[1]
            key = (start_at, len(replica.models), _rank(model_id, replica_id))
            if best_key is None or key < best_key:
                best, best_key = replica, key
        return best

    def _load_limit(self, view: ClusterView, model_id: str) -> float:
        """`load_bound` x the candidates' mean load (requests in flight from every router),
        plus one."""
        candidates = self._candidates(view, model_id)
        total = sum(r.load for r in candidates)
        return self.load_bound * total / max(1, len(candidates)) + 1

    def _candidates(self, view: ClusterView, model_id: str = "") -> list[ReplicaView]:
        """Routable replicas to consider: all of them, or a sample in a large cluster: for a
        model, the same run of replica ids on every router (from its hash); else at random."""
        replicas = view.replica_list
        count = len(replicas)
        if count > self.sample:
            if model_id:
                start = int.from_bytes(_rank(model_id, ""), "big") % count
                replicas = [replicas[(start + i) % count] for i in range(self.sample)]
            else:
                replicas = [replicas[self._rng.randrange(count)] for _ in range(self.sample)]
        return [r for r in replicas if r.routable]


def _within(replica: ReplicaView, bound: float) -> bool:
    """Whether it has room for one more request and its load is within `bound`."""
    load = replica.load
    return load < replica.max_ongoing_requests and load <= bound


def _rank(model_id: str, replica_id: str) -> bytes:
    """Rendezvous hashing's weight of `replica_id` for `model_id`: the same on every router
    (a hash of both, not Python's per-process `hash`)."""
    key = f"{model_id}\0{replica_id}".encode()
    return hashlib.blake2b(key, digest_size=8).digest()


def _routable_besides(view: ClusterView, avoid: AbstractSet[str]) -> bool:
    """Whether a routable replica is left once `avoid` is set aside."""
    if not avoid:
        return bool(view.routable_ids)
    return any(replica_id not in avoid for replica_id in view.routable_ids)
