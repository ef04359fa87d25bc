"""`@multiplexed` and `get_multiplexed_model_id`: Ray's API, validation and cache ownership."""

import asyncio
from typing import Any

import pytest

from replica import get_multiplexed_model_id, multiplexed, request_context
from replica._runtime import runtime


def test_bare_decorator_on_a_function_uses_the_default_capacity() -> None:
    @multiplexed
    async def load(model_id: str) -> str:
        return model_id.upper()

    assert load.max_num_models_per_replica == 3
    assert asyncio.run(load("a")) == "A"
    assert asyncio.run(load("a")) == "A"
    assert load.cache_for().metrics.loads == 1


async def test_decorator_with_arguments_on_a_method() -> None:
    class Deployment:
        def __init__(self) -> None:
            self.loads: list[str] = []

        @multiplexed(max_num_models_per_replica=2)
        async def load_model(self, model_id: str) -> str:
            self.loads.append(model_id)
            return f"model:{model_id}"

    deployment = Deployment()
    for model_id in ("1", "2", "3", "2"):
        assert await deployment.load_model(model_id) == f"model:{model_id}"
    assert deployment.loads == ["1", "2", "3"]
    state = Deployment.load_model.cache_for(deployment).state()
    assert [m.model_id for m in state.models] == ["3", "2"]


async def test_each_instance_and_each_method_has_its_own_cache() -> None:
    class Deployment:
        @multiplexed(max_num_models_per_replica=1)
        async def load_a(self, model_id: str) -> str:
            return "a"

        @multiplexed(max_num_models_per_replica=1)
        async def load_b(self, model_id: str) -> str:
            return "b"

    one, two = Deployment(), Deployment()
    assert await one.load_a("m") == "a"
    assert await one.load_b("m") == "b"
    assert await two.load_a("n") == "a"
    caches = {
        id(Deployment.load_a.cache_for(one)),
        id(Deployment.load_b.cache_for(one)),
        id(Deployment.load_a.cache_for(two)),
    }
    assert len(caches) == 3
    assert [m.model_id for m in Deployment.load_a.cache_for(one).state().models] == ["m"]


def test_unlimited_capacity_is_accepted() -> None:
    @multiplexed(max_num_models_per_replica=-1)
    async def load(model_id: str) -> str:
        return model_id

    assert load.max_num_models_per_replica == -1


def sync_loader(model_id: str) -> str:
    return model_id


class NotAFunction:
    async def __call__(self, model_id: str) -> str:
        return model_id


async def no_params() -> None:
    pass


async def three_params(a: str, b: str, c: str) -> None:
    pass


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (42, "must be used with a function or method"),
        (sync_loader, "async functions or methods"),
        (NotAFunction, "async functions or methods"),
        (no_params, "at least one 'model_id: str' argument"),
        (three_params, "at least one 'model_id: str' argument"),
    ],
)
def test_invalid_loaders_are_type_errors(func: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        multiplexed(func)
    with pytest.raises(TypeError, match=message):
        multiplexed(max_num_models_per_replica=2)(func)


@pytest.mark.parametrize("capacity", ["3", 2.5, None, True])
def test_non_int_capacity_is_a_type_error(capacity: Any) -> None:
    with pytest.raises(TypeError, match="must be an integer"):
        multiplexed(max_num_models_per_replica=capacity)


@pytest.mark.parametrize("capacity", [0, -2, -100])
def test_impossible_capacity_is_a_value_error(capacity: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        multiplexed(max_num_models_per_replica=capacity)


async def test_loader_argument_rules() -> None:
    @multiplexed
    async def load(model_id: str) -> str:
        return model_id

    with pytest.raises(TypeError, match="must be a string"):
        await load(7)
    with pytest.raises(ValueError, match="must not be empty"):
        await load("")


async def test_get_multiplexed_model_id_follows_the_request() -> None:
    assert get_multiplexed_model_id() == ""

    async def serve(model_id: str) -> str:
        with request_context(model_id):
            await asyncio.sleep(0.001)
            return get_multiplexed_model_id()

    assert await asyncio.gather(*(serve(f"m{i}") for i in range(20))) == [
        f"m{i}" for i in range(20)
    ]
    assert get_multiplexed_model_id() == ""


async def test_the_replica_capacity_override_wins_over_the_decorator() -> None:
    runtime.capacity_override = 5

    @multiplexed(max_num_models_per_replica=2)
    async def load(model_id: str) -> str:
        return model_id

    assert load.cache_for().capacity == 5
    assert load.cache_for() in runtime.caches()


async def test_caches_take_the_replica_load_limit() -> None:
    @multiplexed(max_num_models_per_replica=2)
    async def unlimited(model_id: str) -> str:
        return model_id

    assert unlimited.cache_for().max_concurrent_loads is None
    runtime.max_concurrent_loads = 1

    @multiplexed(max_num_models_per_replica=2)
    async def serial(model_id: str) -> str:
        return model_id

    assert serial.cache_for().max_concurrent_loads == 1


async def test_ray_style_deployment_runs_unchanged() -> None:
    class MultiplexedDeployment:
        @multiplexed(max_num_models_per_replica=3)
        async def load_model(self, model_id: str) -> Any:
            return lambda request: f"{model_id}:{request}"

        async def __call__(self, request: str) -> str:
            model_id = get_multiplexed_model_id()
            model = await self.load_model(model_id)
            result: str = model(request)
            return result

    deployment = MultiplexedDeployment()
    with request_context("tenant-1"):
        assert await deployment("hello") == "tenant-1:hello"
