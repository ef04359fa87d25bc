"""The cache's rules without asyncio: slots, pins, victims, load turns, state."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica._cache_core import UNLIMITED, Acquired, Acquisition, CacheCore, LoadEnded


def resident(core: CacheCore) -> list[str]:
    return [m.model_id for m in core.state().models]


def load(core: CacheCore, model_id: str, now: float = 0.0) -> None:
    """Acquire `model_id`, load it and release it: resident and unpinned."""
    got = core.acquire(model_id, now)
    assert got.kind is Acquisition.NEW_LOAD
    assert got.turn
    core.loaded(model_id)
    core.release(model_id)


def test_a_miss_takes_a_slot_and_pins_the_loading_model() -> None:
    core = CacheCore(capacity=2)
    assert core.acquire("a", 1.0) == Acquired(Acquisition.NEW_LOAD, turn=True)
    assert core.state().loading == ("a",)
    assert core.holds("a")
    assert not core.is_resident("a")
    assert core.pins("a") == 1
    assert core.acquire("a", 2.0).kind is Acquisition.LOADING  # one load per model
    assert core.pins("a") == 2
    assert core.loaded("a") == LoadEnded(next_turn=None, slot_freed=False)
    assert core.is_resident("a")
    assert core.acquire("a", 3.0).kind is Acquisition.RESIDENT
    assert core.state().models[0].last_used == 3.0


def test_the_victim_is_the_least_recently_used_and_leaves_at_once() -> None:
    core = CacheCore(capacity=2)
    load(core, "a", 1.0)
    load(core, "b", 2.0)
    assert core.acquire("a", 3.0).kind is Acquisition.RESIDENT
    core.release("a")
    got = core.acquire("c", 4.0)
    assert got == Acquired(Acquisition.NEW_LOAD, victim="b", hinted=False, turn=True)
    assert resident(core) == ["a"]
    assert core.state().loading == ("c",)
    assert len(core) == 2


def test_the_hint_wins_only_when_it_is_resident_and_unpinned() -> None:
    core = CacheCore(capacity=2)
    load(core, "a")
    load(core, "b")
    assert core.acquire("c", 1.0, evict_hint="b").victim == "b"
    got = core.acquire("d", 2.0, evict_hint="c")  # "c" is loading: the LRU rule applies
    assert (got.victim, got.hinted) == ("a", False)
    core.loaded("c")
    got = core.acquire("e", 3.0, evict_hint="c")  # "c" is pinned by its acquire
    assert got.kind is Acquisition.NO_SLOT


def test_no_slot_when_every_model_is_pinned_or_loading_changes_nothing() -> None:
    core = CacheCore(capacity=1)
    core.acquire("a", 0.0)
    before = core.state()
    assert core.acquire("b", 1.0).kind is Acquisition.NO_SLOT
    assert core.state() == before
    core.loaded("a")
    assert core.release("a") is True  # "a" can be evicted now: a slot freed
    assert core.acquire("b", 2.0).victim == "a"


def test_a_release_frees_a_slot_only_for_a_resident_model_with_no_pins_left() -> None:
    core = CacheCore(capacity=2)
    core.acquire("a", 0.0)
    core.acquire("a", 0.0)
    assert core.release("a") is False  # loading
    assert core.loaded("a").slot_freed is False
    assert core.release("a") is True
    assert core.release("gone") is False


def test_load_turns_are_limited_and_handed_on_in_slot_order() -> None:
    core = CacheCore(capacity=3, max_concurrent_loads=1)
    turns = [core.acquire(model_id, 0.0).turn for model_id in ("z", "x", "y")]
    assert turns == [True, False, False]
    assert core.state().loading == ("z", "x", "y")  # all hold their slots
    assert core.turns_held == 1
    assert core.loaded("z").next_turn == "x"
    with pytest.raises(ValueError, match="not loading"):
        core.loaded("y")  # still waiting for its turn
    assert core.load_failed("x") == LoadEnded(next_turn="y", slot_freed=True)
    assert core.loaded("y").next_turn is None
    assert core.turns_held == 0


def test_a_failed_load_frees_its_slot_and_drops_its_pins() -> None:
    core = CacheCore(capacity=1, max_concurrent_loads=1)
    core.acquire("a", 0.0)
    core.acquire("a", 0.0)
    assert core.load_failed("a") == LoadEnded(next_turn=None, slot_freed=True)
    assert len(core) == 0
    assert core.release("a") is False  # its waiters hold nothing
    assert core.acquire("b", 1.0).turn  # the turn came back


def test_a_queued_load_that_fails_leaves_the_queue() -> None:
    core = CacheCore(capacity=3, max_concurrent_loads=1)
    for model_id in ("a", "b", "c"):
        core.acquire(model_id, 0.0)
    assert core.load_failed("b") == LoadEnded(next_turn=None, slot_freed=True)
    assert core.loaded("a").next_turn == "c"


def test_cancelled_turns_never_come() -> None:
    core = CacheCore(capacity=3, max_concurrent_loads=1)
    for model_id in ("a", "b", "c"):
        core.acquire(model_id, 0.0)
    assert core.cancel_queued() == ["b", "c"]
    assert core.state().loading == ("a", "b", "c")  # until each reports its end
    assert core.loaded("a").next_turn is None
    assert core.load_failed("b").next_turn is None
    core.load_failed("c")
    assert core.turns_held == 0
    core.release("a")
    assert core.drop_oldest() == "a"
    assert core.drop_oldest() is None


def test_unlimited_capacity_never_evicts() -> None:
    core = CacheCore(capacity=UNLIMITED)
    for i in range(50):
        assert core.acquire(str(i), float(i)).victim is None
    assert len(core) == 50


@pytest.mark.parametrize(
    ("capacity", "loads", "message"),
    [(0, None, "capacity"), (-2, None, "capacity"), (1, 0, "max_concurrent_loads")],
)
def test_settings_are_checked(capacity: int, loads: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CacheCore(capacity=capacity, max_concurrent_loads=loads)


# -- any interleaving keeps the invariants -----------------------------------------------------

MODELS = ["a", "b", "c", "d", "e", "f"]
KINDS = ["acquire"] * 4 + ["release", "loaded", "failed"]  # enough acquires to queue turns

operation = st.tuples(st.sampled_from(KINDS), st.integers(0, 50), st.sampled_from([None, *MODELS]))


class Driver:
    """Plays the asyncio layer: holds pins, runs loads that got a turn, retries on a freed slot."""

    def __init__(self, capacity: int, max_loads: int | None) -> None:
        self.core = CacheCore(capacity=capacity, max_concurrent_loads=max_loads)
        self.pins: list[str] = []  # one per pin held
        self.running: list[str] = []  # loads holding a turn, in the order they got it
        self.turn_order: list[str] = []  # loads in the order they took their slot
        self.granted: list[str] = []  # loads in the order they got their turn
        self.waiting: list[str] = []  # acquires that found no slot
        self.now = 0.0

    def acquire(self, model_id: str, hint: str | None) -> None:
        got = self.core.acquire(model_id, self.now, evict_hint=hint)
        if got.kind is Acquisition.NO_SLOT:
            self.waiting.append(model_id)
            return
        if got.victim is not None:
            assert got.victim not in self.pins, "a pinned model was evicted"
            assert got.victim not in self.running, "a loading model was evicted"
        self.pins.append(model_id)
        if got.kind is Acquisition.NEW_LOAD:
            self.turn_order.append(model_id)
            if got.turn:
                self.grant(model_id)

    def grant(self, model_id: str) -> None:
        self.running.append(model_id)
        self.granted.append(model_id)

    def end(self, ended: LoadEnded) -> None:
        if ended.next_turn is not None:
            self.grant(ended.next_turn)
        if ended.slot_freed:
            waiting, self.waiting = self.waiting, []
            for model_id in waiting:
                self.acquire(model_id, None)

    def step(self, op: tuple[str, int, str | None]) -> None:
        self.now += 0.1
        kind, arg, hint = op
        if kind == "acquire":
            self.acquire(MODELS[arg % len(MODELS)], hint)
        elif kind == "release" and self.pins:
            model_id = self.pins.pop(arg % len(self.pins))  # loading: a cancelled get
            if self.core.release(model_id):
                self.end(LoadEnded(None, slot_freed=True))
        elif kind in ("loaded", "failed") and self.running:
            model_id = self.running.pop(arg % len(self.running))
            if kind == "loaded":
                self.end(self.core.loaded(model_id))
            else:
                self.pins = [p for p in self.pins if p != model_id]  # the pins went with it
                self.end(self.core.load_failed(model_id))
        self.check()

    def check(self) -> None:
        core, state = self.core, self.core.state()
        assert len(state.models) + len(state.loading) == len(core) <= core.capacity
        assert len(set(self.running)) == len(self.running), "two loads of one model at once"
        limit = core.max_concurrent_loads
        assert core.turns_held == len(self.running)
        if limit is not None:
            assert len(self.running) <= limit, "more loads at once than the limit"
        queued = [m for m in state.loading if m not in self.running]
        if limit is None or len(self.running) < limit:
            assert not queued, "a load waits while a turn is free"
        for model in state.models:
            assert model.pins == self.pins.count(model.model_id)
        # FIFO: no queued load fails here, so the turns went out in the order of the slots
        assert self.granted == self.turn_order[: len(self.granted)], "turns out of order"


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 4),
    max_loads=st.none() | st.integers(1, 3),
    ops=st.lists(operation, max_size=80),
)
def test_any_interleaving_keeps_the_invariants(
    capacity: int, max_loads: int | None, ops: list[tuple[str, int, str | None]]
) -> None:
    driver = Driver(capacity, max_loads)
    for op in ops:
        driver.step(op)
    while driver.running or driver.pins:  # every load ends and every request lets go
        if driver.running:
            driver.end(driver.core.loaded(driver.running.pop(0)))
        elif driver.core.release(driver.pins.pop(0)):
            driver.end(LoadEnded(None, slot_freed=True))
        driver.check()
    assert driver.waiting == [], "an acquire still waits for a slot"
    assert len(driver.core) <= driver.core.capacity
    assert driver.core.state().loading == ()
    assert driver.core.turns_held == 0


def test_a_free_model_marked_for_eviction_leaves_at_once() -> None:
    core = CacheCore(capacity=2)
    load(core, "a")
    assert core.mark_evicting("a") is True
    assert not core.holds("a")
    assert core.mark_evicting("a") is None  # not held


def test_a_pinned_model_marked_for_eviction_leaves_with_its_last_pin() -> None:
    core = CacheCore(capacity=2)
    load(core, "a")
    core.acquire("a", 1.0)
    assert core.mark_evicting("a") is False
    assert core.acquire("a", 2.0).kind is Acquisition.RESIDENT  # still served meanwhile
    assert core.state().models == ()  # but no longer reported
    core.release("a")
    assert not core.evict_due("a")  # one request still holds it
    assert core.is_evicting("a")
    core.release("a")
    assert core.evict_due("a")
    assert not core.holds("a")
    assert not core.evict_due("a")


def test_a_loading_model_marked_for_eviction_leaves_once_loaded_and_released() -> None:
    core = CacheCore(capacity=2)
    core.acquire("a", 0.0)
    assert core.mark_evicting("a") is False
    core.loaded("a")
    assert not core.evict_due("a")  # the get that loaded it still pins it
    core.release("a")
    assert core.evict_due("a")
    assert len(core) == 0


def test_an_unmarked_model_is_never_due() -> None:
    core = CacheCore(capacity=2)
    load(core, "a")
    assert not core.evict_due("a")
    assert core.holds("a")
