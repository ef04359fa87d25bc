"""A simulated replica: the multiplexed cache of `replica/_cache.py`, on simulated time.

It keeps the real cache's rules, and asserts the first two on every change:
- resident + loading <= capacity: a load takes its slot at once, even while it waits for its
  turn (below), and its victim leaves before the load begins (evict-before-load);
- a model held by a request (pinned: from the request's arrival at the replica to its answer)
  or still loading is never evicted; when every slot is taken, a cold request waits for a
  slot and retries when a pin drops to zero;
- one load per model at a time: requests for a loading model wait for that load;
- at most `max_concurrent_loads` loads run at once (None: no limit below the capacity); a load
  beyond it takes its slot (and evicts its victim) at once and is reported as loading, but
  starts only when a running load ends, in the order the slots were taken;
- the victim is the least recently used unpinned model, or the router's eviction hint
  (`Route.evict`) when the cache is full and that model is resident and unpinned.

The replica runs every request it is sent at once (the router keeps it within
max_ongoing_requests); a request whose model is ready infers for its own time. The engine
drains its outboxes after each call: `started` (requests that begin inference now),
`loads_started` (model ids whose load begins now: at once, or as a running load ends),
`evicted` (model ids), and `changed` (the cache changed: send a report).
"""

from __future__ import annotations

from collections import OrderedDict, deque

from common.wire import ModelEntry, ReplicaSnapshot
from router.simulation.contract import SimRequest

__all__ = ["SimReplica"]


class _Entry:
    __slots__ = ("last_used", "loading", "model_id", "pins", "waiters")

    def __init__(self, model_id: str, now: float) -> None:
        self.model_id = model_id
        self.loading = True
        self.pins = 0
        self.last_used = now
        self.waiters: list[SimRequest] = []  # requests waiting for this load


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
        if max_concurrent_loads is not None and max_concurrent_loads < 1:
            raise ValueError(f"max_concurrent_loads must be None or >= 1: {max_concurrent_loads}")
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
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._slot_waiters: list[SimRequest] = []
        self._loads_running = 0
        self._load_queue: deque[str] = deque()  # loads holding a slot, waiting for their turn
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
        entry = self._entries[model_id]
        entry.loading = False
        if self._load_queue:
            self.loads_started.append(self._load_queue.popleft())
        else:
            self._loads_running -= 1
        self._load_s_total += load_s
        self._loads_done += 1
        self.started.extend(entry.waiters)
        entry.waiters = []
        self.changed = True
        if entry.pins == 0:
            self._wake_slot_waiters(now)

    def finish(self, request: SimRequest, now: float) -> None:
        """The request answered (a prefetch: its load is done): release its pin."""
        if not request.prefetch:
            self.in_flight -= 1
        entry = self._entries[request.model_id]
        entry.pins -= 1
        if entry.pins == 0 and self._slot_waiters:
            self._wake_slot_waiters(now)

    def _get(self, request: SimRequest, now: float) -> None:
        entries = self._entries
        model_id = request.model_id
        entry = entries.get(model_id)
        if entry is None:
            if len(entries) >= self.capacity:
                victim = self._victim(request.evict)
                if victim is None:
                    self._slot_waiters.append(request)
                    return
                self._evict(victim)
            entry = _Entry(model_id, now)
            entries[model_id] = entry
            assert len(entries) <= self.capacity, "a replica's cache over-committed"
            self.loads += 1
            self._begin_load(model_id)
            self.changed = True
        else:
            entries.move_to_end(model_id)
            entry.last_used = now
        entry.pins += 1
        if entry.loading:
            entry.waiters.append(request)
        else:
            request.found_ready = True
            self.started.append(request)

    def _begin_load(self, model_id: str) -> None:
        limit = self.max_concurrent_loads
        if limit is None or self._loads_running < limit:
            self._loads_running += 1
            self.loads_started.append(model_id)
        else:
            self._load_queue.append(model_id)

    def _victim(self, hint: str | None) -> _Entry | None:
        if hint is not None:
            hinted = self._entries.get(hint)
            if hinted is not None and not hinted.loading and hinted.pins == 0:
                self.hint_evictions += 1
                return hinted
        for entry in self._entries.values():
            if not entry.loading and entry.pins == 0:
                return entry
        return None

    def _evict(self, victim: _Entry) -> None:
        assert victim.pins == 0, "evicting a pinned model"
        assert not victim.loading, "evicting a model that is still loading"
        del self._entries[victim.model_id]
        self.evictions += 1
        self.evicted.append(victim.model_id)
        self.changed = True

    def _wake_slot_waiters(self, now: float) -> None:
        waiters, self._slot_waiters = self._slot_waiters, []
        for request in waiters:
            self._get(request, now)

    # -- reporting -------------------------------------------------------------------------

    @property
    def slots_taken(self) -> int:
        return len(self._entries)

    def pins_of(self, model_id: str) -> int:
        entry = self._entries.get(model_id)
        return 0 if entry is None else entry.pins

    def snapshot(self, now: float) -> ReplicaSnapshot:
        """The replica's whole state now, with the next sequence number; its load limit as
        `replica._snapshot` reports a cache's: None unless it is below the capacity."""
        self.sequence += 1
        limit = self.max_concurrent_loads
        models: list[ModelEntry] = []
        loading: list[str] = []
        for entry in self._entries.values():
            if entry.loading:
                loading.append(entry.model_id)
            else:
                idle = now - entry.last_used
                models.append(
                    ModelEntry(
                        model_id=entry.model_id, idle_s=idle if idle > 0 else 0.0, in_use=entry.pins
                    )
                )
        return ReplicaSnapshot(
            replica_id=self.replica_id,
            incarnation=self.incarnation,
            sequence=self.sequence,
            url=self.url,
            capacity=self.capacity,
            models=tuple(models),
            loading=tuple(loading),
            in_flight=self.in_flight,
            max_ongoing_requests=self.max_ongoing_requests,
            draining=False,
            load_ms_avg=self._load_s_total * 1000 / self._loads_done if self._loads_done else None,
            max_concurrent_loads=limit if limit is not None and limit < self.capacity else None,
        )
