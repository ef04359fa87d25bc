"""Property test: any interleaving of requests, releases, load successes and failures keeps
the cache's invariants — slots never over-committed, pinned models never evicted, never more
loader calls at once than `max_concurrent_loads`, and every evicted model cleaned up exactly
once."""

import asyncio
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replica import request_context
from replica._cache import ModelCache


class Tracked:
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.cleanups = 0

    def __del__(self) -> None:
        self.cleanups += 1


@dataclass
class World:
    loads: list[tuple[str, asyncio.Future[bool]]] = field(default_factory=list)
    created: list[Tracked] = field(default_factory=list)
    running: int = 0  # loader calls under way
    peak: int = 0

    async def load(self, model_id: str) -> Tracked:
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.loads.append((model_id, outcome))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if not await outcome:
                raise RuntimeError(f"load of {model_id} failed")
        finally:
            self.running -= 1
        model = Tracked(model_id)
        self.created.append(model)
        return model


@dataclass
class Request:
    model_id: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    model: Tracked | None = None
    task: asyncio.Task[None] | None = None


ops = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.integers(0, 7)),
        st.tuples(st.just("release"), st.integers(0, 50)),
        st.tuples(st.just("finish"), st.integers(0, 50), st.booleans()),
    ),
    max_size=60,
)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def check(cache: ModelCache[Tracked], capacity: int, world: World, live: list[Request]) -> None:
    assert len(cache) <= capacity
    limit = cache.max_concurrent_loads
    assert limit is None or world.peak <= limit, "more loads at once than max_concurrent_loads"
    assert world.running <= len(cache.state().loading)
    resident = {m.model_id for m in cache.state().models}
    for request in live:
        if request.model is not None and not request.done.is_set():
            assert request.model.model_id in resident, "a pinned model was evicted"
            assert request.model.cleanups == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(1, 4), max_loads=st.none() | st.integers(1, 3), operations=ops)
def test_random_interleavings_keep_the_invariants(
    capacity: int, max_loads: int | None, operations: list[tuple[object, ...]]
) -> None:
    async def scenario() -> None:
        world = World()
        cache = ModelCache(
            world.load, capacity=capacity, slot_timeout_s=3600, max_concurrent_loads=max_loads
        )
        live: list[Request] = []

        async def serve(request: Request) -> None:
            with request_context(request.model_id):
                try:
                    request.model = await cache.get(request.model_id)
                except RuntimeError:
                    return
                await request.done.wait()

        for op in operations:
            if op[0] == "request":
                request = Request(f"m{op[1]}")
                request.task = asyncio.create_task(serve(request))
                live.append(request)
            elif op[0] == "release" and live:
                live[int(str(op[1])) % len(live)].done.set()
            elif op[0] == "finish":
                pending = [(i, f) for i, f in world.loads if not f.done()]
                if pending:
                    _, outcome = pending[int(str(op[1])) % len(pending)]
                    outcome.set_result(bool(op[2]))
            await settle()
            check(cache, capacity, world, live)

        for request in live:  # drain: every request ends, every load completes
            request.done.set()
        for _ in range(1000):
            if all(r.task is None or r.task.done() for r in live):
                break
            for _, outcome in world.loads:
                if not outcome.done():
                    outcome.set_result(True)
            await settle()
            check(cache, capacity, world, live)
        else:
            raise AssertionError("requests still waiting after every release and load")
        await cache.shutdown()
        assert len(cache) == 0
        assert all(model.cleanups == 1 for model in world.created)

    asyncio.run(scenario())
