"""The multiplexed model cache: an LRU of at most `capacity` models, safe under concurrency.

Invariants it keeps:
- resident + loading <= capacity (unless capacity is UNLIMITED): a load takes its slot when it
  starts, and the victim leaves the cache before the loader is called;
- one load per model id at a time: concurrent misses share it and get the same object;
- a model held by a running request (pinned) is never evicted; when every slot is pinned a new
  load waits for one, up to `slot_timeout_s`, and never over-commits;
- at most `max_concurrent_loads` loader calls run at once (None: no limit below the
  capacity); a load beyond it takes its slot (and evicts its victim) at once and shows as
  loading, but its loader is called only when a running load ends, in the order the slots were
  taken;
- a failed load leaves nothing behind: its slot is freed, every waiter gets the exception, and
  the next queued load starts;
- `shutdown()` lets running loads end; loads still waiting for their turn never call the loader
  and their waiters get `CacheClosed`;
- an evicted model's `__del__` runs once, and its failure never fails a request.

Every change (load started, loaded, load failed, evicted) is announced to the listeners, which
the replica's reporter turns into a state report. No HTTP here: only models, slots and pins.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from common.wire import UNLIMITED_CAPACITY as UNLIMITED
from replica._cleanup import run_cleanup
from replica._context import RequestScope, current_scope
from replica._metrics import CacheMetrics

__all__ = [
    "UNLIMITED",
    "CacheClosed",
    "CacheEvent",
    "CacheEventKind",
    "CacheState",
    "ModelCache",
    "ModelSlotTimeout",
    "ResidentModel",
    "check_model_id",
]

logger = logging.getLogger("modelplex.replica")

M = TypeVar("M")


class CacheEventKind(enum.Enum):
    LOAD_STARTED = "load_started"
    LOADED = "loaded"
    LOAD_FAILED = "load_failed"
    EVICTED = "evicted"


@dataclass(frozen=True, slots=True)
class CacheEvent:
    kind: CacheEventKind
    model_id: str


@dataclass(frozen=True, slots=True)
class ResidentModel:
    model_id: str
    last_used: float  # on the cache's clock, seconds
    pins: int


@dataclass(frozen=True, slots=True)
class CacheState:
    capacity: int
    models: tuple[ResidentModel, ...]  # least recently used first
    loading: tuple[str, ...]  # running loads and those waiting for their turn
    max_concurrent_loads: int | None = None


class ModelSlotTimeout(TimeoutError):
    """Every slot stayed held by running requests for longer than the slot timeout."""


class CacheClosed(RuntimeError):
    """The cache was shut down (the replica is draining)."""


def check_model_id(model_id: object) -> str:
    """Ray's rule for the loader's argument: a non-empty str."""
    if not isinstance(model_id, str):
        raise TypeError(f"The model ID must be a string, got {type(model_id).__name__}.")
    if not model_id:
        raise ValueError("The model ID must not be empty.")
    return model_id


class _Entry(Generic[M]):
    """A model in the cache: loading while `ready` is set, resident once it is None."""

    __slots__ = ("last_used", "model", "model_id", "pins", "ready")

    def __init__(self, model_id: str, ready: asyncio.Future[M], now: float) -> None:
        self.model_id = model_id
        self.model: M | None = None
        self.ready: asyncio.Future[M] | None = ready
        self.pins = 0
        self.last_used = now


Listener = Callable[[CacheEvent], None]


class ModelCache(Generic[M]):
    """An LRU of loaded models with single-flight loads and request pins."""

    def __init__(
        self,
        loader: Callable[[str], Awaitable[M]],
        *,
        capacity: int,
        slot_timeout_s: float = 300.0,
        max_concurrent_loads: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity != UNLIMITED and capacity < 1:
            raise ValueError(f"capacity must be positive or {UNLIMITED}, got {capacity}")
        if max_concurrent_loads is not None and max_concurrent_loads < 1:
            raise ValueError(f"max_concurrent_loads must be None or >= 1: {max_concurrent_loads}")
        self.capacity = capacity
        self.slot_timeout_s = slot_timeout_s
        self.max_concurrent_loads = max_concurrent_loads
        self.metrics = CacheMetrics()
        self._loader = loader
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[M]] = OrderedDict()  # LRU first
        self._listeners: list[Listener] = []
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loads_running = 0  # loads holding a turn: unloading their victim or loading
        self._load_queue: deque[asyncio.Future[bool]] = deque()  # turns not granted yet
        self._closed = False

    # -- reading ---------------------------------------------------------------------------

    def state(self) -> CacheState:
        models = tuple(
            ResidentModel(e.model_id, e.last_used, e.pins)
            for e in self._entries.values()
            if e.ready is None
        )
        loading = tuple(e.model_id for e in self._entries.values() if e.ready is not None)
        return CacheState(self.capacity, models, loading, self.max_concurrent_loads)

    def __contains__(self, model_id: object) -> bool:
        entry = self._entries.get(model_id) if isinstance(model_id, str) else None
        return entry is not None and entry.ready is None

    def __len__(self) -> int:
        """Models resident or loading: the slots taken."""
        return len(self._entries)

    def add_listener(self, listener: Listener) -> None:
        """Call `listener` synchronously on every change; it must not raise or block."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    # -- the request path ------------------------------------------------------------------

    async def get(self, model_id: str) -> M:
        """Return the model, loading it if needed; inside a request it stays pinned until the end.

        Raises the loader's exception if the load fails, `ModelSlotTimeout` if no slot frees
        in time, `CacheClosed` after `shutdown()`.
        """
        check_model_id(model_id)
        self.metrics.get_model_requests += 1
        scope = current_scope()
        deadline: float | None = None
        while True:
            if self._closed:
                raise CacheClosed("the model cache is shut down; the replica is draining")
            entry = self._entries.get(model_id)
            if entry is not None:
                return await self._use(entry, scope)
            victim = self._victim(scope.evict_hint if scope is not None else "")
            if victim is not None or self._has_free_slot():
                self._start_load(model_id, victim)
                continue
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.slot_timeout_s
            if scope is not None:
                scope.waited_for_load = True
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ModelSlotTimeout(
                    f"no model slot freed within {self.slot_timeout_s:g} s to load {model_id!r}: "
                    f"all {self.capacity} slots are held by running requests or loads"
                )
            await self._wait_for_slot(remaining)

    async def _use(self, entry: _Entry[M], scope: RequestScope | None) -> M:
        self._entries.move_to_end(entry.model_id)
        entry.last_used = self._clock()
        entry.pins += 1
        if entry.ready is None:
            model = entry.model
        else:
            if scope is not None:
                scope.waited_for_load = True
            try:
                model = await asyncio.shield(entry.ready)
            except BaseException:
                self._unpin(entry)
                raise
        if scope is None:
            self._unpin(entry)
        else:
            released = False

            def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    self._unpin(entry)

            scope.hold(release)
        return model  # type: ignore[return-value]  # resident entries always hold a model

    def _unpin(self, entry: _Entry[M]) -> None:
        entry.pins -= 1
        if entry.pins == 0:
            self._wake_slot_waiters()

    # -- slots and eviction ----------------------------------------------------------------

    def _has_free_slot(self) -> bool:
        return self.capacity == UNLIMITED or len(self._entries) < self.capacity

    def _victim(self, hint: str = "") -> _Entry[M] | None:
        """The model to evict when the cache is full: the router's `hint` if it is resident
        and unpinned, else the least recently used unpinned resident model."""
        if self._has_free_slot():
            return None
        hinted = self._entries.get(hint) if hint else None
        if hinted is not None and hinted.ready is None and hinted.pins == 0:
            return hinted
        for entry in self._entries.values():
            if entry.ready is None and entry.pins == 0:
                return entry
        return None

    async def _wait_for_slot(self, timeout_s: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            pass
        finally:
            if waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)

    def _wake_slot_waiters(self) -> None:
        waiters, self._slot_waiters = self._slot_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _start_load(self, model_id: str, victim: _Entry[M] | None) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[M] = loop.create_future()
        # A load nobody waits for any more (all cancelled) must not log "never retrieved".
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        if victim is not None:
            del self._entries[victim.model_id]
            self._emit(CacheEventKind.EVICTED, victim.model_id)
        self._entries[model_id] = _Entry(model_id, ready, self._clock())
        self._emit(CacheEventKind.LOAD_STARTED, model_id)
        task = loop.create_task(self._load(model_id, ready, victim, self._take_turn(loop)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(
        self,
        model_id: str,
        ready: asyncio.Future[M],
        victim: _Entry[M] | None,
        turn: asyncio.Future[bool],
    ) -> None:
        called = False
        try:
            if victim is not None:  # free the memory before the new model takes it
                await self._unload(victim.model_id, victim.model)
            if not await turn:
                raise CacheClosed(f"the model cache shut down before {model_id!r} could load")
            called = True
            started = time.perf_counter()
            model = await self._loader(model_id)
        except BaseException as exc:
            self._end_turn(turn)
            self._forget(model_id, ready)
            if called:
                self.metrics.load_failures += 1
            if isinstance(exc, asyncio.CancelledError):
                ready.cancel()
            else:
                ready.set_exception(exc)
            self._emit(CacheEventKind.LOAD_FAILED, model_id)
            self._wake_slot_waiters()
            if not isinstance(exc, Exception):
                raise
            return
        self._end_turn(turn)
        self.metrics.loads += 1
        self.metrics.load_latency_ms.observe((time.perf_counter() - started) * 1000)
        entry = self._entries[model_id]  # a loading entry leaves only through this task
        entry.model = model
        entry.ready = None
        ready.set_result(model)
        self._emit(CacheEventKind.LOADED, model_id)
        if entry.pins == 0:
            self._wake_slot_waiters()

    def _forget(self, model_id: str, ready: asyncio.Future[M]) -> None:
        entry = self._entries.get(model_id)
        if entry is not None and entry.ready is ready:
            del self._entries[model_id]

    async def _unload(self, model_id: str, model: M | None) -> None:
        started = time.perf_counter()
        try:
            await run_cleanup(model)
        except Exception:
            logger.exception("cleanup of evicted model %r failed", model_id)
        self.metrics.unloads += 1
        self.metrics.unload_latency_ms.observe((time.perf_counter() - started) * 1000)

    def _emit(self, kind: CacheEventKind, model_id: str) -> None:
        event = CacheEvent(kind, model_id)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("cache listener failed on %s", event)

    # -- load turns: at most max_concurrent_loads at once, the rest in FIFO order ----------

    def _take_turn(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[bool]:
        """A load's turn: resolved True now if one is free, else queued until a load ends;
        resolved False if the cache shuts down first."""
        turn: asyncio.Future[bool] = loop.create_future()
        limit = self.max_concurrent_loads
        if limit is None or self._loads_running < limit:
            self._loads_running += 1
            turn.set_result(True)
        else:
            self._load_queue.append(turn)
        return turn

    def _end_turn(self, turn: asyncio.Future[bool]) -> None:
        """The load that owns `turn` is over: pass its turn on to the first queued load."""
        if not turn.done():
            turn.cancel()  # still queued: the queue skips it
            return
        if turn.cancelled() or not turn.result():
            return  # never held a turn
        while self._load_queue:
            queued = self._load_queue.popleft()
            if not queued.done():
                queued.set_result(True)
                return
        self._loads_running -= 1

    # -- lifecycle -------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Refuse new gets, let running loads end, then unload every model (cleanup runs).

        Loads still waiting for their turn end at once without calling the loader; their
        waiters get `CacheClosed`."""
        self._closed = True
        self._wake_slot_waiters()
        queued, self._load_queue = self._load_queue, deque()
        for turn in queued:
            if not turn.done():
                turn.set_result(False)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._entries:
            model_id, entry = self._entries.popitem(last=False)
            self._emit(CacheEventKind.EVICTED, model_id)
            if entry.ready is None:
                await self._unload(model_id, entry.model)
