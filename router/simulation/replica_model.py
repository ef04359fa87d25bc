"""A simulated replica: the multiplexed cache of `replica/_cache.py`, on simulated time.

The cache's rules are the replica's own: every decision is `replica._cache_core.CacheCore`'s
(the slot a load takes at once, evict-before-load, the victim — the router's eviction hint
(`Route.evict`) when the cache is full and that model is resident and unpinned, else the least
recently used unpinned model —, one load per model, at most `max_concurrent_loads` loads at
once and the rest in FIFO order, no pinned model evicted), and the report is the replica's
`replica._snapshot.build_snapshot`. What is left here is what `ModelCache` does on asyncio:
holding the requests that wait for a load or a slot, and starting the loads that get a turn.

A request (or a prefetch) pins its model from its arrival at the replica to its answer (for a
prefetch: until its load is done); when every slot is held, a cold request waits for a slot
and retries whenever the core reports one freed.

The replica runs every request it is sent at once (the router keeps it within
max_ongoing_requests); a request whose model is ready infers for its own time. The engine
drains its outboxes after each call: `started` (requests that begin inference now),
`loads_started` (model ids whose load begins now: at once, or as a running load ends),
`evicted` (model ids), and `changed` (the cache changed: send a report).
"""

from __future__ import annotations

from common.wire import ReplicaSnapshot
from replica._cache_core import Acquisition, CacheCore
from replica._snapshot import build_snapshot
from router.simulation.contract import SimRequest

__all__ = ["SimReplica"]


class SimReplica:
    def __init__(
        self,
        index: int,
        *,
        capacity: int,
        max_ongoing_requests: int,
        max_concurrent_loads: int | None = None,
        incarnation: str = "sim",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._core = CacheCore(capacity=capacity, max_concurrent_loads=max_concurrent_loads)
        self.index = index
        self.replica_id = f"replica-{index}"
        self.url = f"http://replica-{index}.sim"
        self.incarnation = incarnation
        self.capacity = capacity
        self.max_ongoing_requests = max_ongoing_requests
        self.max_concurrent_loads = max_concurrent_loads
        self.sequence = 0
        self.in_flight = 0
        self.loads = 0
        self.evictions = 0
        self.hint_evictions = 0
        self._load_s_total = 0.0
        self._loads_done = 0
        self._load_waiters: dict[str, list[SimRequest]] = {}  # by loading model
        self._slot_waiters: list[SimRequest] = []
        self.started: list[SimRequest] = []
        self.loads_started: list[str] = []
        self.evicted: list[str] = []
        self.changed = False

    # -- the request path ------------------------------------------------------------------

    def arrive(self, request: SimRequest, now: float) -> None:
        """A request (or a prefetch) reached the replica: use its model, load it, or wait for
        a slot. A prefetch pins its model like a request until the load is done, but is not
        counted in flight (`replica/server.py`'s `/-/load`)."""
        if not request.prefetch:
            self.in_flight += 1
        self._get(request, now)

    def loaded(self, model_id: str, now: float, load_s: float) -> None:
        """The load of `model_id` finished; its waiters start inference, and the first load
        waiting for its turn begins."""
        ended = self._core.loaded(model_id)
        if ended.next_turn is not None:
            self.loads_started.append(ended.next_turn)
        self._load_s_total += load_s
        self._loads_done += 1
        self.started.extend(self._load_waiters.pop(model_id))
        self.changed = True
        if ended.slot_freed:
            self._wake_slot_waiters(now)

    def finish(self, request: SimRequest, now: float) -> None:
        """The request answered (a prefetch: its load is done): release its pin."""
        if not request.prefetch:
            self.in_flight -= 1
        if self._core.release(request.model_id) and self._slot_waiters:
            self._wake_slot_waiters(now)

    def _get(self, request: SimRequest, now: float) -> None:
        model_id = request.model_id
        got = self._core.acquire(model_id, now, evict_hint=request.evict, seed_hits=request.demand)
        kind = got.kind
        if kind is Acquisition.RESIDENT:
            request.found_ready = True
            self.started.append(request)
        elif kind is Acquisition.LOADING:
            self._load_waiters[model_id].append(request)
        elif kind is Acquisition.NO_SLOT:
            self._slot_waiters.append(request)
        else:
            if got.victim is not None:
                self.evictions += 1
                if got.hinted:
                    self.hint_evictions += 1
                self.evicted.append(got.victim)
            self.loads += 1
            if got.turn:
                self.loads_started.append(model_id)
            self._load_waiters[model_id] = [request]
            self.changed = True

    def _wake_slot_waiters(self, now: float) -> None:
        waiters, self._slot_waiters = self._slot_waiters, []
        for request in waiters:
            self._get(request, now)

    # -- reporting -------------------------------------------------------------------------

    @property
    def slots_taken(self) -> int:
        return len(self._core)

    def pins_of(self, model_id: str) -> int:
        return self._core.pins(model_id)

    def snapshot(self, now: float) -> ReplicaSnapshot:
        """The replica's whole state now, with the next sequence number, as a replica with
        one cache reports it."""
        self.sequence += 1
        return build_snapshot(
            replica_id=self.replica_id,
            incarnation=self.incarnation,
            sequence=self.sequence,
            url=self.url,
            states=(self._core.state(),),
            fallback_capacity=self.capacity,
            in_flight=self.in_flight,
            max_ongoing_requests=self.max_ongoing_requests,
            draining=False,
            load_ms_avg=self._load_s_total * 1000 / self._loads_done if self._loads_done else None,
            now=now,
        )
