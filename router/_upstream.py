"""The router's HTTP/1.1 client to replicas: pooled keep-alive connections, streamed bodies.

A general-purpose client does far more per request than a proxy needs (cookie jars, redirects,
URL objects, header normalisation); on the request path that cost is most of the router's CPU.
This one writes the request line and headers it is given, parses the answer with httptools
(llhttp, the parser Node.js uses) and hands back the status, the raw headers and the body as
it arrives.

Rules it keeps:
- a connection carries one request at a time, through the states of `Exchange`: IDLE →
  AWAITING_HEAD (the request is going out; interim 1xx answers are skipped) → RECEIVING (the
  final head is in, the body arrives) → COMPLETE, or FAILED from either of the middle two;
  `finish` returns it to IDLE;
- it goes back to the pool only after its answer was read to the end (COMPLETE) with keep-alive
  allowed; anything else (an error, a cancelled request, a HEAD answer, `Connection: close`, a
  request body cut short) closes it;
- `ConnectFailed` means nothing reached the replica (safe to send elsewhere), a failed TLS
  handshake included; `UpstreamBroken` means the connection failed once the request was on its
  way;
- with an `ssl_context`, every connection is TLS, its certificate checked for the replica's host.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import cast

import httptools

__all__ = ["ConnectFailed", "Exchange", "UpstreamBroken", "UpstreamPool", "UpstreamResponse"]

_HIGH_WATER = 1 << 20  # bytes of answer buffered before the replica is told to wait
_EOF = b""


class Exchange(enum.Enum):
    """Where a connection is in its current request/answer exchange."""

    IDLE = "idle"  # no request: fresh, or back in the pool
    AWAITING_HEAD = "awaiting_head"  # the request is on its way; no final head yet
    RECEIVING = "receiving"  # the final head is in; the body arrives
    COMPLETE = "complete"  # the answer ended (its last chunks may still be unread)
    FAILED = "failed"  # the connection broke or sent garbage before the answer ended


_IN_EXCHANGE = (Exchange.AWAITING_HEAD, Exchange.RECEIVING)


class ConnectFailed(OSError):
    """No connection to the replica could be made."""


class UpstreamBroken(ConnectionError):
    """The replica closed or broke the connection during the request."""


class UpstreamResponse:
    """An answer being received: status and headers now, the body as it arrives."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.chunked = False
        self._released = False

    async def read(self) -> bytes:
        """The whole body (for answers known to be small)."""
        parts = [chunk async for chunk in self.iter_chunks()]
        return b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._connection.next_chunk()
            if chunk is _EOF:
                return
            yield chunk

    def release(self) -> None:
        """Give the connection back (if the answer was read to the end) or close it. Once."""
        if not self._released:
            self._released = True
            self._connection.finish()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; also the httptools parser's callback target."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self._pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: UpstreamResponse | None = None
        self._headers_ready: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self.exchange = Exchange.IDLE
        self._error: Exception | None = None  # why the exchange FAILED
        self._bodiless = False  # a HEAD request: the answer's head is all there is
        self._reusable = False  # the answer allows another request on this connection
        self._reading_paused = False  # flow control: too much body buffered, unread
        self.closed = False  # the transport is closed or closing

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroken(f"malformed answer from the replica: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self._response
        if (
            exc is None
            and self.exchange is Exchange.RECEIVING
            and response is not None
            and response.content_length is None
            and not response.chunked
        ):
            self.exchange = Exchange.COMPLETE  # an answer delimited by the end of the connection
            self._wake_data()
        reason = f": {exc}" if exc else ""
        self._fail(UpstreamBroken(f"the replica closed the connection{reason}"))
        self._wake_drain()

    def pause_writing(self) -> None:
        if self._drain_waiter is None:
            self._drain_waiter = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_drain()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._response is not None
        self._response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            response.headers.clear()  # an interim answer (RFC 9110 §15.2): the final one follows
            return
        response.status = status
        self._reusable = self._parser.should_keep_alive()  # only valid until the message ends
        self.exchange = Exchange.RECEIVING
        for name, value in response.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                response.content_length = int(value)
            elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                response.chunked = True
        if self._bodiless or response.status in (204, 304, 101):
            response.content_length = 0
            self.exchange = Exchange.COMPLETE  # no body follows; the parser cannot know for HEAD
            self._reusable = False  # the parser may still expect a body
        if self._headers_ready is not None and not self._headers_ready.done():
            self._headers_ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake_data()

    def on_message_complete(self) -> None:
        if self.exchange is Exchange.RECEIVING:  # else an interim answer ended
            self.exchange = Exchange.COMPLETE
            self._wake_data()

    # -- the request -----------------------------------------------------------------------

    async def send(
        self, head: bytes, body: bytes | AsyncIterable[bytes] | None
    ) -> UpstreamResponse:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._response = UpstreamResponse(self)
        self._headers_ready = loop.create_future()
        self.exchange = Exchange.AWAITING_HEAD
        self._bodiless = head.startswith(b"HEAD ")
        transport = self.transport
        if body is None or isinstance(body, bytes):
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            ready = self._headers_ready
            async for chunk in body:
                if ready.done():  # the replica answered early (e.g. 413): stop sending
                    self._reusable = False  # the replica would read the rest as a request
                    break
                if chunk:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    await self._drain()
            else:
                transport.write(b"0\r\n\r\n")
        await self._headers_ready
        if self.exchange is Exchange.FAILED and self._error is not None:
            raise self._error
        return self._response

    async def _drain(self) -> None:
        if self.closed and self.exchange is Exchange.AWAITING_HEAD:
            raise self._error or UpstreamBroken("the replica closed the connection")
        if self._drain_waiter is not None and not self.closed:
            await self._drain_waiter

    async def next_chunk(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered <= _HIGH_WATER // 2:
                    self._reading_paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                return chunk
            if self.exchange is Exchange.COMPLETE:
                return _EOF
            if self.exchange is Exchange.FAILED and self._error is not None:
                raise self._error
            self._data_waiter = asyncio.get_running_loop().create_future()
            await self._data_waiter

    def finish(self) -> None:
        reusable = (
            self.exchange is Exchange.COMPLETE
            and self._reusable
            and not self._chunks
            and not self.closed
        )
        self._response = None
        self._headers_ready = None
        self.exchange = Exchange.IDLE
        self._reusable = False
        self._error = None
        if reusable:
            self._parser = httptools.HttpResponseParser(self)
            self._pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: Exception) -> None:
        """End the exchange in progress with `error`; a complete answer stays complete."""
        if self.exchange not in _IN_EXCHANGE:
            return
        self.exchange = Exchange.FAILED
        self._error = error
        if self._headers_ready is not None and not self._headers_ready.done():
            self._headers_ready.set_exception(error)
            self._headers_ready.exception()  # retrieved by `send` or deliberately dropped
        self._wake_data()

    def _wake_data(self) -> None:
        waiter, self._data_waiter = self._data_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class UpstreamPool:
    """Idle keep-alive connections per replica address."""

    def __init__(
        self, *, max_idle_per_replica: int = 256, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """`ssl_context`: connect with TLS (`common.tls.client_context`); None: plain TCP."""
        self.max_idle_per_replica = max_idle_per_replica
        self._ssl = ssl_context
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._closed = False

    def put(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.key, [])
        if not self._closed and len(idle) < self.max_idle_per_replica:
            idle.append(connection)
        else:
            connection.close()

    async def _connection(self, host: str, port: int) -> _Connection:
        key = (host, port)
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            transport = connection.transport
            if not connection.closed and transport is not None and not transport.is_closing():
                return connection
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(
                lambda: _Connection(self, key),
                host,
                port,
                ssl=self._ssl,
                server_hostname=None if self._ssl is None else host,
            )
        except OSError as exc:
            raise ConnectFailed(exc.errno, f"cannot connect to {host}:{port}: {exc}") from exc
        return protocol

    async def request(
        self,
        host: str,
        port: int,
        head: bytes,
        body: bytes | AsyncIterable[bytes] | None,
    ) -> UpstreamResponse:
        """Send `head` (request line and headers, ending in a blank line) and `body`.

        The caller must `release()` the response. If this raises or is cancelled, the
        connection is closed.
        """
        connection = await self._connection(host, port)
        try:
            return await connection.send(head, body)
        except BaseException:
            connection.close()
            raise

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
