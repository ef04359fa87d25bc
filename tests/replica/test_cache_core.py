"""The cache's rules without asyncio: slots, pins, victims, load turns, state."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from replica._cache_core import (
    HITS_HALF_LIFE_S,
    UNLIMITED,
    Acquired,
    Acquisition,
    CacheCore,
    LoadEnded,
    ResidentModel,
)


def resident(core: CacheCore) -> list[str]:
    return [m.model_id for m in core.state().models]


def load(core: CacheCore, model_id: str, now: float = 0.0, *, seed_hits: float = 0.0) -> None:
    """Acquire `model_id`, load it and release it: resident and unpinned."""
    got = core.acquire(model_id, now, seed_hits=seed_hits)
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


# -- hits --------------------------------------------------------------------------------------


def hits(core: CacheCore) -> dict[str, float]:
    """Each resident model's hits, decayed to its last use (as `state()` holds them)."""
    return {m.model_id: m.hits for m in core.state().models}


def test_every_acquire_counts_a_hit_resident_or_loading() -> None:
    core = CacheCore(capacity=2)
    core.acquire("a", 0.0)  # the load's own request: 1
    core.acquire("a", 0.0)  # joins the load: 2
    core.loaded("a")
    core.acquire("a", 0.0)  # resident: 3
    assert hits(core) == {"a": 3.0}
    for _ in range(3):
        core.release("a")
    core.acquire("a", 0.0)
    assert hits(core) == {"a": 4.0}  # a release changes nothing, the next acquire counts


@pytest.mark.parametrize(("seed", "start"), [(0.0, 1.0), (0.5, 1.0), (1.0, 1.0), (40.0, 40.0)])
def test_a_new_load_starts_from_the_routers_count_and_at_least_one(
    seed: float, start: float
) -> None:
    core = CacheCore(capacity=2)
    load(core, "a", 5.0, seed_hits=seed)
    assert hits(core) == {"a": start}
    core.acquire("a", 5.0, seed_hits=1000.0)  # the seed is for a new load only
    assert hits(core) == {"a": start + 1}


def test_a_model_evicted_and_loaded_again_starts_from_its_seed_not_its_old_hits() -> None:
    core = CacheCore(capacity=1)
    load(core, "a", 0.0, seed_hits=50.0)
    load(core, "b", 1.0)  # evicts a, and its hits with it
    load(core, "a", 2.0, seed_hits=3.0)
    assert hits(core) == {"a": 3.0}


def test_an_acquire_that_finds_no_slot_counts_no_hit() -> None:
    core = CacheCore(capacity=1)
    core.acquire("a", 0.0, seed_hits=2.0)
    assert core.acquire("b", 1.0, seed_hits=9.0).kind is Acquisition.NO_SLOT
    core.loaded("a")
    assert hits(core) == {"a": 2.0}
    assert not core.holds("b")


def test_hits_halve_every_half_life() -> None:
    core = CacheCore(capacity=2)
    load(core, "a", 0.0, seed_hits=8.0)
    core.acquire("a", HITS_HALF_LIFE_S)  # 8 halved, plus this hit
    (model,) = core.state().models
    assert model.hits == pytest.approx(5.0)
    assert model.last_used == HITS_HALF_LIFE_S
    assert model.hits_at(2 * HITS_HALF_LIFE_S) == pytest.approx(2.5)
    assert model.hits_at(4 * HITS_HALF_LIFE_S) == pytest.approx(0.625)
    assert model.hits_at(HITS_HALF_LIFE_S + 60.0) == pytest.approx(5.0 * 0.5 ** (60 / 600))


def test_hits_at_a_time_before_the_last_use_do_not_grow() -> None:
    model = ResidentModel("a", last_used=100.0, pins=0, hits=4.0)
    assert model.hits_at(100.0) == 4.0
    assert model.hits_at(50.0) == 4.0  # a clock read before the last use: no decay, no growth
    assert ResidentModel("b", last_used=0.0, pins=0).hits_at(1e9) == 0.0
    assert ResidentModel("c", last_used=0.0, pins=0, hits=1e6).hits_at(1e9) == 0.0  # underflow


def test_the_time_passed_in_is_the_only_clock() -> None:
    """Two cores fed the same calls at the same times hold the same hits, whenever they run."""
    first, second = CacheCore(capacity=2), CacheCore(capacity=2)
    for core in (first, second):
        load(core, "a", 10.0, seed_hits=6.0)
        core.acquire("a", 700.0)
    assert hits(first) == hits(second) == {"a": pytest.approx(6.0 * 0.5 ** (690 / 600) + 1)}


# -- eviction hints from several routers -----------------------------------------------------


def test_two_routers_loading_one_cold_model_with_different_hints_evict_one_model() -> None:
    """Both routers placed `c` here; each named its own victim. The first acquire takes a slot
    (evicting its hint), the second joins that load: its hint is ignored, `b` stays."""
    core = CacheCore(capacity=2)
    load(core, "a", 1.0)
    load(core, "b", 2.0)
    first = core.acquire("c", 3.0, evict_hint="a", seed_hits=4.0)
    assert first == Acquired(Acquisition.NEW_LOAD, victim="a", hinted=True, turn=True)
    second = core.acquire("c", 3.0, evict_hint="b", seed_hits=7.0)
    assert second == Acquired(Acquisition.LOADING)
    assert resident(core) == ["b"]
    assert core.state().loading == ("c",)
    core.loaded("c")
    assert hits(core) == {"b": 1.0, "c": 5.0}  # the first router's seed, plus the join


def test_a_hint_naming_a_model_another_router_just_placed_is_not_followed() -> None:
    """Router 1 placed `b` (loading, even once nothing pins it); router 2, not yet told, names
    `b` as its victim. The LRU fallback passes over `b` and over the pinned `a`, and takes the
    free `c`."""
    core = CacheCore(capacity=3)
    load(core, "a", 1.0)
    core.acquire("a", 2.0)  # pinned by a request in progress, though least recently used
    core.acquire("b", 3.0)  # loading for router 1
    assert core.release("b") is False  # its client went away: the load goes on, unpinned
    load(core, "c", 4.0)
    got = core.acquire("d", 5.0, evict_hint="b")
    assert got == Acquired(Acquisition.NEW_LOAD, victim="c", hinted=False, turn=True)
    assert core.state().loading == ("b", "d")
    assert resident(core) == ["a"]


def test_a_hint_naming_a_queued_load_is_not_followed() -> None:
    core = CacheCore(capacity=3, max_concurrent_loads=1)
    core.acquire("x", 0.0)
    core.acquire("y", 0.0)  # holds its slot, waits for a turn
    load_turn = core.loaded("x")
    assert load_turn.next_turn == "y"
    core.release("x")
    core.acquire("z", 1.0)  # queued behind y
    core.release("z")  # its client went away: still queued, unpinned
    got = core.acquire("w", 2.0, evict_hint="z")
    assert (got.kind, got.victim, got.hinted) == (Acquisition.NEW_LOAD, "x", False)
    assert core.holds("z")


def test_a_hint_naming_a_pinned_model_when_nothing_else_is_free_changes_nothing() -> None:
    core = CacheCore(capacity=2)
    load(core, "a", 1.0)
    core.acquire("a", 2.0)  # pinned
    core.acquire("b", 3.0)  # loading
    before = core.state()
    assert core.acquire("c", 4.0, evict_hint="a").kind is Acquisition.NO_SLOT
    assert core.acquire("c", 4.0, evict_hint="b").kind is Acquisition.NO_SLOT
    assert core.state() == before


def test_a_hint_naming_a_model_not_held_falls_back_to_lru() -> None:
    core = CacheCore(capacity=2)
    load(core, "a", 1.0)
    load(core, "b", 2.0)
    got = core.acquire("c", 3.0, evict_hint="gone")
    assert (got.victim, got.hinted) == ("a", False)


def test_a_hint_with_room_to_spare_evicts_nothing() -> None:
    core = CacheCore(capacity=3)
    load(core, "a", 1.0)
    assert core.acquire("b", 2.0, evict_hint="a") == Acquired(Acquisition.NEW_LOAD, turn=True)
    assert core.holds("a")


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


# -- several routers, each hinting from its own stale view --------------------------------------

ROUTERS = 3


class SeveralRouters(RuleBasedStateMachine):
    """Requests from several routers reach one cache in any order, each with the eviction hint
    its router chose from the replica's last report it heard (stale, and different per router),
    and a seed. An oracle of our own keeps what the cache must hold; after every step: slots
    taken <= capacity, no loading or pinned model was ever the victim, one load per model at a
    time (a model held is never loaded again until it left), and hits at a last use >= 1."""

    def __init__(self) -> None:
        super().__init__()
        self.core = CacheCore(capacity=2)
        self.now = 0.0
        self.held: dict[str, str] = {}  # model id -> "loading" | "resident", as the oracle sees it
        self.pins: list[str] = []  # one per pin held
        self.running: list[str] = []  # loads holding a turn
        self.heard: list[list[str]] = [[] for _ in range(ROUTERS)]  # each router's last report

    @initialize(capacity=st.integers(1, 4), max_loads=st.none() | st.integers(1, 2))
    def setup(self, capacity: int, max_loads: int | None) -> None:
        self.core = CacheCore(capacity=capacity, max_concurrent_loads=max_loads)

    @rule(router=st.integers(0, ROUTERS - 1))
    def report(self, router: int) -> None:
        """A report reaches one router: its view of the replica is now the cache's state."""
        state = self.core.state()
        self.heard[router] = [m.model_id for m in state.models] + list(state.loading)

    @rule(
        router=st.integers(0, ROUTERS - 1),
        model=st.sampled_from(MODELS),
        pick=st.integers(0, 10),
        seed=st.sampled_from([0.0, 1.0, 3.0, 250.0]),
    )
    def acquire(self, router: int, model: str, pick: int, seed: float) -> None:
        view = self.heard[router]
        hint = view[pick % len(view)] if view and pick < 8 else None
        self._acquire(model, hint, seed)

    def _acquire(self, model: str, hint: str | None, seed: float) -> None:
        got = self.core.acquire(model, self.now, evict_hint=hint, seed_hits=seed)
        phase = self.held.get(model)
        if got.kind is Acquisition.NO_SLOT:
            assert phase is None
            assert len(self.held) >= self.core.capacity
            assert all(p == "loading" or m in self.pins for m, p in self.held.items())
            return
        if got.kind is not Acquisition.NEW_LOAD:
            assert phase == ("resident" if got.kind is Acquisition.RESIDENT else "loading")
        else:
            assert phase is None, f"{model} loaded again while the cache holds it"
            if got.victim is not None:
                assert self.held.get(got.victim) == "resident", "a loading model was evicted"
                assert got.victim not in self.pins, "a pinned model was evicted"
                assert got.hinted == (got.victim == hint)
                del self.held[got.victim]
            else:
                assert len(self.held) < self.core.capacity, "a slot was taken twice"
            self.held[model] = "loading"
            if got.turn:
                self.running.append(model)
        self.pins.append(model)

    @precondition(lambda self: bool(self.pins))
    @rule(index=st.integers(0, 50))
    def release(self, index: int) -> None:
        model = self.pins.pop(index % len(self.pins))
        self.core.release(model)

    @precondition(lambda self: bool(self.running))
    @rule(index=st.integers(0, 50), ok=st.booleans())
    def load_ends(self, index: int, ok: bool) -> None:
        model = self.running.pop(index % len(self.running))
        if ok:
            ended = self.core.loaded(model)
            self.held[model] = "resident"
        else:
            ended = self.core.load_failed(model)
            del self.held[model]
            self.pins = [p for p in self.pins if p != model]  # its pins went with it
        if ended.next_turn is not None:
            assert self.held.get(ended.next_turn) == "loading"
            self.running.append(ended.next_turn)

    @rule(seconds=st.sampled_from([0.0, 1.0, 600.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def the_cache_holds_what_the_oracle_says(self) -> None:
        state = self.core.state()
        assert len(self.core) == len(self.held) <= self.core.capacity
        assert {m.model_id for m in state.models} == {
            m for m, p in self.held.items() if p == "resident"
        }
        assert set(state.loading) == {m for m, p in self.held.items() if p == "loading"}
        for m in state.models:
            assert m.pins == self.pins.count(m.model_id)
            assert m.hits >= 1.0, "a model's hits at its last use count that use"


SeveralRouters.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
test_several_routers_never_empty_one_slot_twice_nor_evict_a_fresh_placement = (
    SeveralRouters.TestCase
)
