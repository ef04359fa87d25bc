"""The event loop both servers run on: uvloop where it is installed, asyncio's otherwise."""

from __future__ import annotations

import asyncio

__all__ = ["event_loop_runner"]


def event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every POSIX platform
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)
