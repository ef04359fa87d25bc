import asyncio
import os
import signal
import socket

import aiohttp
import pytest
from aiohttp import web

from common.serving import CannotListen, listening, until_signal


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


def app() -> web.Application:
    application = web.Application()
    application.router.add_get("/", hello)
    return application


async def test_listening_yields_the_bound_port_and_stops_serving_after_the_block() -> None:
    async with listening(app(), "127.0.0.1", 0) as port:
        assert port > 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/") as r,
        ):
            assert await r.text() == "hello"
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=2),
    ):
        pass


async def test_a_port_in_use_is_cannot_listen() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CannotListen):
            async with listening(app(), "127.0.0.1", port):
                pass


async def test_until_signal_returns_the_signal_after_announcing_it_is_armed() -> None:
    armed = asyncio.Event()
    waiter = asyncio.create_task(until_signal((signal.SIGUSR1,), armed=armed.set))
    await asyncio.wait_for(armed.wait(), 5)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert await asyncio.wait_for(waiter, 5) == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
