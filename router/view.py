"""The router's view of the cluster: replicas, the models each holds, and requests in flight.

Pure and synchronous: time is passed in, nothing here awaits or reads a clock. The view
changes only through a few methods — a report arrived (`apply_report`), a request was
dispatched (`dispatch`) or finished (`finish`) — and one method for every way a replica leaves
routing or the view: a connection to it was refused (`mark_down`), its report channel closed
(`channel_closed`) or began carrying another replica's reports (`superseded`), it went quiet
(`expire`), it stayed out long enough to be dropped (`forget_departed`) or left (`forget`), or
an operator drained it (`drain`). A report from it brings it back. A placement this router
takes back before it reached the replica (another router placed the model first, by the
placement lease) leaves the view at once (`claimed_elsewhere`). An operator's eviction of
a model takes it out of the view at once (`evicted`); the replica stops reporting it. Its
circuit breaker (`router.breaker`) takes it out of routing after consecutive failed requests,
whatever its reports say (`request_failed`), lets one probe through after a cool-down
(`cool_down`) and closes on the probe's answer (`request_answered`).
The HTTP glue calls these and decides nothing. The view keeps these invariants:

- `holders[m]` is exactly the set of replica ids whose `models` contain m (the index never
  disagrees with the replicas; property-tested);
- a dispatch takes effect at once (optimistically): the model is loading on that replica and is
  its most recently used, so a burst for a cold model sees one holder, not a spray of loads;
  reports that predate the dispatch cannot erase it while it is pending or in use, nor for
  `answered_grace_s` after its answer; a report after that without it is believed (another
  router's request may have evicted it);
- a report is applied only if it is newer (same incarnation, higher sequence) or comes from a
  new incarnation (the replica restarted: what the old process held is gone); a late report of
  an incarnation already replaced is stale, never a restart back to it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from common.wire import UNLIMITED_CAPACITY as UNLIMITED
from common.wire import ReplicaSnapshot
from router.breaker import BreakerState, CircuitBreaker
from router.demand import Demand
from router.load_failures import LoadFailures

__all__ = [
    "ChannelClosed",
    "Claimed",
    "ClusterView",
    "ModelCopy",
    "ReplicaStatus",
    "ReplicaView",
    "ReportOutcome",
]


_RETIRED_KEPT = 8
DEPARTED_KEPT_S = 60.0
"""How long a replica out of routing stays in the view (and `/-/status`) without reporting."""


class ReplicaStatus(enum.Enum):
    HEALTHY = "healthy"
    DRAINING = "draining"
    STALE = "stale"  # no report within the heartbeat timeout
    DOWN = "down"  # its channel closed or a connection was refused
    CIRCUIT_OPEN = "circuit_open"  # failed requests in a row: out until a probe succeeds
    PROBING = "probing"  # its breaker is half-open: one request at a time


class ChannelClosed(enum.Enum):
    """What a replica's closed report channel meant."""

    LEFT = "left"  # it was draining with nothing of ours in flight: forgotten
    DOWN = "down"  # anything else: out of routing until it reports again
    STALE_NEWS = "stale_news"  # unknown, or a newer incarnation already reports: nothing changes


class Claimed(enum.Enum):
    """What a placement another router claimed means here (`ClusterView.claimed_elsewhere`)."""

    FOLLOW = "follow"  # send the request where the other router placed the model
    STALE = "stale"  # its replica has given the model up since: keep this router's choice
    KEEP = "keep"  # not a replica to follow: keep this router's choice


class ReportOutcome(enum.Enum):
    NEW_REPLICA = "new_replica"
    NEW_INCARNATION = "new_incarnation"
    APPLIED = "applied"
    OUT_OF_ORDER = "out_of_order"


@dataclass(slots=True)
class ModelCopy:
    """One model on one replica, as this router believes it to be."""

    model_id: str
    last_used: float  # router clock
    loading: bool = False
    in_flight: int = 0  # this router's requests for it on that replica
    # Requests of other routers holding it: the replica's pin count at its last report, less
    # this router's own requests then in flight (so a report never makes our own finished
    # request look like a lasting pin).
    reported_in_use: int = 0
    pending_until: float = 0.0  # optimistic placement not yet confirmed by a report
    loaded_at: float | None = None  # router clock, once a report showed it loaded
    placed_at: float | None = None  # router clock, when this router's dispatch started the load
    # This router's requests for it that ended since the last report: a report built before
    # one of them ended still counts its pin, which must not look like another router's.
    finished_since_report: int = 0
    # How often it is asked for, as the replica's last report said (every router reads it
    # alike, whatever share of the traffic it sees); None: the replica does not report hits.
    hits: float | None = None
    # Its last use as the last report said (router clock), or when this router placed it:
    # unlike `last_used`, this router's own requests since do not move it.
    reported_used: float = 0.0

    @property
    def in_use(self) -> bool:
        return self.in_flight > 0 or self.reported_in_use > 0


@dataclass(slots=True)
class ReplicaView:
    replica_id: str
    url: str
    incarnation: str
    sequence: int
    capacity: int
    max_ongoing_requests: int
    last_report_at: float
    draining: bool = False
    down: bool = False
    stale: bool = False
    in_flight: int = 0  # this router's requests on it
    reported_in_flight: int = 0
    in_flight_at_report: int = 0  # this router's requests on it when its last report came
    load_ms_avg: float | None = None
    max_concurrent_loads: int | None = None  # loads it runs at once; None: as many as slots
    models: dict[str, ModelCopy] = field(default_factory=dict)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    # Incarnations this replica id had before the current one, newest last (a few).
    retired: deque[str] = field(default_factory=lambda: deque(maxlen=_RETIRED_KEPT))

    @property
    def status(self) -> ReplicaStatus:
        if self.down:
            return ReplicaStatus.DOWN
        if self.stale:
            return ReplicaStatus.STALE
        state = self.breaker.state
        if state is BreakerState.OPEN:
            return ReplicaStatus.CIRCUIT_OPEN
        if self.draining:
            return ReplicaStatus.DRAINING
        if state is BreakerState.HALF_OPEN:
            return ReplicaStatus.PROBING
        return ReplicaStatus.HEALTHY

    @property
    def routable(self) -> bool:
        return not (self.down or self.stale or self.draining) and (
            self.breaker.state is not BreakerState.OPEN
        )

    @property
    def load(self) -> int:
        """Requests on it from every router: as its last report said, with this router's
        changes since. Routers read it alike but for their changes of the last moments."""
        return max(0, self.reported_in_flight + self.in_flight - self.in_flight_at_report)

    @property
    def has_room(self) -> bool:
        """Below max_ongoing_requests (one, while probing): a request sent now starts at once."""
        if self.breaker.state is BreakerState.HALF_OPEN:
            return self.in_flight < 1
        return self.in_flight < self.max_ongoing_requests

    @property
    def free_slots(self) -> int:
        if self.capacity == UNLIMITED:
            return 1 << 30
        return self.capacity - len(self.models)

    @property
    def load_turns(self) -> int:
        """Load times a new load here would wait for a loader: 0 while fewer models are
        loading than `max_concurrent_loads` (always 0 without a limit)."""
        limit = self.max_concurrent_loads
        if limit is None:
            return 0
        loading = sum(1 for copy in self.models.values() if copy.loading)
        return loading // limit

    def load_schedule(self, now: float, load_s: float) -> tuple[dict[str, float], float]:
        """When each loading model is expected to be loaded, and when a new load could start.

        Loads start in the order they were placed, at most `max_concurrent_loads` at once,
        and each takes `load_s`; a load this router did not place is taken to start now, and
        one that is overdue to be done at any moment (exactly `now`: a report will say when).
        """
        limit = self.max_concurrent_loads
        if limit is None:  # every load runs at once
            return {
                c.model_id: max(now, (now if c.placed_at is None else c.placed_at) + load_s)
                for c in self.models.values()
                if c.loading
            }, now
        loading = sorted(
            (c.placed_at if c.placed_at is not None else now, c.model_id)
            for c in self.models.values()
            if c.loading
        )
        done: list[float] = []
        for index, (placed, _) in enumerate(loading):
            start = placed if index < limit else max(placed, done[index - limit])
            end = start + load_s
            done.append(end if end > now else now)
        start_next = now if len(loading) < limit else done[len(loading) - limit]
        return {model_id: t for (_, model_id), t in zip(loading, done, strict=True)}, start_next

    def lru_models(self) -> list[ModelCopy]:
        """Models least recently used first."""
        return sorted(self.models.values(), key=lambda c: c.last_used)

    def eviction_candidate(self) -> ModelCopy | None:
        """What the replica's own LRU would evict next: the oldest loaded model not in use."""
        best: ModelCopy | None = None
        for copy in self.models.values():
            if copy.loading or copy.in_use:
                continue
            if best is None or copy.last_used < best.last_used:
                best = copy
        return best


class ClusterView:
    """Every replica this router knows, and the index model id -> replica ids holding it."""

    def __init__(
        self,
        *,
        pending_grace_s: float = 2.0,
        answered_grace_s: float = 0.05,
        demand: Demand | None = None,
        breaker: CircuitBreaker | None = None,
        load_failures: LoadFailures | None = None,
    ) -> None:
        """`breaker`: the settings each replica's circuit breaker starts from;
        `load_failures`: where failed loads are remembered (`router.load_failures`)."""
        self.load_failures = LoadFailures() if load_failures is None else load_failures
        self.pending_grace_s = pending_grace_s
        self.answered_grace_s = answered_grace_s
        self.breaker = CircuitBreaker() if breaker is None else breaker
        self.replicas: dict[str, ReplicaView] = {}
        self.holders: dict[str, set[str]] = {}
        self.free: dict[str, None] = {}  # routable replicas with a free model slot, in join order
        self.routable_ids: set[str] = set()
        self.with_room: set[str] = set()  # routable replicas below max_ongoing_requests
        self.in_flight = 0  # this router's requests in flight, all replicas
        self.version = 0  # changes with every mutation, so readers may cache what they derive
        self._replica_list: list[ReplicaView] | None = None
        self.demand = Demand() if demand is None else demand

    def __iter__(self) -> Iterator[ReplicaView]:
        return iter(self.replicas.values())

    @property
    def replica_list(self) -> list[ReplicaView]:
        """Every replica in the order of their ids (for sampling, alike on every router);
        rebuilt only when replicas join or leave."""
        if self._replica_list is None:
            self._replica_list = sorted(self.replicas.values(), key=lambda r: r.replica_id)
        return self._replica_list

    def _refresh(self, replica: ReplicaView) -> None:
        """Keep the `free`, `routable_ids` and `with_room` indexes true for `replica`."""
        rid = replica.replica_id
        if replica.routable:
            self.routable_ids.add(rid)
            if replica.free_slots > 0:
                self.free[rid] = None
            else:
                self.free.pop(rid, None)
            if replica.has_room:
                self.with_room.add(rid)
            else:
                self.with_room.discard(rid)
        else:
            self.routable_ids.discard(rid)
            self.free.pop(rid, None)
            self.with_room.discard(rid)

    def routable(self) -> list[ReplicaView]:
        return [self.replicas[i] for i in self.routable_ids]

    def holders_of(self, model_id: str) -> list[ReplicaView]:
        ids = self.holders.get(model_id)
        if not ids:
            return []
        return [self.replicas[i] for i in ids]

    # -- reports ---------------------------------------------------------------------------

    def apply_report(self, snapshot: ReplicaSnapshot, now: float) -> ReportOutcome:
        self.version += 1
        replica = self.replicas.get(snapshot.replica_id)
        if replica is None:
            outcome = ReportOutcome.NEW_REPLICA
            replica = ReplicaView(
                replica_id=snapshot.replica_id,
                url=snapshot.url,
                incarnation=snapshot.incarnation,
                sequence=snapshot.sequence,
                capacity=snapshot.capacity,
                max_ongoing_requests=snapshot.max_ongoing_requests,
                last_report_at=now,
                breaker=self._new_breaker(),
            )
            self.replicas[snapshot.replica_id] = replica
            self._replica_list = None
            previous: dict[str, ModelCopy] = {}
        elif replica.incarnation != snapshot.incarnation:
            if snapshot.incarnation in replica.retired:
                return ReportOutcome.OUT_OF_ORDER  # a process that was replaced already
            outcome = ReportOutcome.NEW_INCARNATION
            replica.retired.append(replica.incarnation)
            previous = {}  # a new process holds nothing the old one did
            replica.breaker = self._new_breaker()  # nor has it failed anything
            self.load_failures.forget_replica(replica.replica_id)
        elif snapshot.sequence <= replica.sequence:
            return ReportOutcome.OUT_OF_ORDER
        else:
            outcome = ReportOutcome.APPLIED
            previous = replica.models
        replica.url = snapshot.url
        replica.incarnation = snapshot.incarnation
        replica.sequence = snapshot.sequence
        replica.capacity = snapshot.capacity
        replica.max_ongoing_requests = snapshot.max_ongoing_requests
        replica.draining = snapshot.draining
        replica.reported_in_flight = snapshot.in_flight
        replica.in_flight_at_report = replica.in_flight
        replica.load_ms_avg = snapshot.load_ms_avg
        replica.max_concurrent_loads = snapshot.max_concurrent_loads
        replica.last_report_at = now
        replica.down = False
        replica.stale = False
        if snapshot.load_ms_avg is not None:
            self.demand.observe_load(snapshot.load_ms_avg / 1000)
        failures = self.load_failures
        for failure in snapshot.load_failures:
            failures.record(
                failure.model_id, replica.replica_id, failure.message, now - failure.age_s
            )
        if failures:
            for entry in snapshot.models:
                failures.loaded(entry.model_id, replica.replica_id)
        self._set_models(replica, self._merge(snapshot, previous, now))
        return outcome

    def _new_breaker(self) -> CircuitBreaker:
        template = self.breaker
        return CircuitBreaker(
            failure_threshold=template.failure_threshold,
            cooldown_s=template.cooldown_s,
            max_cooldown_s=template.max_cooldown_s,
        )

    def _merge(
        self, snapshot: ReplicaSnapshot, previous: dict[str, ModelCopy], now: float
    ) -> dict[str, ModelCopy]:
        models: dict[str, ModelCopy] = {}
        reports_hits = any(entry.hits for entry in snapshot.models)
        demand = self.demand
        for entry in snapshot.models:
            if reports_hits:
                demand.observe_hits(entry.model_id, entry.hits)
            old = previous.get(entry.model_id)
            last_used = now - entry.idle_s
            copy = ModelCopy(
                entry.model_id,
                last_used,
                reported_in_use=entry.in_use,
                hits=entry.hits if reports_hits else None,
                reported_used=last_used,
            )
            copy.loaded_at = last_used  # loaded no later than its last use
            if old is not None:
                # Pins the replica counted that may be ours: in flight now, or ended since the
                # last report (this one may have been built before they did).
                ours = old.in_flight + old.finished_since_report
                copy.reported_in_use = max(0, entry.in_use - ours)
                copy.placed_at = old.placed_at
                copy.last_used = max(last_used, old.last_used)
                copy.in_flight = old.in_flight
                copy.loaded_at = now if old.loaded_at is None else old.loaded_at
            models[entry.model_id] = copy
        for model_id in snapshot.loading:
            copy = models.get(model_id) or previous.get(model_id) or ModelCopy(model_id, now)
            copy.loading = True
            models[model_id] = copy
        for model_id, old in previous.items():
            # The replica may not have seen our request yet: keep what we placed there.
            if model_id not in models and (old.in_flight > 0 or old.pending_until > now):
                models[model_id] = old
        return models

    def _set_models(self, replica: ReplicaView, models: dict[str, ModelCopy]) -> None:
        rid = replica.replica_id
        for model_id in replica.models.keys() - models.keys():
            self._unindex(model_id, rid)
        for model_id in models.keys() - replica.models.keys():
            self.holders.setdefault(model_id, set()).add(rid)
        replica.models = models
        self._refresh(replica)

    def _unindex(self, model_id: str, replica_id: str) -> None:
        ids = self.holders.get(model_id)
        if ids is not None:
            ids.discard(replica_id)
            if not ids:
                del self.holders[model_id]

    # -- failures --------------------------------------------------------------------------

    def mark_down(self, replica_id: str, incarnation: str | None = None) -> bool:
        """Take a replica out of routing (its channel closed, a connect was refused).

        With `incarnation`, only that process is marked: a report from its successor may
        already have arrived. Its models are forgotten; a new report brings them back.
        """
        self.version += 1
        replica = self.replicas.get(replica_id)
        if replica is None or (incarnation is not None and replica.incarnation != incarnation):
            return False
        replica.down = True
        self._set_models(replica, {})
        return True

    def channel_closed(self, replica_id: str, incarnation: str) -> ChannelClosed:
        """The channel that carried this incarnation's reports closed.

        A draining replica whose requests from us are done has left: it is forgotten. Otherwise
        it crashed, restarts, or lost the network: out of routing until it reports again.
        """
        replica = self.replicas.get(replica_id)
        if replica is None or replica.incarnation != incarnation:
            return ChannelClosed.STALE_NEWS
        if replica.draining and replica.in_flight == 0:
            self.forget(replica_id)
            return ChannelClosed.LEFT
        self.mark_down(replica_id, incarnation)
        return ChannelClosed.DOWN

    def superseded(self, replica_id: str, incarnation: str) -> bool:
        """The channel that carried this incarnation's reports now carries another replica's:
        the process behind it is no longer that replica, so route to it no more."""
        return self.mark_down(replica_id, incarnation)

    def request_failed(self, replica_id: str, now: float) -> bool:
        """A request to the replica failed (refused, broken, timed out); True if that opened
        its breaker and took it out of routing."""
        replica = self.replicas.get(replica_id)
        if replica is None:
            return False
        self.version += 1
        opened = replica.breaker.failed(now)
        self._refresh(replica)
        return opened

    def request_answered(self, replica_id: str) -> bool:
        """The replica answered a request (any status); True if that closed its breaker."""
        replica = self.replicas.get(replica_id)
        if replica is None:
            return False
        closed = replica.breaker.succeeded()
        if closed:
            self.version += 1
            self._refresh(replica)
        return closed

    def cool_down(self, now: float) -> list[str]:
        """Half-open the breakers whose cool-down is over (each lets one probe through);
        return those replicas' ids."""
        probing: list[str] = []
        for replica in self.replicas.values():
            if replica.breaker.cooled_down(now):
                self._refresh(replica)
                probing.append(replica.replica_id)
        if probing:
            self.version += 1
        return probing

    def expire(self, now: float, timeout_s: float) -> list[str]:
        """Mark replicas with no report for `timeout_s` stale; return the newly stale ids."""
        self.version += 1
        newly: list[str] = []
        for replica in self.replicas.values():
            if not replica.stale and not replica.down and now - replica.last_report_at > timeout_s:
                replica.stale = True
                self._refresh(replica)
                newly.append(replica.replica_id)
        return newly

    def forget_departed(self, now: float, after_s: float = DEPARTED_KEPT_S) -> list[str]:
        """Forget replicas out of routing with no report for `after_s`; return their ids.

        Their last view is kept that long so `/-/status` can show what went away.
        """
        gone = [
            replica.replica_id
            for replica in self.replicas.values()
            if not replica.routable and now - replica.last_report_at > after_s
        ]
        for replica_id in gone:
            self.forget(replica_id)
        return gone

    def forget(self, replica_id: str) -> None:
        """Drop a replica from the view (it left); a report from it adds it again."""
        self.version += 1
        self.load_failures.forget_replica(replica_id)
        replica = self.replicas.pop(replica_id, None)
        if replica is not None:
            self.in_flight -= replica.in_flight
            self.free.pop(replica_id, None)
            self.routable_ids.discard(replica_id)
            self.with_room.discard(replica_id)
            self._replica_list = None
            for model_id in replica.models:
                self._unindex(model_id, replica_id)

    # -- an operator's requests -------------------------------------------------------------

    def drain(self, replica_id: str) -> bool:
        """An operator drains the replica: out of routing at once, as its own report of
        draining would take it; False if the view does not know it."""
        replica = self.replicas.get(replica_id)
        if replica is None:
            return False
        self.version += 1
        replica.draining = True
        self._refresh(replica)
        return True

    def evicted(self, replica_id: str, model_id: str) -> bool:
        """An operator evicted `model_id` from the replica: it leaves the view at once (the
        replica unloads it once its requests end, and reports it no more); True if the view
        held it there. This router's requests for it still in flight finish as usual."""
        replica = self.replicas.get(replica_id)
        if replica is None or model_id not in replica.models:
            return False
        self.version += 1
        self._drop(replica, model_id)
        return True

    def claimed_elsewhere(
        self,
        model_id: str,
        ours: str,
        holder: str,
        age_s: float,
        now: float,
        *,
        fresh_s: float,
        avoid: AbstractSet[str] = frozenset(),
    ) -> Claimed:
        """Another router claimed the placement of `model_id` (by the placement lease) for
        `holder`, `age_s` ago, while this router placed it on `ours`: whether to follow.

        FOLLOW when `holder` is routable, not in `avoid`, has not failed to load the model,
        and shows it, or was claimed under `fresh_s` ago (its request may not have reached it
        yet). The view then records the model loading on `holder` and withdraws this router's
        placement on `ours` if no report has confirmed it, so the requests after this one go
        to `holder` too, and nothing loads it on `ours`. STALE: `holder` has given the model
        up since. KEEP otherwise (and when `holder` is `ours`)."""
        target = self.replicas.get(holder)
        if holder == ours or target is None or not target.routable or holder in avoid:
            return Claimed.KEEP
        if holder in self.load_failures.failed_on(model_id, now):
            return Claimed.KEEP
        if age_s > fresh_s and model_id not in target.models:
            return Claimed.STALE
        self.prefetch(holder, model_id, now)
        replica = self.replicas.get(ours)
        copy = replica.models.get(model_id) if replica is not None else None
        if replica is not None and copy is not None and copy.loading and copy.loaded_at is None:
            self._drop(replica, model_id)
        return Claimed.FOLLOW

    # -- the request path ------------------------------------------------------------------

    def dispatch(
        self, replica_id: str, model_id: str, now: float, *, evict: str | None = None
    ) -> bool:
        """Record a request sent to a replica; True when it makes the replica load the model.

        `evict` names the model the replica will give up for it (the router told it, or it is
        the replica's own LRU choice); it leaves the view now, as it will leave the replica.
        """
        self.version += 1
        replica = self.replicas[replica_id]
        replica.in_flight += 1
        self.in_flight += 1
        if not replica.has_room:
            self.with_room.discard(replica_id)
        if not model_id:
            return False
        copy = replica.models.get(model_id)
        cold = copy is None
        if copy is None:
            copy = self._place(replica, model_id, now, evict)
        copy.last_used = now
        copy.in_flight += 1
        return cold

    def prefetch(
        self, replica_id: str, model_id: str, now: float, *, evict: str | None = None
    ) -> None:
        """Record a load the router asked for without a request (another copy of a hot model)."""
        self.version += 1
        replica = self.replicas[replica_id]
        if model_id not in replica.models:
            self._place(replica, model_id, now, evict)

    def _place(
        self, replica: ReplicaView, model_id: str, now: float, evict: str | None
    ) -> ModelCopy:
        if evict is not None and evict in replica.models:
            self._drop(replica, evict)
        elif replica.free_slots <= 0:
            victim = replica.eviction_candidate()
            if victim is not None:
                self._drop(replica, victim.model_id)
        copy = ModelCopy(
            model_id,
            now,
            loading=True,
            pending_until=now + self.pending_grace_s,
            placed_at=now,
            reported_used=now,
        )
        replica.models[model_id] = copy
        self.holders.setdefault(model_id, set()).add(replica.replica_id)
        self._refresh(replica)
        return copy

    def finish(self, replica_id: str, model_id: str, now: float, *, ok: bool = True) -> None:
        """A request is over. `ok`: it was answered with success, so its model is there."""
        self.version += 1
        replica = self.replicas.get(replica_id)
        if replica is None:
            return
        if replica.in_flight > 0:
            replica.in_flight -= 1
            self.in_flight -= 1
            if replica.routable and replica.has_room:
                self.with_room.add(replica_id)
        copy = replica.models.get(model_id) if model_id else None
        if copy is None:
            return
        copy.in_flight = max(0, copy.in_flight - 1)
        copy.last_used = max(copy.last_used, now)
        copy.finished_since_report += 1
        if ok:
            # The answer came back, so the replica had the model. A report sent before that
            # may still arrive: keep it through that, not longer, since a later report that
            # leaves it out means it was evicted since (by another router's request, say).
            copy.pending_until = now + self.answered_grace_s
        elif copy.loading and copy.loaded_at is None and copy.in_flight == 0:
            # Refused or failed before any report showed it: do not count on it being there.
            self._drop(replica, model_id)

    def _drop(self, replica: ReplicaView, model_id: str) -> None:
        del replica.models[model_id]
        self._unindex(model_id, replica.replica_id)
        self._refresh(replica)
