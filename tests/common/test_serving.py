import asyncio
import json
import os
import signal
import socket

import aiohttp
import pytest
from aiohttp import web

from common.serving import (
    Address,
    CannotListen,
    HttpLimits,
    listening,
    listening_on,
    until_signal,
)


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


def named(name: str) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=name)

    application = web.Application()
    application.router.add_get("/", answer)
    return application


async def test_servers_that_set_reuse_port_share_one_port_and_each_answers_on_its_own_too() -> None:
    first = listening_on(named("a"), [Address(host="127.0.0.1", port=0, reuse_port=True)])
    async with first as (shared,):
        second = listening_on(
            named("b"),
            [
                Address(host="127.0.0.1", port=shared, reuse_port=True),
                Address(host="127.0.0.1", port=0),
            ],
        )
        async with second as (joined, own), aiohttp.ClientSession() as session:
            assert joined == shared
            assert own not in (0, shared)
            async with session.get(f"http://127.0.0.1:{own}/") as r:
                assert await r.text() == "b"
            seen: set[str] = set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while seen != {"a", "b"}:  # each new connection goes to either server
                assert loop.time() < deadline, f"only {seen} answered on the shared port"
                headers = {"Connection": "close"}
                async with session.get(f"http://127.0.0.1:{shared}/", headers=headers) as r:
                    seen.add(await r.text())


async def test_a_port_taken_without_reuse_port_cannot_be_shared_and_nothing_stays_open() -> None:
    async with listening(app(), "127.0.0.1", 0) as taken:
        other = listening_on(
            app(),
            [
                Address(host="127.0.0.1", port=0),
                Address(host="127.0.0.1", port=taken, reuse_port=True),
            ],
        )
        with pytest.raises(CannotListen):
            async with other:
                pass


async def test_until_signal_returns_the_signal_after_announcing_it_is_armed() -> None:
    armed = asyncio.Event()
    waiter = asyncio.create_task(until_signal((signal.SIGUSR1,), armed=armed.set))
    await asyncio.wait_for(armed.wait(), 5)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert await asyncio.wait_for(waiter, 5) == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one answer with a Content-Length (the connection then closes)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, await asyncio.wait_for(reader.readexactly(length), 10)


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


def echo_app() -> web.Application:
    application = web.Application()
    application.router.add_route("*", "/", echo)
    return application


async def test_a_client_trickling_its_head_is_cut_off_while_others_are_served() -> None:
    limits = HttpLimits(header_timeout_s=1.0)
    async with listening(echo_app(), "127.0.0.1", 0, limits=limits) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def trickle() -> None:
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                if writer.is_closing():
                    return
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        async with aiohttp.ClientSession() as session:
            for n in range(20):  # a normal client meanwhile: all served
                async with session.post(f"http://127.0.0.1:{port}/", data=b"%d" % n) as r:
                    assert (r.status, await r.read()) == (200, b"%d" % n)
        status, body = await read_answer(reader)
        assert status == 408
        assert json.loads(body)["error"]["code"] == "header_timeout"
        assert await asyncio.wait_for(reader.read(), 10) == b""  # and closed
        assert loop.time() - started < 10  # cut at the deadline, not at the end of the trickle
        trickling.cancel()
        writer.close()


async def test_a_slow_body_is_not_a_slow_head() -> None:
    async with listening(
        echo_app(), "127.0.0.1", 0, limits=HttpLimits(header_timeout_s=0.3)
    ) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        for byte in b"hello":
            await asyncio.sleep(0.2)
            writer.write(bytes([byte]))
        assert await read_answer(reader) == (200, b"hello")
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")  # kept alive
        assert await read_answer(reader) == (200, b"ok")
        writer.close()


@pytest.mark.parametrize(
    ("head", "status", "code"),
    [
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(101)),
            431,
            "too_many_headers",
        ),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 9000 + b"\r\n", 431, "header_too_large"),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n", 414, "uri_too_long"),
        (b"NOT HTTP AT ALL\r\n", 400, "bad_request"),
    ],
    ids=["101-headers", "9-KiB-header", "20-KiB-url", "garbage"],
)
async def test_a_malformed_head_gets_a_json_error_and_the_server_serves_on(
    head: bytes, status: int, code: str
) -> None:
    async with listening(echo_app(), "127.0.0.1", 0) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + b"\r\n")
        answer_status, body = await read_answer(reader)
        assert (answer_status, json.loads(body)["error"]["code"]) == (status, code)
        writer.close()
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/", data=b"fine") as r,
        ):
            assert (r.status, await r.read()) == (200, b"fine")


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    limits = HttpLimits(keepalive_timeout_s=0.3)
    async with listening(echo_app(), "127.0.0.1", 0, limits=limits) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        assert await read_answer(reader) == (200, b"ok")
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        writer.close()
