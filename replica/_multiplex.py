"""`@multiplexed`: Ray Serve's decorator for a model loader, with one cache per owner.

A decorated async function gets one cache; a decorated async method gets one cache per
instance and per method (Ray shares one cache among all methods of a class). Validation and
error types follow Ray's, so code written for `ray.serve.multiplexed` runs unchanged.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, overload

from replica._cache import UNLIMITED, ModelCache, check_model_id
from replica._runtime import runtime

__all__ = ["MultiplexedLoader", "multiplexed"]

M = TypeVar("M")
Loader = Callable[..., Awaitable[Any]]


def _check_capacity(max_num_models_per_replica: object) -> int:
    if isinstance(max_num_models_per_replica, bool) or not isinstance(
        max_num_models_per_replica, int
    ):
        raise TypeError("max_num_models_per_replica must be an integer.")
    if max_num_models_per_replica != UNLIMITED and max_num_models_per_replica <= 0:
        raise ValueError("max_num_models_per_replica must be positive.")
    return max_num_models_per_replica


def _check_loader(func: object) -> Loader:
    if not callable(func):
        raise TypeError("The `multiplexed` decorator must be used with a function or method.")
    if inspect.isclass(func) or not inspect.iscoroutinefunction(func):
        raise TypeError("@multiplexed can only be used to decorate async functions or methods.")
    parameters = inspect.signature(func).parameters
    if len(parameters) == 0 or len(parameters) > 2:
        raise TypeError(
            "@multiplexed can only be used to decorate functions or methods "
            "with at least one 'model_id: str' argument."
        )
    return func


class MultiplexedLoader(Generic[M]):
    """The decorated loader. Call it with a model id to get the (cached) model."""

    def __init__(self, func: Loader, max_num_models_per_replica: int) -> None:
        self._func = func
        self.max_num_models_per_replica = max_num_models_per_replica
        self._is_method = len(inspect.signature(func).parameters) == 2
        self._cache: ModelCache[M] | None = None
        self._per_instance: weakref.WeakKeyDictionary[object, ModelCache[M]] = (
            weakref.WeakKeyDictionary()
        )
        functools.update_wrapper(self, func)

    def _new_cache(self, loader: Callable[[str], Awaitable[M]]) -> ModelCache[M]:
        capacity = runtime.capacity_override or self.max_num_models_per_replica
        cache = ModelCache(
            loader,
            capacity=capacity,
            slot_timeout_s=runtime.slot_timeout_s,
            max_concurrent_loads=runtime.max_concurrent_loads,
            name=self._func.__qualname__,
        )
        runtime.register(cache)
        return cache

    def cache_for(self, instance: object | None = None) -> ModelCache[M]:
        """The cache that serves `instance` (or the function, for a plain function)."""
        if instance is None:
            if self._cache is None:
                self._cache = self._new_cache(self._func)
            return self._cache
        cache = self._per_instance.get(instance)
        if cache is None:
            cache = self._new_cache(functools.partial(self._func, instance))
            self._per_instance[instance] = cache
        return cache

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> MultiplexedLoader[M]: ...
    @overload
    def __get__(
        self, instance: object, owner: type | None = None
    ) -> Callable[[str], Awaitable[M]]: ...
    def __get__(
        self, instance: object | None, owner: type | None = None
    ) -> MultiplexedLoader[M] | Callable[[str], Awaitable[M]]:
        if instance is None or not self._is_method:
            return self
        return functools.partial(self._call, instance)

    async def __call__(self, *args: object) -> M:
        if self._is_method:
            if len(args) != 2:
                raise TypeError("a multiplexed method takes exactly one argument: the model id")
            return await self._call(args[0], args[1])
        if len(args) != 1:
            raise TypeError("a multiplexed function takes exactly one argument: the model id")
        return await self._call(None, args[0])

    async def _call(self, instance: object | None, model_id: object) -> M:
        return await self.cache_for(instance).get(check_model_id(model_id))


@overload
def multiplexed(func: Loader, *, max_num_models_per_replica: int = 3) -> MultiplexedLoader[Any]: ...
@overload
def multiplexed(
    func: None = None, *, max_num_models_per_replica: int = 3
) -> Callable[[Loader], MultiplexedLoader[Any]]: ...
def multiplexed(
    func: Loader | None = None, *, max_num_models_per_replica: int = 3
) -> MultiplexedLoader[Any] | Callable[[Loader], MultiplexedLoader[Any]]:
    """Wrap an async model loader in a per-replica LRU cache of at most N models.

    Usable bare (`@multiplexed`) or with arguments
    (`@multiplexed(max_num_models_per_replica=5)`), on an async function or method taking the
    model id. `-1` means no limit. The replica's config may override the capacity.
    """
    capacity = _check_capacity(max_num_models_per_replica)
    if func is not None:
        return MultiplexedLoader(_check_loader(func), capacity)

    def decorate(f: Loader) -> MultiplexedLoader[Any]:
        return MultiplexedLoader(_check_loader(f), capacity)

    return decorate
