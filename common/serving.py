"""Serving an aiohttp app: listen on a port, and wait for the signal that ends a process.

The router, the replica and the launcher's control port all listen the same way: no access log
(the servers keep their own), signals left to the caller, the bound port handed back so a port of
0 works, and the runner cleaned up however the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Sequence

from aiohttp import web

__all__ = ["STOP_SIGNALS", "CannotListen", "listening", "until_signal"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class CannotListen(OSError):
    """The address could not be bound (in use, not local, no permission)."""


@contextlib.asynccontextmanager
async def listening(
    app: web.Application,
    host: str,
    port: int,
    *,
    backlog: int = 128,
    shutdown_timeout_s: float = 60.0,
) -> AsyncIterator[int]:
    """Serve `app` on `host:port` for the block; yields the bound port.

    CannotListen if the address cannot be bound; an OSError raised inside the block passes as is.
    """
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout_s
    )
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port, backlog=backlog).start()
        except OSError as error:
            raise CannotListen(error.errno, error.strerror or str(error)) from error
        bound = runner.addresses[0][1] if runner.addresses else port
        yield int(bound)
    finally:
        await runner.cleanup()


async def until_signal(
    signals: Sequence[signal.Signals] = STOP_SIGNALS, *, armed: Callable[[], None] | None = None
) -> signal.Signals:
    """Wait until one of `signals` arrives; return it. The handlers are removed afterwards.

    `armed` runs once the handlers are in place: announce readiness there, so a supervisor that
    signals as soon as it reads the announcement never meets the default (killing) handler.
    """
    loop = asyncio.get_running_loop()
    arrived: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(signum: signal.Signals) -> None:
        if not arrived.done():
            arrived.set_result(signum)

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        if armed is not None:
            armed()
        return await arrived
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
