"""The simulated replica keeps the real cache's rules under any interleaving of requests,
answers and finished loads: never over capacity, never evicting a pinned or loading model,
one load per model at a time, never more loads at once than the limit, every request
eventually served."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from router.simulation.contract import SimRequest
from router.simulation.replica_model import SimReplica

MODELS = ["a", "b", "c", "d", "e"]

operation = st.one_of(
    st.tuples(st.just("arrive"), st.sampled_from(MODELS), st.sampled_from([None, *MODELS])),
    st.tuples(st.just("finish"), st.integers(min_value=0, max_value=50), st.none()),
    st.tuples(st.just("loaded"), st.integers(min_value=0, max_value=50), st.none()),
)


class World:
    def __init__(self, capacity: int, max_loads: int | None = None) -> None:
        self.replica = SimReplica(
            0, capacity=capacity, max_ongoing_requests=100, max_concurrent_loads=max_loads
        )
        self.max_loads = max_loads
        self.running: list[SimRequest] = []  # inferring: hold a pin
        self.loading: list[str] = []  # loads started, not yet finished
        self.resident_pins: dict[str, int] = {}
        self.now = 0.0
        self.count = 0

    def drain(self) -> None:
        replica = self.replica
        for model_id in replica.loads_started:
            assert model_id not in self.loading, "two loads of one model at once"
            self.loading.append(model_id)
        replica.loads_started.clear()
        self.running.extend(replica.started)
        replica.started.clear()
        replica.evicted.clear()
        assert replica.slots_taken <= replica.capacity
        state = replica.snapshot(self.now)
        assert len(state.models) + len(state.loading) <= replica.capacity
        assert set(self.loading) <= set(state.loading)  # the rest wait for their turn
        if self.max_loads is not None:
            assert len(self.loading) <= self.max_loads, "more loads at once than the limit"
        if self.max_loads is None or len(self.loading) < self.max_loads:
            assert set(state.loading) == set(self.loading), "a load waits while a turn is free"

    def step(self, op: tuple[str, object, object]) -> None:
        self.now += 0.1
        kind, arg, hint = op
        if kind == "arrive":
            assert isinstance(arg, str)
            request = SimRequest(self.count, arg, self.now, 0.01)
            request.evict = hint if isinstance(hint, str) else None
            self.count += 1
            self.replica.arrive(request, self.now)
        elif kind == "finish" and self.running:
            assert isinstance(arg, int)
            request = self.running.pop(arg % len(self.running))
            self.replica.finish(request, self.now)
        elif kind == "loaded" and self.loading:
            assert isinstance(arg, int)
            self.replica.loaded(self.loading.pop(arg % len(self.loading)), self.now, 1.0)
        self.drain()


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=3),
    max_loads=st.none() | st.integers(min_value=1, max_value=3),
    ops=st.lists(operation, max_size=60),
)
def test_invariants_hold_and_everything_is_served(
    capacity: int, max_loads: int | None, ops: list[tuple[str, object, object]]
) -> None:
    world = World(capacity, max_loads)
    for op in ops:
        world.step(op)  # the model asserts: no over-commit, no pinned or loading victim
    while world.running or world.loading:  # then let everything finish
        if world.loading:
            world.replica.loaded(world.loading.pop(0), world.now, 1.0)
        else:
            world.replica.finish(world.running.pop(0), world.now)
        world.drain()
    assert world.replica.in_flight == 0
    assert world.replica.snapshot(world.now).loading == ()


def test_hint_is_honoured_only_for_an_evictable_model() -> None:
    replica = SimReplica(0, capacity=2, max_ongoing_requests=10)
    first, second = SimRequest(0, "a", 0.0, 0.1), SimRequest(1, "b", 0.0, 0.1)
    for request in (first, second):
        replica.arrive(request, 0.0)
    replica.loaded("a", 1.0, 1.0)
    replica.loaded("b", 1.0, 1.0)
    replica.finish(first, 2.0)
    replica.finish(second, 2.0)
    touch = SimRequest(2, "a", 3.0, 0.1)
    replica.arrive(touch, 3.0)  # "a" is now the most recently used, and pinned
    replica.finish(touch, 3.0)
    hinted = SimRequest(3, "c", 4.0, 0.1)
    hinted.evict = "a"
    replica.arrive(hinted, 4.0)
    assert replica.evicted == ["a"]  # the hint wins over LRU ("b")
    assert replica.hint_evictions == 1
    pinned_hint = SimRequest(4, "d", 5.0, 0.1)
    pinned_hint.evict = "c"  # still loading: not evictable, so plain LRU
    replica.arrive(pinned_hint, 5.0)
    assert replica.evicted == ["a", "b"]


def test_all_pinned_waits_for_a_slot() -> None:
    replica = SimReplica(0, capacity=1, max_ongoing_requests=10)
    holder = SimRequest(0, "a", 0.0, 0.1)
    replica.arrive(holder, 0.0)
    waiter = SimRequest(1, "b", 0.0, 0.1)
    replica.arrive(waiter, 0.0)
    assert replica.loads_started == ["a"]
    replica.loaded("a", 1.0, 1.0)
    assert replica.started == [holder]
    replica.finish(holder, 1.1)
    assert replica.evicted == ["a"]
    assert replica.loads_started == ["a", "b"]


def test_one_load_at_a_time_takes_the_slots_at_once_and_starts_loads_in_turn() -> None:
    replica = SimReplica(0, capacity=3, max_ongoing_requests=10, max_concurrent_loads=1)
    requests = [SimRequest(i, model_id, 0.0, 0.1) for i, model_id in enumerate("zxy")]
    for request in requests:
        replica.arrive(request, 0.0)
    assert replica.loads_started == ["z"]
    assert replica.slots_taken == 3
    snapshot = replica.snapshot(0.0)
    assert snapshot.loading == ("z", "x", "y")  # all three reported as loading
    assert snapshot.max_concurrent_loads == 1
    replica.loaded("z", 1.0, 1.0)
    assert replica.loads_started == ["z", "x"]  # first come, first served
    assert replica.started == requests[:1]
    replica.loaded("x", 2.0, 1.0)
    assert replica.loads_started == ["z", "x", "y"]
    replica.loaded("y", 3.0, 1.0)
    assert replica.started == requests
    assert replica.loads == 3


def test_a_queued_load_evicts_its_victim_when_it_takes_the_slot() -> None:
    replica = SimReplica(0, capacity=2, max_ongoing_requests=10, max_concurrent_loads=1)
    old = SimRequest(0, "old", 0.0, 0.1)
    replica.arrive(old, 0.0)
    replica.loaded("old", 1.0, 1.0)
    replica.finish(old, 1.1)
    replica.arrive(SimRequest(1, "a", 2.0, 0.1), 2.0)
    replica.arrive(SimRequest(2, "b", 2.0, 0.1), 2.0)
    assert replica.evicted == ["old"]
    assert replica.loads_started == ["old", "a"]
    assert replica.snapshot(2.0).loading == ("a", "b")


def test_the_reported_limit_is_none_unless_below_the_capacity() -> None:
    def reported(capacity: int, limit: int | None) -> int | None:
        replica = SimReplica(
            0, capacity=capacity, max_ongoing_requests=1, max_concurrent_loads=limit
        )
        return replica.snapshot(0.0).max_concurrent_loads

    assert reported(3, None) is None
    assert reported(3, 2) == 2
    assert reported(3, 3) is None
    assert reported(3, 5) is None
