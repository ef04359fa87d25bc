"""The multiplexed LRU cache: eviction order, single flight, pins, cleanup, failures."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import ClassVar

import pytest

from replica import ModelSlotTimeout, request_context
from replica._cache import (
    UNLIMITED,
    CacheClosed,
    CacheEvent,
    CacheEventKind,
    Eviction,
    ModelCache,
)

from polling import until


class Model:
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id


class Loader:
    """A loader that records calls and can be held open or made to fail."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail: set[str] = set()

    async def __call__(self, model_id: str) -> Model:
        self.calls.append(model_id)
        if self.gate is not None:
            await self.gate.wait()
        if model_id in self.fail:
            raise RuntimeError(f"cannot load {model_id}")
        return Model(model_id)


def resident(cache: ModelCache[Model]) -> list[str]:
    return [m.model_id for m in cache.state().models]


async def test_lru_walk_at_capacity_two() -> None:
    loader = Loader()
    cache = ModelCache(loader, capacity=2)
    for model_id in ("1", "2", "3"):
        await cache.get(model_id)
    assert resident(cache) == ["2", "3"]
    await cache.get("2")
    assert resident(cache) == ["3", "2"]
    await cache.get("4")
    assert sorted(resident(cache)) == ["2", "4"]
    assert loader.calls == ["1", "2", "3", "4"]


async def test_hit_returns_the_same_object_without_loading() -> None:
    loader = Loader()
    cache = ModelCache(loader, capacity=3)
    first = await cache.get("a")
    assert await cache.get("a") is first
    assert loader.calls == ["a"]
    assert cache.metrics.get_model_requests == 2
    assert cache.metrics.loads == 1


async def test_eviction_happens_before_the_new_load_starts() -> None:
    loader = Loader()
    cache = ModelCache(loader, capacity=1)
    await cache.get("old")
    loader.gate = asyncio.Event()
    pending = asyncio.create_task(cache.get("new"))
    await until(lambda: loader.calls == ["old", "new"])
    state = cache.state()
    assert state.models == ()
    assert state.loading == ("new",)
    assert cache.metrics.unloads == 1
    loader.gate.set()
    assert (await pending).model_id == "new"
    assert resident(cache) == ["new"]


async def test_fifty_concurrent_misses_share_one_load() -> None:
    loader = Loader()
    loader.gate = asyncio.Event()
    cache = ModelCache(loader, capacity=3)
    tasks = [asyncio.create_task(cache.get("m")) for _ in range(50)]
    await until(lambda: loader.calls == ["m"])
    loader.gate.set()
    models = await asyncio.gather(*tasks)
    assert loader.calls == ["m"]
    assert all(model is models[0] for model in models)


async def test_different_ids_load_concurrently() -> None:
    loader = Loader()
    loader.gate = asyncio.Event()
    cache = ModelCache(loader, capacity=3)
    tasks = [asyncio.create_task(cache.get(i)) for i in ("a", "b", "c")]
    await until(lambda: len(loader.calls) == 3)
    assert sorted(cache.state().loading) == ["a", "b", "c"]
    loader.gate.set()
    await asyncio.gather(*tasks)


async def test_capacity_one_never_holds_more_than_one_model() -> None:
    peak = 0
    cache: ModelCache[Model]

    async def load(model_id: str) -> Model:
        nonlocal peak
        peak = max(peak, len(cache))
        await asyncio.sleep(0.01)
        peak = max(peak, len(cache))
        return Model(model_id)

    cache = ModelCache(load, capacity=1)

    async def request(model_id: str) -> str:
        with request_context(model_id):
            model = await cache.get(model_id)
            await asyncio.sleep(0.005)
            return model.model_id

    results = await asyncio.gather(*(request(i) for i in ("x", "y", "z") * 3))
    assert results == ["x", "y", "z"] * 3
    assert peak == 1
    assert len(cache) <= 1


async def test_pinned_model_is_not_evicted_while_its_request_runs() -> None:
    loader = Loader()
    cache = ModelCache(loader, capacity=1, slot_timeout_s=10)
    release = asyncio.Event()

    async def long_request() -> None:
        with request_context("pinned"):
            await cache.get("pinned")
            await release.wait()

    holder = asyncio.create_task(long_request())
    await until(lambda: "pinned" in cache)
    waiter = asyncio.create_task(cache.get("other"))
    await asyncio.sleep(0.05)
    assert resident(cache) == ["pinned"]
    assert loader.calls == ["pinned"]
    assert not waiter.done()
    release.set()
    await holder
    assert (await waiter).model_id == "other"
    assert resident(cache) == ["other"]


async def test_waiting_for_a_slot_is_bounded() -> None:
    cache = ModelCache(Loader(), capacity=1, slot_timeout_s=0.05)
    with request_context("a"):
        await cache.get("a")
        with pytest.raises(ModelSlotTimeout, match="no model slot freed"):
            await cache.get("b")
        assert resident(cache) == ["a"]


async def test_get_outside_a_request_does_not_pin() -> None:
    cache = ModelCache(Loader(), capacity=1)
    await cache.get("a")
    assert cache.state().models[0].pins == 0
    await cache.get("b")
    assert resident(cache) == ["b"]


async def test_request_scope_releases_its_pins_and_marks_cold_loads() -> None:
    cache = ModelCache(Loader(), capacity=2)
    with request_context("a") as scope:
        await cache.get("a")
        assert cache.state().models[0].pins == 1
        assert scope.waited_for_load
    assert cache.state().models[0].pins == 0
    with request_context("a") as warm:
        await cache.get("a")
        assert not warm.waited_for_load


class SyncCleanup:
    deleted: ClassVar[list[str]] = []

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    def __del__(self) -> None:
        SyncCleanup.deleted.append(self.model_id)


class AsyncCleanup:
    deleted: ClassVar[list[str]] = []

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    async def __del__(self) -> None:
        AsyncCleanup.deleted.append(self.model_id)


@pytest.mark.parametrize("model_class", [SyncCleanup, AsyncCleanup])
async def test_cleanup_runs_exactly_once(model_class: type[SyncCleanup | AsyncCleanup]) -> None:
    import gc

    model_class.deleted = []

    async def load(model_id: str) -> SyncCleanup | AsyncCleanup:
        return model_class(model_id)

    cache = ModelCache(load, capacity=1)
    await cache.get("a")
    await cache.get("b")  # evicts a
    assert cache.metrics.unloads == 1
    assert model_class.deleted == ["a"]
    await cache.shutdown()
    assert model_class.deleted == ["a", "b"]
    del cache
    gc.collect()
    assert model_class.deleted == ["a", "b"]  # the garbage collector did not run them again


async def test_cleanup_error_is_logged_and_does_not_fail_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Fragile:
        def __del__(self) -> None:
            raise OSError("device busy")

    async def load(model_id: str) -> object:
        return Fragile() if model_id == "fragile" else Model(model_id)

    cache: ModelCache[object] = ModelCache(load, capacity=1)
    await cache.get("fragile")
    assert isinstance(await cache.get("next"), Model)
    assert "cleanup of evicted model 'fragile' failed" in caplog.text


async def test_failed_load_is_not_cached_and_reaches_every_waiter() -> None:
    loader = Loader()
    loader.fail = {"bad"}
    loader.gate = asyncio.Event()
    cache = ModelCache(loader, capacity=1)
    tasks = [asyncio.create_task(cache.get("bad")) for _ in range(5)]
    await until(lambda: loader.calls == ["bad"])
    loader.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "cannot load bad" in str(r) for r in results)
    assert len(cache) == 0
    assert cache.metrics.load_failures == 1
    await cache.get("good")  # the slot was freed
    loader.fail.clear()
    await cache.get("bad")  # and the failure was not remembered
    assert loader.calls == ["bad", "good", "bad"]


async def test_unlimited_capacity_never_evicts() -> None:
    cache = ModelCache(Loader(), capacity=UNLIMITED)
    for i in range(200):
        await cache.get(f"m{i}")
    assert len(resident(cache)) == 200
    assert cache.metrics.unloads == 0


async def test_events_announce_every_change() -> None:
    events: list[CacheEvent] = []
    loader = Loader()
    loader.fail = {"bad"}
    cache = ModelCache(loader, capacity=1)
    cache.add_listener(events.append)
    await cache.get("a")
    with pytest.raises(RuntimeError):
        await cache.get("bad")
    await cache.get("b")
    kinds = [(e.kind, e.model_id) for e in events]
    assert kinds == [
        (CacheEventKind.LOAD_STARTED, "a"),
        (CacheEventKind.LOADED, "a"),
        (CacheEventKind.EVICTED, "a"),
        (CacheEventKind.LOAD_STARTED, "bad"),
        (CacheEventKind.LOAD_FAILED, "bad"),
        (CacheEventKind.LOAD_STARTED, "b"),
        (CacheEventKind.LOADED, "b"),
    ]


async def test_state_reports_lru_order_pins_and_loading() -> None:
    now = [100.0]
    loader = Loader()
    cache = ModelCache(loader, capacity=3, clock=lambda: now[0])
    await cache.get("a")
    now[0] = 101.0
    await cache.get("b")
    loader.gate = asyncio.Event()
    pending = asyncio.create_task(cache.get("c"))
    await until(lambda: "c" in cache.state().loading)
    state = cache.state()
    assert [(m.model_id, m.last_used) for m in state.models] == [("a", 100.0), ("b", 101.0)]
    assert state.loading == ("c",)
    assert state.capacity == 3
    loader.gate.set()
    await pending


async def test_load_and_unload_times_are_read_on_the_injected_clock() -> None:
    now = [100.0]

    async def slow_load(model_id: str) -> Model:
        now[0] += 2.5  # the load takes 2.5 s on the cache's clock, none on the wall's
        return Model(model_id)

    cache = ModelCache(slow_load, capacity=1, clock=lambda: now[0])
    await cache.get("a")
    await cache.get("b")  # evicts "a": its cleanup takes no time on that clock
    assert cache.metrics.load_latency_ms.count == 2
    assert cache.metrics.load_latency_ms.sum_ms == 5000.0
    assert cache.metrics.unload_latency_ms.count == 1
    assert cache.metrics.unload_latency_ms.sum_ms == 0.0


async def test_shutdown_unloads_everything_and_refuses_new_gets() -> None:
    SyncCleanup.deleted = []

    async def load(model_id: str) -> SyncCleanup:
        return SyncCleanup(model_id)

    cache = ModelCache(load, capacity=3)
    await cache.get("a")
    await cache.get("b")
    await cache.shutdown()
    assert sorted(SyncCleanup.deleted) == ["a", "b"]
    assert len(cache) == 0
    with pytest.raises(CacheClosed):
        await cache.get("a")


async def test_a_cancelled_waiter_does_not_cancel_the_shared_load() -> None:
    loader = Loader()
    loader.gate = asyncio.Event()
    cache = ModelCache(loader, capacity=2)
    impatient = asyncio.create_task(cache.get("m"))
    patient = asyncio.create_task(cache.get("m"))
    await until(lambda: loader.calls == ["m"])
    impatient.cancel()
    loader.gate.set()
    assert (await patient).model_id == "m"
    assert cache.state().models[0].pins == 0
    assert loader.calls == ["m"]


@pytest.mark.parametrize("bad", [None, 3, b"id"])
async def test_non_string_model_id_is_a_type_error(bad: object) -> None:
    cache = ModelCache(Loader(), capacity=1)
    with pytest.raises(TypeError, match="must be a string"):
        await cache.get(bad)  # type: ignore[arg-type]


async def test_empty_model_id_is_a_value_error() -> None:
    cache = ModelCache(Loader(), capacity=1)
    with pytest.raises(ValueError, match="must not be empty"):
        await cache.get("")


def test_capacity_must_be_positive_or_unlimited() -> None:
    loader: Callable[[str], Awaitable[Model]] = Loader()
    with pytest.raises(ValueError, match="capacity"):
        ModelCache(loader, capacity=0)


# -- max_concurrent_loads ---------------------------------------------------------------------


class GatedLoader:
    """A loader whose call for a model id waits until the test opens that id's gate; it counts
    the calls running at once."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self.running = 0
        self.peak = 0
        self._gates: dict[str, asyncio.Event] = {}

    def open(self, model_id: str) -> None:
        self._gates.setdefault(model_id, asyncio.Event()).set()

    async def __call__(self, model_id: str) -> Model:
        self.calls.append(model_id)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self._gates.setdefault(model_id, asyncio.Event()).wait()
            if model_id in self.fail:
                raise RuntimeError(f"cannot load {model_id}")
            return Model(model_id)
        finally:
            self.running -= 1


async def test_one_load_at_a_time_takes_every_slot_at_once_and_loads_in_turn() -> None:
    loader = GatedLoader()
    events: list[CacheEvent] = []
    cache = ModelCache(loader, capacity=3, max_concurrent_loads=1)
    cache.add_listener(events.append)
    tasks = [asyncio.create_task(cache.get(model_id)) for model_id in ("z", "x", "y")]
    await until(lambda: loader.calls == ["z"])
    assert cache.state().loading == ("z", "x", "y")  # all three reported as loading
    assert [(e.kind, e.model_id) for e in events] == [
        (CacheEventKind.LOAD_STARTED, "z"),
        (CacheEventKind.LOAD_STARTED, "x"),
        (CacheEventKind.LOAD_STARTED, "y"),
    ]
    loader.open("z")
    await until(lambda: loader.calls == ["z", "x"])  # first come, first served
    assert resident(cache) == ["z"]
    assert cache.state().loading == ("x", "y")
    loader.open("x")
    await until(lambda: loader.calls == ["z", "x", "y"])
    loader.open("y")
    models = await asyncio.gather(*tasks)
    assert [m.model_id for m in models] == ["z", "x", "y"]
    assert loader.peak == 1
    assert resident(cache) == ["z", "x", "y"]
    assert cache.metrics.loads == 3


async def test_a_limit_of_two_runs_two_loads_at_once() -> None:
    loader = GatedLoader()
    cache = ModelCache(loader, capacity=4, max_concurrent_loads=2)
    tasks = [asyncio.create_task(cache.get(model_id)) for model_id in ("a", "b", "c", "d")]
    await until(lambda: loader.calls == ["a", "b"])
    assert len(cache.state().loading) == 4
    loader.open("b")
    await until(lambda: loader.calls == ["a", "b", "c"])
    for model_id in ("a", "c", "d"):
        loader.open(model_id)
    await asyncio.gather(*tasks)
    assert loader.peak == 2
    assert sorted(resident(cache)) == ["a", "b", "c", "d"]


async def test_the_victim_leaves_when_a_queued_load_takes_its_slot() -> None:
    loader = GatedLoader()
    loader.open("old")
    cache = ModelCache(loader, capacity=2, max_concurrent_loads=1)
    await cache.get("old")
    running = asyncio.create_task(cache.get("a"))
    queued = asyncio.create_task(cache.get("b"))
    await until(lambda: cache.state().loading == ("a", "b"))
    assert resident(cache) == []  # evicted before the load of "b" was even queued
    await until(lambda: cache.metrics.unloads == 1)
    assert loader.calls == ["old", "a"]
    loader.open("a")
    loader.open("b")
    await asyncio.gather(running, queued)
    assert resident(cache) == ["a", "b"]


async def test_a_failing_queued_load_frees_its_slot_and_passes_its_turn_on() -> None:
    loader = GatedLoader()
    loader.fail = {"bad"}
    cache = ModelCache(loader, capacity=3, max_concurrent_loads=1)
    first = asyncio.create_task(cache.get("a"))
    failing = [asyncio.create_task(cache.get("bad")) for _ in range(3)]
    last = asyncio.create_task(cache.get("c"))
    await until(lambda: loader.calls == ["a"])
    loader.open("a")
    await until(lambda: loader.calls == ["a", "bad"])
    loader.open("bad")
    await until(lambda: loader.calls == ["a", "bad", "c"])
    results = await asyncio.gather(*failing, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "cannot load bad" in str(r) for r in results)
    assert len(cache) == 2  # "a" resident, "c" loading: the failed load's slot is free
    assert cache.state().loading == ("c",)
    assert cache.metrics.load_failures == 1
    loader.open("c")
    await asyncio.gather(first, last)
    assert loader.peak == 1
    assert resident(cache) == ["a", "c"]


async def test_a_queued_load_whose_waiters_were_cancelled_still_loads() -> None:
    loader = GatedLoader()
    cache = ModelCache(loader, capacity=2, max_concurrent_loads=1)
    first = asyncio.create_task(cache.get("a"))
    impatient = asyncio.create_task(cache.get("b"))
    await until(lambda: cache.state().loading == ("a", "b"))
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert cache.state().loading == ("a", "b")
    loader.open("a")
    loader.open("b")
    await first
    await until(lambda: "b" in cache)
    assert loader.calls == ["a", "b"]
    assert [m.pins for m in cache.state().models] == [0, 0]


async def test_shutdown_lets_the_running_load_end_and_drops_the_queued_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import gc

    loader = GatedLoader()
    events: list[CacheEvent] = []
    cache = ModelCache(loader, capacity=3, max_concurrent_loads=1)
    cache.add_listener(events.append)
    running = asyncio.create_task(cache.get("a"))
    queued = asyncio.create_task(cache.get("b"))
    unwaited = asyncio.create_task(cache.get("c"))
    await until(lambda: cache.state().loading == ("a", "b", "c"))
    unwaited.cancel()  # a queued load nobody waits for must not log "never retrieved"
    closing = asyncio.create_task(cache.shutdown())
    with pytest.raises(CacheClosed, match="shut down before 'b' could load"):
        await queued
    assert cache.state().loading == ("a",)
    assert not closing.done()  # the running load may end
    loader.open("a")
    assert (await running).model_id == "a"
    await asyncio.wait_for(closing, 5)
    assert loader.calls == ["a"]
    assert len(cache) == 0
    assert cache.metrics.load_failures == 0  # the dropped loads never called the loader
    assert (CacheEventKind.LOAD_FAILED, "c") in [(e.kind, e.model_id) for e in events]
    del unwaited  # its cancellation's traceback holds the load's future
    gc.collect()
    assert "never retrieved" not in caplog.text


async def test_the_state_reports_the_load_limit() -> None:
    assert ModelCache(Loader(), capacity=3).state().max_concurrent_loads is None
    assert (
        ModelCache(Loader(), capacity=3, max_concurrent_loads=1).state().max_concurrent_loads == 1
    )


@pytest.mark.parametrize("loads", [0, -1])
def test_max_concurrent_loads_must_be_positive_or_none(loads: int) -> None:
    loader: Callable[[str], Awaitable[Model]] = Loader()
    with pytest.raises(ValueError, match="max_concurrent_loads"):
        ModelCache(loader, capacity=3, max_concurrent_loads=loads)


async def test_a_failed_load_is_remembered_with_its_message_until_the_model_loads() -> None:
    now = [100.0]
    loader = Loader()
    loader.fail = {"bad"}
    cache = ModelCache(loader, capacity=2, clock=lambda: now[0])
    with contextlib.suppress(RuntimeError):
        await cache.get("bad")
    [failure] = cache.recent_failures(now[0] + 1.0)
    assert (failure.model_id, failure.age_s) == ("bad", 1.0)
    assert failure.message.startswith("RuntimeError: cannot load bad")
    assert cache.recent_failures(now[0] + 61.0) == []  # too old to report
    with contextlib.suppress(RuntimeError):
        await cache.get("bad")
    loader.fail.clear()
    await cache.get("bad")
    assert cache.recent_failures(now[0]) == []  # it loaded since


async def test_evict_unloads_a_free_model_at_once() -> None:
    events: list[CacheEvent] = []
    cache = ModelCache(Loader(), capacity=2)
    cache.add_listener(events.append)
    await cache.get("a")
    assert await cache.evict("a") is Eviction.EVICTED
    assert resident(cache) == []
    assert cache.metrics.unloads == 1
    assert events[-1] == CacheEvent(CacheEventKind.EVICTED, "a")
    assert await cache.evict("a") is Eviction.ABSENT


async def test_evict_waits_for_the_requests_using_the_model() -> None:
    loader = Loader()
    cache = ModelCache(loader, capacity=2)
    release = asyncio.Event()

    async def request() -> None:
        with request_context("a"):
            await cache.get("a")
            await release.wait()

    running = asyncio.create_task(request())
    await until(lambda: resident(cache) == ["a"])
    assert await cache.evict("a") is Eviction.AFTER_REQUESTS
    assert cache.is_evicting("a")
    assert await cache.get("a") is not None  # new gets still use it until it is free
    assert resident(cache) == []  # but it is no longer reported
    assert cache.holds("a")
    release.set()
    await running
    await until(lambda: cache.metrics.unloads == 1)
    assert resident(cache) == []
    assert loader.calls == ["a"]
    await cache.get("a")  # a later get loads it afresh
    assert loader.calls == ["a", "a"]


async def test_evict_during_a_load_drops_the_model_once_loaded() -> None:
    loader = Loader()
    loader.gate = asyncio.Event()
    cache = ModelCache(loader, capacity=2)
    pending = asyncio.create_task(cache.get("a"))  # outside a request: no pin once loaded
    await until(lambda: loader.calls == ["a"])
    assert await cache.evict("a") is Eviction.AFTER_REQUESTS
    loader.gate.set()
    assert (await pending).model_id == "a"
    await until(lambda: cache.metrics.unloads == 1)
    assert len(cache) == 0
