"""The one way tests wait for state: poll a condition until it holds, or fail at a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["DEADLINE_S", "until"]

DEADLINE_S = 5.0
"""Generous: a liveness bound, never a speed claim."""


async def until(
    condition: Callable[[], object], what: str = "the condition", timeout_s: float = DEADLINE_S
) -> None:
    """Return once `condition()` is truthy; AssertionError naming `what` after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.002)
