"""Replica-wide settings and the registry of multiplexed caches.

The replica server sets the overrides from the cluster config before it builds the user's
deployment, and reads every cache created afterwards to report state and to shut down.
Outside a replica server (a unit test, a notebook) nothing is overridden.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from replica._cache import CacheEvent, ModelCache

__all__ = ["ReplicaRuntime", "runtime"]


class ReplicaRuntime:
    def __init__(self) -> None:
        self.capacity_override: int | None = None
        self.slot_timeout_s: float = 300.0
        self.max_concurrent_loads: int | None = None  # per cache; None: as many as its slots
        self._caches: weakref.WeakSet[ModelCache[Any]] = weakref.WeakSet()
        self._listeners: list[Callable[[CacheEvent], None]] = []

    def register(self, cache: ModelCache[Any]) -> None:
        self._caches.add(cache)
        for listener in self._listeners:
            cache.add_listener(listener)

    def caches(self) -> list[ModelCache[Any]]:
        return list(self._caches)

    def caches_for(self, model_id: str, *, name: str = "") -> list[ModelCache[Any]]:
        """The caches a load of `model_id` with no request for it (a prefetch) goes to: those
        whose loader is `name` when one is given; else those holding the model (resident or
        loading), whose it is; else every cache, as a request using every loader would."""
        caches = self.caches()
        if name:
            return [cache for cache in caches if cache.name == name]
        return [cache for cache in caches if cache.holds(model_id)] or caches

    def add_listener(self, listener: Callable[[CacheEvent], None]) -> None:
        """Listen to every cache, present and future."""
        self._listeners.append(listener)
        for cache in self._caches:
            cache.add_listener(listener)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


runtime = ReplicaRuntime()
