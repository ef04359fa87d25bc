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
- an evicted model's `__del__` runs once, and its failure never fails a request;
- `evict(model_id)` (an operator's request) never takes a model from a request using it: the
  model leaves once no request holds it (`CacheCore.mark_evicting`), and is unloaded then;
  meanwhile gets still use it, but it is no longer reported, so routers stop sending them.

The rules (slots, pins, victims, load turns) are `replica._cache_core.CacheCore`'s, asked for
every decision; this layer runs them on asyncio: futures for the gets waiting on a load or a
slot, the loader and cleanup calls, the metrics (timed on the injected clock) and the events.
Every change (load started, loaded, load failed, evicted) is announced to the listeners, which
the replica's reporter turns into a state report. No HTTP here: only models, slots and pins.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from common.wire import MAX_FAILURE_MESSAGE_CHARS, MAX_LOAD_FAILURES, LoadFailure
from replica._cache_core import UNLIMITED, Acquired, Acquisition, CacheCore, CacheState
from replica._cleanup import run_cleanup
from replica._context import RequestScope, current_scope
from replica._metrics import CacheMetrics

__all__ = [
    "UNLIMITED",
    "CacheClosed",
    "CacheEvent",
    "CacheEventKind",
    "Eviction",
    "ModelCache",
    "ModelSlotTimeout",
    "check_model_id",
]

logger = logging.getLogger("modelplex.replica")

M = TypeVar("M")
FAILURES_KEPT_S = 60.0  # a failed load is reported this long, unless the model loads since


class CacheEventKind(enum.Enum):
    LOAD_STARTED = "load_started"
    LOADED = "loaded"
    LOAD_FAILED = "load_failed"
    EVICTED = "evicted"


class Eviction(enum.Enum):
    """What `ModelCache.evict` did."""

    EVICTED = "evicted"  # it was free: it left the cache now
    AFTER_REQUESTS = "after_requests"  # in use or loading: it leaves when no request holds it
    ABSENT = "absent"  # the cache does not hold it


@dataclass(frozen=True, slots=True)
class CacheEvent:
    kind: CacheEventKind
    model_id: str


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


class _Load(Generic[M]):
    """A load under way or waiting for its turn: what its gets await."""

    __slots__ = ("failed", "ready", "turn")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, turn: bool) -> None:
        self.ready: asyncio.Future[M] = loop.create_future()
        # A load nobody waits for any more (all cancelled) must not log "never retrieved".
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.turn: asyncio.Future[bool] = loop.create_future()  # False: the cache shut down
        if turn:
            self.turn.set_result(True)
        self.failed = False  # its entry and the pins on it are gone


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
        name: str = "",
    ) -> None:
        self.name = name  # its loader's qualified name, e.g. "Deployment.load_model"
        self._core = CacheCore(capacity=capacity, max_concurrent_loads=max_concurrent_loads)
        self.slot_timeout_s = slot_timeout_s
        self.metrics = CacheMetrics()
        self._clock = clock
        self._loader = loader
        self._models: dict[str, M] = {}  # the resident ones
        self._loads: dict[str, _Load[M]] = {}  # the loading ones
        self._listeners: list[Listener] = []
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # The latest failed load of each model, oldest first: (the loader's error, clock time).
        self._failures: OrderedDict[str, tuple[str, float]] = OrderedDict()

    @property
    def capacity(self) -> int:
        return self._core.capacity

    @capacity.setter
    def capacity(self, capacity: int) -> None:
        self._core.capacity = capacity

    @property
    def max_concurrent_loads(self) -> int | None:
        return self._core.max_concurrent_loads

    # -- reading ---------------------------------------------------------------------------

    def state(self) -> CacheState:
        return self._core.state()

    def __contains__(self, model_id: object) -> bool:
        return isinstance(model_id, str) and self._core.is_resident(model_id)

    def __len__(self) -> int:
        """Models resident or loading: the slots taken."""
        return len(self._core)

    def holds(self, model_id: str) -> bool:
        """`model_id` is resident or loading."""
        return self._core.holds(model_id)

    def recent_failures(self, now: float) -> list[LoadFailure]:
        """Loads that failed within `FAILURES_KEPT_S` of `now` (this cache's clock) and have
        not succeeded since, newest last."""
        while self._failures:
            oldest = next(iter(self._failures.values()))
            if now - oldest[1] <= FAILURES_KEPT_S:
                break
            self._failures.popitem(last=False)
        return [
            LoadFailure(model_id=model_id, message=message, age_s=max(0.0, now - at))
            for model_id, (message, at) in self._failures.items()
        ]

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
        hint = scope.evict_hint if scope is not None else None
        seed = scope.seed_hits if scope is not None else 0.0
        deadline: float | None = None
        while True:
            if self._closed:
                raise CacheClosed("the model cache is shut down; the replica is draining")
            got = self._core.acquire(model_id, self._clock(), evict_hint=hint, seed_hits=seed)
            if got.kind is Acquisition.RESIDENT:
                return self._hold(model_id, self._models[model_id], scope)
            if got.kind is Acquisition.NEW_LOAD:
                self._start_load(model_id, got)
            if got.kind is not Acquisition.NO_SLOT:
                return await self._await_load(model_id, scope)
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

    async def _await_load(self, model_id: str, scope: RequestScope | None) -> M:
        """Wait for the load of `model_id`, which this get has pinned."""
        if scope is not None:
            scope.waited_for_load = True
        load = self._loads[model_id]
        try:
            model = await asyncio.shield(load.ready)
        except BaseException as exc:
            if not load.failed:  # this get was cancelled: its pin is still there
                self._release(model_id)
            elif scope is not None and isinstance(exc, Exception):
                scope.failed_load = model_id  # so the answer can say the load failed
            raise
        return self._hold(model_id, model, scope)

    def _hold(self, model_id: str, model: M, scope: RequestScope | None) -> M:
        """Keep this get's pin until its request ends (none outside a request)."""
        if scope is None:
            self._release(model_id)
            return model
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._release(model_id)

        scope.hold(release)
        return model

    def _failed(self, model_id: str, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"[:MAX_FAILURE_MESSAGE_CHARS]
        self._failures.pop(model_id, None)
        self._failures[model_id] = (message, self._clock())
        while len(self._failures) > MAX_LOAD_FAILURES:
            self._failures.popitem(last=False)

    def _release(self, model_id: str) -> None:
        if self._core.release(model_id):
            self._evict_if_due(model_id)
            self._wake_slot_waiters()

    # -- eviction on request ---------------------------------------------------------------

    async def evict(self, model_id: str) -> Eviction:
        """Evict `model_id` once no request holds it (new gets still use it until then);
        cleanup of a model evicted now has run when this returns."""
        outcome = self._core.mark_evicting(model_id)
        if outcome is None:
            return Eviction.ABSENT
        if not outcome:
            return Eviction.AFTER_REQUESTS
        model = self._models.pop(model_id)
        self._emit(CacheEventKind.EVICTED, model_id)
        self._wake_slot_waiters()
        await self._unload(model_id, model)
        return Eviction.EVICTED

    def is_evicting(self, model_id: str) -> bool:
        """`model_id` is marked for eviction and still held by a request or its load."""
        return self._core.is_evicting(model_id)

    def _evict_if_due(self, model_id: str) -> None:
        """A marked model no request holds any more leaves; its cleanup runs in a task."""
        if not self._core.evict_due(model_id):
            return
        model = self._models.pop(model_id)
        self._emit(CacheEventKind.EVICTED, model_id)
        task = asyncio.get_running_loop().create_task(self._unload(model_id, model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- slots and loads -------------------------------------------------------------------

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

    def _start_load(self, model_id: str, got: Acquired) -> None:
        loop = asyncio.get_running_loop()
        victim: tuple[str, M] | None = None
        if got.victim is not None:
            victim = (got.victim, self._models.pop(got.victim))
            self._emit(CacheEventKind.EVICTED, got.victim)
        load: _Load[M] = _Load(loop, turn=got.turn)
        self._loads[model_id] = load
        self._emit(CacheEventKind.LOAD_STARTED, model_id)
        task = loop.create_task(self._load(model_id, load, victim))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, model_id: str, load: _Load[M], victim: tuple[str, M] | None) -> None:
        called = False
        try:
            if victim is not None:  # free the memory before the new model takes it
                await self._unload(*victim)
            if not await load.turn:
                raise CacheClosed(f"the model cache shut down before {model_id!r} could load")
            called = True
            started = self._clock()
            model = await self._loader(model_id)
        except BaseException as exc:
            del self._loads[model_id]
            load.failed = True
            self._give_turn(self._core.load_failed(model_id).next_turn)
            if called:
                self.metrics.load_failures += 1
                if isinstance(exc, Exception):
                    self._failed(model_id, exc)
            if isinstance(exc, asyncio.CancelledError):
                load.ready.cancel()
            else:
                load.ready.set_exception(exc)
            self._emit(CacheEventKind.LOAD_FAILED, model_id)
            self._wake_slot_waiters()  # its slot is free
            if not isinstance(exc, Exception):
                raise
            return
        del self._loads[model_id]
        self._models[model_id] = model
        self._failures.pop(model_id, None)
        ended = self._core.loaded(model_id)
        self._give_turn(ended.next_turn)
        self.metrics.loads += 1
        self.metrics.load_latency_ms.observe((self._clock() - started) * 1000)
        load.ready.set_result(model)
        self._emit(CacheEventKind.LOADED, model_id)
        if ended.slot_freed:
            self._evict_if_due(model_id)
            self._wake_slot_waiters()

    def _give_turn(self, model_id: str | None) -> None:
        """The core handed the load of `model_id` its turn: let its loader run."""
        if model_id is None:
            return
        turn = self._loads[model_id].turn
        if not turn.done():  # done: its task was cancelled, and will hand the turn on
            turn.set_result(True)

    async def _unload(self, model_id: str, model: M) -> None:
        started = self._clock()
        try:
            await run_cleanup(model)
        except Exception:
            logger.exception("cleanup of evicted model %r failed", model_id)
        self.metrics.unloads += 1
        self.metrics.unload_latency_ms.observe((self._clock() - started) * 1000)

    def _emit(self, kind: CacheEventKind, model_id: str) -> None:
        event = CacheEvent(kind, model_id)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("cache listener failed on %s", event)

    # -- lifecycle -------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Refuse new gets, let running loads end, then unload every model (cleanup runs).

        Loads still waiting for their turn end at once without calling the loader; their
        waiters get `CacheClosed`."""
        self._closed = True
        self._wake_slot_waiters()
        for model_id in self._core.cancel_queued():
            turn = self._loads[model_id].turn
            if not turn.done():
                turn.set_result(False)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        while (oldest := self._core.drop_oldest()) is not None:
            self._emit(CacheEventKind.EVICTED, oldest)
            if oldest in self._models:
                await self._unload(oldest, self._models.pop(oldest))
