"""The multiplexed cache's rules: slots, pins, victims and load turns, with no I/O and no clock.

`CacheCore` decides; `replica._cache.ModelCache` runs the loads on asyncio and
`router.simulation.replica_model.SimReplica` runs them on simulated time, both calling these
methods for every decision, so the simulator cannot drift from the replica. Times are passed in
(`now`, seconds on the caller's clock); nothing here awaits or reads a clock.

Invariants it keeps:
- resident + loading <= capacity (unless capacity is UNLIMITED): a load takes its slot when it
  is acquired, and its victim leaves the cache in the same call, before any loader runs;
- one load per model id at a time: an acquire of a loading model joins that load;
- a pinned model (held by a request) or a loading one is never the victim; when every slot is
  held, an acquire changes nothing and says so (`NO_SLOT`), and the caller retries when a call
  reports a freed slot;
- the victim is the router's eviction hint when the cache is full and that model is resident
  and unpinned, else the least recently used resident unpinned model;
- at most `max_concurrent_loads` loads hold a turn at once (None: no limit below the capacity);
  a load beyond it holds its slot and shows as loading, and gets its turn when a load holding
  one ends, in the order the slots were taken (FIFO);
- a failed load leaves nothing behind: its slot frees, its pins go with it (its waiters hold
  none), and its turn passes to the first queued load;
- a model marked for eviction (`mark_evicting`, an operator's request) leaves the cache as soon
  as it is resident with no pin: at once if it is, else when its load ends or its last pin is
  released. Until then a get still pins it (refusing would only make the request wait for a
  reload of the very same model), but `state()` leaves it out: the replica no longer reports
  it, so routers stop sending its requests here and its pins run out.
- every acquire of a model counts one hit, decayed by time (half-life `HITS_HALF_LIFE_S`); a
  new load starts from the router's count of the model (`seed_hits`), so a reloaded favourite
  keeps its worth. Every router reads the same hits from the reports.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from dataclasses import dataclass

from common.wire import UNLIMITED_CAPACITY as UNLIMITED

__all__ = [
    "HITS_HALF_LIFE_S",
    "UNLIMITED",
    "Acquired",
    "Acquisition",
    "CacheCore",
    "CacheState",
    "LoadEnded",
    "ResidentModel",
]


HITS_HALF_LIFE_S = 600.0
"""How long a hit takes to count half: a favourite of an hour ago fades out within the hour."""


@dataclass(frozen=True, slots=True)
class ResidentModel:
    model_id: str
    last_used: float  # on the cache's clock, seconds
    pins: int
    hits: float = 0.0  # decayed to `last_used`

    def hits_at(self, now: float) -> float:
        """Its hits decayed to `now` (on the cache's clock)."""
        return decayed(self.hits, now - self.last_used)


def decayed(hits: float, age_s: float) -> float:
    return hits * 0.5 ** (max(0.0, age_s) / HITS_HALF_LIFE_S) if hits else 0.0


@dataclass(frozen=True, slots=True)
class CacheState:
    capacity: int
    models: tuple[ResidentModel, ...]  # least recently used first
    loading: tuple[str, ...]  # running loads and those waiting for their turn
    max_concurrent_loads: int | None = None


class Acquisition(enum.Enum):
    """What an acquire found, and what the caller does next."""

    RESIDENT = "resident"  # pinned and ready: use it
    LOADING = "loading"  # pinned; wait for the load under way
    NEW_LOAD = "new_load"  # a slot was taken for it and it is pinned: start its load
    NO_SLOT = "no_slot"  # every slot is held: nothing changed; retry when a slot frees


@dataclass(frozen=True, slots=True)
class Acquired:
    kind: Acquisition
    victim: str | None = None
    """NEW_LOAD: the model evicted for it, already out of the cache (the caller unloads it)."""
    hinted: bool = False
    """The victim was the router's eviction hint, not the LRU choice."""
    turn: bool = False
    """NEW_LOAD: its loader may run now; else it waits for a turn (`LoadEnded.next_turn`)."""


@dataclass(frozen=True, slots=True)
class LoadEnded:
    next_turn: str | None
    """The queued load whose loader may run now, if the ended load passed its turn on."""
    slot_freed: bool
    """A get waiting for a slot may find one now."""


_RESIDENT = Acquired(Acquisition.RESIDENT)
_LOADING = Acquired(Acquisition.LOADING)
_NO_SLOT = Acquired(Acquisition.NO_SLOT)


class _Phase(enum.Enum):
    QUEUED = "queued"  # holds a slot, waits for a turn
    LOADING = "loading"  # holds a slot and a turn
    RESIDENT = "resident"


class _Entry:
    __slots__ = ("evicting", "hits", "last_used", "model_id", "phase", "pins")

    def __init__(self, model_id: str, phase: _Phase, now: float, hits: float) -> None:
        self.model_id = model_id
        self.phase = phase
        self.pins = 0
        self.last_used = now
        self.hits = hits  # decayed to last_used
        self.evicting = False


class CacheCore:
    """The entries of one multiplexed cache in LRU order, with their pins and load turns."""

    def __init__(self, *, capacity: int, max_concurrent_loads: int | None = None) -> None:
        if max_concurrent_loads is not None and max_concurrent_loads < 1:
            raise ValueError(f"max_concurrent_loads must be None or >= 1: {max_concurrent_loads}")
        self.capacity = capacity
        self.max_concurrent_loads = max_concurrent_loads
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._turns_held = 0
        self._turn_queue: deque[str] = deque()  # loads holding a slot, waiting for a turn

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, capacity: int) -> None:
        """Set before the first load (a deployment may size its own cache); a smaller value
        later does not evict, each new load just finds the cache full."""
        if capacity != UNLIMITED and capacity < 1:
            raise ValueError(f"capacity must be positive or {UNLIMITED}, got {capacity}")
        self._capacity = capacity

    # -- reading ---------------------------------------------------------------------------

    def state(self) -> CacheState:
        """What the cache holds, as reported: a model marked for eviction is left out."""
        models: list[ResidentModel] = []
        loading: list[str] = []
        for entry in self._entries.values():
            if entry.evicting:
                continue
            if entry.phase is _Phase.RESIDENT:
                models.append(
                    ResidentModel(entry.model_id, entry.last_used, entry.pins, entry.hits)
                )
            else:
                loading.append(entry.model_id)
        return CacheState(self._capacity, tuple(models), tuple(loading), self.max_concurrent_loads)

    def holds(self, model_id: str) -> bool:
        """`model_id` is resident or loading."""
        return model_id in self._entries

    def is_resident(self, model_id: str) -> bool:
        entry = self._entries.get(model_id)
        return entry is not None and entry.phase is _Phase.RESIDENT

    def pins(self, model_id: str) -> int:
        entry = self._entries.get(model_id)
        return 0 if entry is None else entry.pins

    @property
    def turns_held(self) -> int:
        """Loads holding a turn now: at most `max_concurrent_loads`."""
        return self._turns_held

    def __len__(self) -> int:
        """Models resident or loading: the slots taken."""
        return len(self._entries)

    # -- decisions -------------------------------------------------------------------------

    def acquire(
        self,
        model_id: str,
        now: float,
        *,
        evict_hint: str | None = None,
        seed_hits: float = 0.0,
    ) -> Acquired:
        """A get of `model_id` at `now`: pin it (its most recent use), or take a slot for its
        load, evicting `evict_hint` or the LRU choice if the cache is full. A new load's hits
        start from `seed_hits` (the router's count of the model, this request included)."""
        entries = self._entries
        entry = entries.get(model_id)
        if entry is None:
            victim: _Entry | None = None
            if self._capacity != UNLIMITED and len(entries) >= self._capacity:
                victim = self._victim(evict_hint)
                if victim is None:
                    return _NO_SLOT
                del entries[victim.model_id]
            turn = self._take_turn(model_id)
            phase = _Phase.LOADING if turn else _Phase.QUEUED
            entry = _Entry(model_id, phase, now, max(1.0, seed_hits))
            entry.pins = 1
            entries[model_id] = entry
            if victim is None:
                return Acquired(Acquisition.NEW_LOAD, turn=turn)
            hinted = victim.model_id == evict_hint
            return Acquired(Acquisition.NEW_LOAD, victim.model_id, hinted, turn)
        entries.move_to_end(model_id)
        entry.hits = decayed(entry.hits, now - entry.last_used) + 1.0
        entry.last_used = now
        entry.pins += 1
        return _RESIDENT if entry.phase is _Phase.RESIDENT else _LOADING

    def release(self, model_id: str) -> bool:
        """A holder of `model_id` let it go; True when that freed a slot (it can be evicted).
        A model gone from the cache (its load failed, or the cache was emptied) holds no pin."""
        entry = self._entries.get(model_id)
        if entry is None:
            return False
        entry.pins -= 1
        return entry.pins == 0 and entry.phase is _Phase.RESIDENT

    def loaded(self, model_id: str) -> LoadEnded:
        """The load of `model_id` (holding a turn) succeeded: the model is resident."""
        entry = self._entries[model_id]
        if entry.phase is not _Phase.LOADING:
            raise ValueError(f"{model_id!r} is not loading: {entry.phase.value}")
        entry.phase = _Phase.RESIDENT
        return LoadEnded(self._pass_turn(), entry.pins == 0)

    def load_failed(self, model_id: str) -> LoadEnded:
        """The load of `model_id` ended without a model (with or without its turn): its slot
        frees and its pins go with it."""
        entry = self._entries[model_id]
        if entry.phase is _Phase.RESIDENT:
            raise ValueError(f"{model_id!r} is not loading: it is resident")
        del self._entries[model_id]
        if entry.phase is _Phase.LOADING:
            return LoadEnded(self._pass_turn(), True)
        if model_id in self._turn_queue:
            self._turn_queue.remove(model_id)
        return LoadEnded(None, True)

    def mark_evicting(self, model_id: str) -> bool | None:
        """Evict `model_id` once no request holds it: True when it left the cache now (the
        caller unloads it), False when it is marked and leaves later (`evict_due`), None when
        the cache does not hold it."""
        entry = self._entries.get(model_id)
        if entry is None:
            return None
        entry.evicting = True
        return self.evict_due(model_id)

    def evict_due(self, model_id: str) -> bool:
        """Remove `model_id` if it is marked for eviction, resident and unpinned; True if so
        (the caller unloads it). Ask after a release or a load of a marked model."""
        entry = self._entries.get(model_id)
        if entry is None or not entry.evicting:
            return False
        if entry.phase is not _Phase.RESIDENT or entry.pins > 0:
            return False
        del self._entries[model_id]
        return True

    def is_evicting(self, model_id: str) -> bool:
        entry = self._entries.get(model_id)
        return entry is not None and entry.evicting

    def cancel_queued(self) -> list[str]:
        """No queued load will get a turn (the cache is shutting down): return them, in turn
        order. They stay loading until the caller reports each `load_failed`."""
        queued = list(self._turn_queue)
        self._turn_queue.clear()
        return queued

    def drop_oldest(self) -> str | None:
        """Remove the least recently used model whatever its pins (the cache is shutting down
        and no load is under way); None when the cache is empty."""
        if not self._entries:
            return None
        return self._entries.popitem(last=False)[0]

    # -- internals -------------------------------------------------------------------------

    def _victim(self, hint: str | None) -> _Entry | None:
        if hint:
            hinted = self._entries.get(hint)
            if hinted is not None and hinted.phase is _Phase.RESIDENT and hinted.pins == 0:
                return hinted
        for entry in self._entries.values():
            if entry.phase is _Phase.RESIDENT and entry.pins == 0:
                return entry
        return None

    def _take_turn(self, model_id: str) -> bool:
        limit = self.max_concurrent_loads
        if limit is None or self._turns_held < limit:
            self._turns_held += 1
            return True
        self._turn_queue.append(model_id)
        return False

    def _pass_turn(self) -> str | None:
        """A load holding a turn ended: hand the turn to the first queued load, if any."""
        if self._turn_queue:
            next_id = self._turn_queue.popleft()
            self._entries[next_id].phase = _Phase.LOADING
            return next_id
        self._turns_held -= 1
        return None
