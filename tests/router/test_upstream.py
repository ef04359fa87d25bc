"""The router's pooled HTTP/1.1 client against real servers on loopback ports.

Well-behaved answers come from an aiohttp application (as a replica gives them); answers aiohttp
would never give (garbage, a connection dropped halfway) come from a hand-written asyncio server.
The last tests cover `request_head` and `response_headers`, the header rules of forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from common.headers import REPLICA_HEADER
from router._http import request_head, response_headers
from router._upstream import ConnectFailed, Exchange, UpstreamBroken, UpstreamPool, UpstreamResponse

from polling import until

HOST = "127.0.0.1"
DEADLINE_S = 5.0
LARGE = random.Random(0).randbytes(5 * 1024 * 1024)  # well over the client's 1 MiB high water
PARTIAL = random.Random(1).randbytes(512 * 1024)

pytestmark = pytest.mark.timeout(4 * DEADLINE_S)  # a regression fails fast instead of hanging

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def head(method: str, path: str, port: int, body: object = None) -> bytes:
    return request_head(method, path, CIMultiDict(), body, f"{HOST}:{port}")


async def wait_for(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), DEADLINE_S)


async def fetch(pool: UpstreamPool, port: int, path: str) -> bytes:
    """One GET read to the end and released, as the router does it."""
    response = await pool.request(HOST, port, head("GET", path, port), None)
    try:
        return await response.read()
    finally:
        response.release()


def body_of(response: UpstreamResponse) -> contextlib.aclosing[AsyncGenerator[bytes, None]]:
    """The answer's body as it arrives, closed on leaving the block even if read in part."""
    return contextlib.aclosing(cast(AsyncGenerator[bytes, None], response.iter_chunks()))


class Replica:
    """An aiohttp application that records which connection carried each request."""

    def __init__(self) -> None:
        self.port = 0
        self.transports: list[object] = []
        self.uploads: list[tuple[CIMultiDict[str], bytes]] = []
        self.first_chunk_seen = asyncio.Event()
        self.last_chunk_written = False
        self.app = web.Application(middlewares=[self._record], client_max_size=16 * 1024 * 1024)
        self.app.router.add_get("/hello", self._hello)
        self.app.router.add_get("/close", self._close)
        self.app.router.add_get("/empty", self._empty)
        self.app.router.add_get("/stream", self._stream)
        self.app.router.add_get("/large", self._large)
        self.app.router.add_get("/partial", self._partial)
        self.app.router.add_post("/upload", self._upload)

    @property
    def connections(self) -> int:
        return len(self.transports)

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        transport = request.transport
        if not any(seen is transport for seen in self.transports):
            self.transports.append(transport)
        return await handler(request)

    async def _hello(self, request: web.Request) -> web.Response:
        return web.Response(body=b"hello")

    async def _close(self, request: web.Request) -> web.Response:
        response = web.Response(body=b"bye")
        response.force_close()
        return response

    async def _empty(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        await wait_for(self.first_chunk_seen)
        self.last_chunk_written = True
        await response.write(b"last")
        await response.write_eof()
        return response

    async def _large(self, request: web.Request) -> web.Response:
        return web.Response(body=LARGE)

    async def _partial(self, request: web.Request) -> web.Response:
        return web.Response(body=PARTIAL)

    async def _upload(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.uploads.append((request.headers.copy(), body))
        return web.Response(body=b"stored")


class RawReplica:
    """A hand-written peer for answers aiohttp never gives; `handler` gets the connection's
    number (from 1) and owns the conversation; the connection is closed when it returns."""

    def __init__(self, handler: RawHandler) -> None:
        self.port = 0
        self.accepted = 0
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        self.accepted += 1
        try:
            await self._handler(reader, writer, self.accepted)
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def close(self) -> None:
        """Close every connection and let each handler run to its end."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self._tasks), DEADLINE_S)
        await self._server.wait_closed()


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool()
    yield pool
    pool.close()


@pytest.fixture
async def replica() -> AsyncIterator[Replica]:
    replica = Replica()
    server = TestServer(replica.app, host=HOST)
    await server.start_server()
    assert server.port is not None
    replica.port = server.port
    yield replica
    await server.close()


@pytest.fixture
async def raw_replica() -> AsyncIterator[Callable[[RawHandler], Awaitable[RawReplica]]]:
    started: list[RawReplica] = []

    async def start(handler: RawHandler) -> RawReplica:
        raw = RawReplica(handler)
        await raw.start()
        started.append(raw)
        return raw

    yield start
    for raw in started:
        await raw.close()


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(OK_ANSWER)
    await writer.drain()
    await reader.read()  # keep the connection until the client closes it


# -- connection reuse --------------------------------------------------------------------------


async def test_a_keep_alive_connection_carries_sequential_requests(
    pool: UpstreamPool, replica: Replica
) -> None:
    for _ in range(3):
        assert await fetch(pool, replica.port, "/hello") == b"hello"
    assert replica.connections == 1


async def test_a_connection_close_answer_is_not_reused(
    pool: UpstreamPool, replica: Replica
) -> None:
    assert await fetch(pool, replica.port, "/close") == b"bye"
    assert await fetch(pool, replica.port, "/close") == b"bye"
    assert replica.connections == 2


async def test_a_head_answer_has_no_body_and_is_not_reused(
    pool: UpstreamPool, replica: Replica
) -> None:
    response = await pool.request(HOST, replica.port, head("HEAD", "/hello", replica.port), None)
    try:
        assert response.status == 200
        assert (b"Content-Length", b"5") in response.headers
        assert await response.read() == b""
    finally:
        response.release()
    assert await fetch(pool, replica.port, "/hello") == b"hello"
    assert replica.connections == 2


async def test_a_204_answer_has_no_body(pool: UpstreamPool, replica: Replica) -> None:
    response = await pool.request(HOST, replica.port, head("GET", "/empty", replica.port), None)
    try:
        assert response.status == 204
        assert response.content_length == 0
        assert not response.chunked
        assert await response.read() == b""
    finally:
        response.release()
    assert await fetch(pool, replica.port, "/hello") == b"hello"


@pytest.mark.parametrize(
    ("path", "chunks_read"),
    [("/hello", 0), ("/partial", 1)],
    ids=["small-and-unread", "large-and-partly-read"],
)
async def test_an_answer_released_before_its_end_closes_the_connection(
    pool: UpstreamPool, replica: Replica, path: str, chunks_read: int
) -> None:
    response = await pool.request(HOST, replica.port, head("GET", path, replica.port), None)
    try:
        async with body_of(response) as chunks:
            read = [await anext(chunks) for _ in range(chunks_read)]
        assert len(b"".join(read)) < (response.content_length or 0)
    finally:
        response.release()
    assert await fetch(pool, replica.port, "/hello") == b"hello"
    assert replica.connections == 2


async def test_a_request_cancelled_while_waiting_for_headers_closes_the_connection(
    pool: UpstreamPool, raw_replica: Callable[[RawHandler], Awaitable[RawReplica]]
) -> None:
    request_arrived = asyncio.Event()
    client_closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n > 1:
            await answer_ok(reader, writer)
            return
        await reader.readuntil(b"\r\n\r\n")
        request_arrived.set()
        assert await reader.read() == b""  # never answers; returns once the client closes
        client_closed.set()

    raw = await raw_replica(handler)
    waiting = asyncio.create_task(pool.request(HOST, raw.port, head("GET", "/", raw.port), None))
    await wait_for(request_arrived)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await wait_for(client_closed)
    assert await fetch(pool, raw.port, "/") == b"ok"
    assert raw.accepted == 2


async def test_a_pooled_connection_the_replica_closed_while_idle_is_not_reused(
    pool: UpstreamPool, raw_replica: Callable[[RawHandler], Awaitable[RawReplica]]
) -> None:
    released = asyncio.Event()
    client_closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n > 1:
            await answer_ok(reader, writer)
            return
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK_ANSWER)
        await writer.drain()
        await wait_for(released)  # the connection now sits idle in the pool
        writer.write_eof()
        assert await reader.read() == b""  # the client closes its side on our EOF
        client_closed.set()

    raw = await raw_replica(handler)
    assert await fetch(pool, raw.port, "/") == b"ok"
    released.set()
    await wait_for(client_closed)
    assert await fetch(pool, raw.port, "/") == b"ok"
    assert raw.accepted == 2


# -- answer bodies -----------------------------------------------------------------------------


async def test_a_streamed_answer_arrives_chunk_by_chunk(
    pool: UpstreamPool, replica: Replica
) -> None:
    response = await pool.request(HOST, replica.port, head("GET", "/stream", replica.port), None)
    try:
        assert response.status == 200
        assert response.chunked
        assert response.content_length is None
        async with body_of(response) as chunks:
            assert await anext(chunks) == b"first"
            assert not replica.last_chunk_written
            replica.first_chunk_seen.set()
            assert b"".join([chunk async for chunk in chunks]) == b"last"
    finally:
        response.release()
    assert await fetch(pool, replica.port, "/hello") == b"hello"
    assert replica.connections == 1


async def test_a_large_answer_arrives_intact_under_flow_control(
    pool: UpstreamPool, replica: Replica
) -> None:
    response = await pool.request(HOST, replica.port, head("GET", "/large", replica.port), None)
    try:
        assert response.content_length == len(LARGE)
        transport = response._connection.transport  # whether it reads shows flow control
        assert transport is not None
        async with body_of(response) as chunks:
            parts = [await anext(chunks)]
            await until(lambda: not transport.is_reading(), "the client stops reading")
            parts.extend([chunk async for chunk in chunks])
        assert transport.is_reading()
        assert b"".join(parts) == LARGE
    finally:
        response.release()
    assert await fetch(pool, replica.port, "/hello") == b"hello"
    assert replica.connections == 1


# -- request bodies ----------------------------------------------------------------------------


async def test_a_streamed_request_body_arrives_chunked_and_intact(
    pool: UpstreamPool, replica: Replica
) -> None:
    pieces = [random.Random(i).randbytes(64 * 1024 + i) for i in range(40)]

    async def body() -> AsyncIterator[bytes]:
        for i, piece in enumerate(pieces):
            yield piece
            if i == 3:
                yield b""  # an empty piece must not end the chunked body early
            await asyncio.sleep(0)

    stream = body()
    response = await pool.request(
        HOST, replica.port, head("POST", "/upload", replica.port, stream), stream
    )
    try:
        assert response.status == 200
        assert await response.read() == b"stored"
    finally:
        response.release()
    [(headers, received)] = replica.uploads
    assert headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in headers
    assert received == b"".join(pieces)


async def test_a_bytes_request_body_arrives_with_its_content_length(
    pool: UpstreamPool, replica: Replica
) -> None:
    body = random.Random(2).randbytes(300 * 1024)
    response = await pool.request(
        HOST, replica.port, head("POST", "/upload", replica.port, body), body
    )
    try:
        assert response.status == 200
        assert await response.read() == b"stored"
    finally:
        response.release()
    [(headers, received)] = replica.uploads
    assert headers["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in headers
    assert received == body


# -- failures ----------------------------------------------------------------------------------


async def test_nothing_listening_is_connect_failed(pool: UpstreamPool) -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectFailed):
        await pool.request(HOST, port, head("GET", "/", port), None)


async def test_a_replica_closing_before_answering_is_broken(
    pool: UpstreamPool, raw_replica: Callable[[RawHandler], Awaitable[RawReplica]]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")

    raw = await raw_replica(handler)
    with pytest.raises(UpstreamBroken):
        await pool.request(HOST, raw.port, head("GET", "/", raw.port), None)


@pytest.mark.parametrize(
    ("answer", "rest", "received"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10, b"", b"x" * 10),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", b"", b"hello"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"zz\r\n",
            b"hello",
        ),
    ],
    ids=["closed-in-sized-body", "closed-in-chunked-body", "bad-chunk-size"],
)
async def test_an_answer_broken_mid_body_is_broken_for_the_reader(
    pool: UpstreamPool,
    raw_replica: Callable[[RawHandler], Awaitable[RawReplica]],
    answer: bytes,
    rest: bytes,
    received: bytes,
) -> None:
    first_part_read = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await wait_for(first_part_read)
        writer.write(rest)
        await writer.drain()

    raw = await raw_replica(handler)
    response = await pool.request(HOST, raw.port, head("GET", "/", raw.port), None)
    try:
        assert response.status == 200
        async with body_of(response) as chunks:
            assert await anext(chunks) == received
            first_part_read.set()
            with pytest.raises(UpstreamBroken):
                await anext(chunks)
    finally:
        response.release()


async def test_garbage_instead_of_an_answer_is_broken(
    pool: UpstreamPool, raw_replica: Callable[[RawHandler], Awaitable[RawReplica]]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"\x00\x01 this is not HTTP\r\n\r\n")
        await writer.drain()
        await reader.read()

    raw = await raw_replica(handler)
    with pytest.raises(UpstreamBroken, match="malformed"):
        await pool.request(HOST, raw.port, head("GET", "/", raw.port), None)


# -- known bugs --------------------------------------------------------------------------------


async def test_an_interim_answer_is_skipped(
    pool: UpstreamPool, raw_replica: Callable[[RawHandler], Awaitable[RawReplica]]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK_ANSWER)
        await writer.drain()
        await reader.read()

    raw = await raw_replica(handler)
    response = await pool.request(HOST, raw.port, head("GET", "/", raw.port), None)
    try:
        assert (response.status, response.content_length) == (200, 2)
        assert response.headers == [(b"Content-Length", b"2")]
        assert await response.read() == b"ok"
    finally:
        response.release()


async def test_a_connection_walks_the_exchange_states_and_garbage_after_an_answer_keeps_it(
    pool: UpstreamPool, raw_replica: Callable[[RawHandler], Awaitable[RawReplica]]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"!!" + b"not http at all\r\n\r\n")
        await writer.drain()
        await reader.read()

    raw = await raw_replica(handler)
    response = await pool.request(HOST, raw.port, head("GET", "/", raw.port), None)
    connection = response._connection
    try:
        assert connection.exchange is Exchange.RECEIVING
        assert await response.read() == b"ok!!"
        assert connection.exchange is Exchange.COMPLETE
        await until(lambda: connection.closed, "the garbage to close the connection")
        assert connection.exchange is Exchange.COMPLETE  # the answer stays whole
    finally:
        response.release()
    assert connection.exchange is Exchange.IDLE


async def test_an_answer_framed_by_close_is_complete(
    pool: UpstreamPool, raw_replica: Callable[[RawHandler], Awaitable[RawReplica]]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    raw = await raw_replica(handler)
    response = await pool.request(HOST, raw.port, head("GET", "/", raw.port), None)
    try:
        assert await response.read() == b"until the end"
    finally:
        response.release()


async def test_an_early_answer_to_a_streamed_body_is_returned(
    pool: UpstreamPool, raw_replica: Callable[[RawHandler], Awaitable[RawReplica]]
) -> None:
    answered = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\n")
        writer.write(b"Content-Length: 8\r\n\r\ntoo long")
        writer.write_eof()  # a lingering close: no reset, the client reads the whole answer
        await writer.drain()
        answered.set()
        while await reader.read(65536):
            pass

    async def body() -> AsyncGenerator[bytes, None]:
        yield b"a first piece"
        await wait_for(answered)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while loop.time() < deadline:  # a slow upload that goes on
            yield b"more"
            await asyncio.sleep(0.001)

    raw = await raw_replica(handler)
    stream = body()
    try:
        response = await pool.request(HOST, raw.port, head("POST", "/", raw.port, stream), stream)
    finally:
        await stream.aclose()
    try:
        assert response.status == 413
        assert await response.read() == b"too long"
    finally:
        response.release()


# -- request_head and response_headers ---------------------------------------------------------


def test_request_head_without_a_body_has_no_framing_headers() -> None:
    headers = CIMultiDict([("Accept", "*/*"), ("X-Tag", "a"), ("X-Tag", "b")])
    assert request_head("GET", "/v1/models?x=1", headers, None, "10.0.0.1:8000") == (
        b"GET /v1/models?x=1 HTTP/1.1\r\n"
        b"Accept: */*\r\nX-Tag: a\r\nX-Tag: b\r\n"
        b"Host: 10.0.0.1:8000\r\n\r\n"
    )


def test_request_head_keeps_the_clients_host() -> None:
    headers = CIMultiDict([("host", "api.example.com")])
    assert request_head("GET", "/", headers, None, "10.0.0.1:8000") == (
        b"GET / HTTP/1.1\r\nhost: api.example.com\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("body", "framing"),
    [(b"hello", b"Content-Length: 5"), (b"", b"Content-Length: 0")],
)
def test_request_head_gives_a_bytes_body_its_content_length(body: bytes, framing: bytes) -> None:
    assert request_head("POST", "/p", CIMultiDict(), body, "r:1") == (
        b"POST /p HTTP/1.1\r\nHost: r:1\r\n" + framing + b"\r\n\r\n"
    )


def test_request_head_sends_a_stream_chunked() -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield b"x"

    body = stream()
    assert request_head("POST", "/p", CIMultiDict(), body, "r:1") == (
        b"POST /p HTTP/1.1\r\nHost: r:1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def test_response_headers_drop_hop_by_hop_and_framing_headers() -> None:
    upstream = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"12"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive, X-Internal"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-Checksum"),
        (b"Upgrade", b"h2c"),
        (b"x-internal", b"secret"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    headers = response_headers(upstream, "replica-3")
    assert list(headers.items()) == [
        ("Content-Type", "application/json"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        (REPLICA_HEADER, "replica-3"),
    ]


def test_response_headers_name_the_replica_even_if_it_named_itself() -> None:
    headers = response_headers([(REPLICA_HEADER.encode(), b"forged")], "replica-1")
    assert headers.getall(REPLICA_HEADER) == ["replica-1"]


def test_response_headers_drop_fields_named_by_every_connection_line() -> None:
    upstream = [
        (b"Connection", b"X-First"),
        (b"Connection", b"X-Second"),
        (b"X-First", b"1"),
        (b"X-Second", b"2"),
    ]
    assert list(response_headers(upstream, "r").items()) == [(REPLICA_HEADER, "r")]
