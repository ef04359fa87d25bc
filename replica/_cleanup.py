"""Run an evicted model's `__del__` exactly once, eagerly, without blocking the event loop.

Ray Serve calls `model.__del__()` on eviction and then sets an instance attribute to stop a
second call; but the garbage collector looks `__del__` up on the type, so it runs again when
the object is collected (and an async `__del__` then leaks an un-awaited coroutine). Here the
object is first moved to a subclass whose `__del__` does nothing, then the original runs: a
sync one in the default executor, an async one awaited.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

__all__ = ["run_cleanup"]

logger = logging.getLogger("modelplex.replica")

_disarmed: dict[type, type] = {}


def _noop_del(self: object) -> None:
    pass


def _disarmed_class(cls: type) -> type:
    sub = _disarmed.get(cls)
    if sub is None:
        # Empty __slots__ keeps the memory layout, which __class__ assignment requires.
        namespace: dict[str, Any] = {
            "__del__": _noop_del,
            "__module__": cls.__module__,
            "__slots__": (),
        }
        sub = type(cls.__name__, (cls,), namespace)
        sub.__qualname__ = cls.__qualname__
        _disarmed[cls] = sub
    return sub


def _disarm(model: object) -> bool:
    """Stop the garbage collector from calling `__del__` again; False when impossible."""
    try:
        model.__class__ = _disarmed_class(type(model))
    except TypeError:
        return False
    return True


async def run_cleanup(model: object) -> None:
    """Call `type(model).__del__` once, if the model defines one. Its exceptions propagate."""
    finalizer = getattr(type(model), "__del__", None)
    if finalizer is None or finalizer is _noop_del:
        return
    if not _disarm(model):
        logger.warning(
            "cannot guard %s.__del__ against a second call by the garbage collector",
            type(model).__qualname__,
        )
    if inspect.iscoroutinefunction(finalizer):
        await finalizer(model)
    else:
        await asyncio.get_running_loop().run_in_executor(None, finalizer, model)
