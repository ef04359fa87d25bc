"""Serving an aiohttp app: listen on a port, and wait for the signal that ends a process.

The router, the replica and the launcher's control port all listen the same way: no access log
(the servers keep their own), signals left to the caller, the bound port handed back so a port of
0 works, and the runner cleaned up however the block ends. One app may listen on several
addresses (`listening_on`), some of them shared with other processes (SO_REUSEPORT): several
routers on one host serve one public port that way, each with an address of its own beside it.

Every connection is held to `HttpLimits`, so a slow or hostile client cannot hold it forever or
make the process parse without end, while other clients are served as usual:
- a request's head (request line and headers) must arrive within `header_timeout_s` of its first
  byte, or the connection gets 408 and is closed (aiohttp has no such deadline of its own); a
  TLS handshake must end within it too;
- an idle keep-alive connection is closed after `keepalive_timeout_s`;
- more than `max_headers` headers, or one over `max_header_bytes`, is 431; a request line over
  `max_line_bytes` is 414; any other malformed head is 400 — each a JSON error, and the
  connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from common.errors import error_body

__all__ = [
    "STOP_SIGNALS",
    "Address",
    "CannotListen",
    "HttpLimits",
    "listening",
    "listening_on",
    "until_signal",
]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class CannotListen(OSError):
    """The address could not be bound (in use, not local, no permission)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpLimits:
    header_timeout_s: float | None = 10.0  # None: no deadline for a request's head
    keepalive_timeout_s: float = 75.0
    max_headers: int = 100
    max_header_bytes: int = 8192  # one header line, name and value
    max_line_bytes: int = 16384  # the request line


def _timeout_answer() -> bytes:
    body = error_body("header_timeout", "the request's head did not arrive in time")
    head = (
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a deadline for each request's head and JSON answers
    to malformed heads."""

    def __init__(self, manager: web.Server, *, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(
            manager,
            keepalive_timeout=limits.keepalive_timeout_s,
            max_headers=limits.max_headers,
            max_field_size=limits.max_header_bytes,
            max_line_size=limits.max_line_bytes,
            **kwargs,
        )
        self._limits = limits
        self._head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        timeout_s = self._limits.header_timeout_s
        idle = self._current_request is None and not self._messages
        if timeout_s is not None and self._head_timer is None and idle and data:
            # The first bytes of a new request: its head must follow in time.
            self._head_timer = asyncio.get_running_loop().call_later(timeout_s, self._too_slow)
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _too_slow(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_timeout_answer())
        self.force_close()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        code, text = "bad_request", message or "malformed request"
        if isinstance(exc, LineTooLong):
            too_long_header = exc.args[1] == self._limits.max_header_bytes
            status, code = (431, "header_too_large") if too_long_header else (414, "uri_too_long")
        elif "Too many headers" in text:
            status, code = 431, "too_many_headers"
        response = web.Response(
            status=status, body=error_body(code, text), content_type="application/json"
        )
        response.force_close()
        return response


@dataclass(frozen=True, kw_only=True, slots=True)
class Address:
    """One address to listen on. `reuse_port`: set SO_REUSEPORT, so that other processes
    that set it too can listen on the same port and the kernel spreads connections across
    them; the first socket of such a group must set it as well. Port 0 with `reuse_port`
    still picks a port of its own: the others join it by its number."""

    host: str
    port: int
    reuse_port: bool = False


@contextlib.asynccontextmanager
async def listening(
    app: web.Application,
    host: str,
    port: int,
    *,
    backlog: int = 128,
    shutdown_timeout_s: float = 60.0,
    limits: HttpLimits | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[int]:
    """Serve `app` on `host:port` for the block, each connection held to `limits` (the
    defaults if None), over TLS with `ssl_context` (`common.tls.server_context`) if given;
    yields the bound port.

    CannotListen if the address cannot be bound; an OSError raised inside the block passes as is.
    """
    serving = listening_on(
        app,
        [Address(host=host, port=port)],
        backlog=backlog,
        shutdown_timeout_s=shutdown_timeout_s,
        limits=limits,
        ssl_context=ssl_context,
    )
    async with serving as ports:
        yield ports[0]


@contextlib.asynccontextmanager
async def listening_on(
    app: web.Application,
    addresses: Sequence[Address],
    *,
    backlog: int = 128,
    shutdown_timeout_s: float = 60.0,
    limits: HttpLimits | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[list[int]]:
    """`listening` on several addresses at once, one app behind them all; yields the bound
    ports in the order of `addresses`. CannotListen if any of them cannot be bound (none is
    left open then)."""
    limits = limits or HttpLimits()
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout_s
    )
    await runner.setup()
    server = runner.server
    assert server is not None
    loop = asyncio.get_running_loop()
    listeners: list[asyncio.Server] = []
    try:
        for address in addresses:
            listeners.append(
                await loop.create_server(
                    lambda: _GuardedRequestHandler(
                        server, limits=limits, loop=loop, access_log=None
                    ),
                    address.host,
                    address.port,
                    backlog=backlog,
                    reuse_address=True,
                    reuse_port=address.reuse_port or None,
                    ssl=ssl_context,
                    # the handshake gets the deadline of a request's head
                    ssl_handshake_timeout=limits.header_timeout_s if ssl_context else None,
                )
            )
    except OSError as error:
        await _close(listeners)
        await runner.cleanup()
        raise CannotListen(error.errno, error.strerror or str(error)) from error
    try:
        yield [int(listener.sockets[0].getsockname()[1]) for listener in listeners]
    finally:
        for listener in listeners:
            listener.close()  # no new connections; the runner's cleanup ends the open ones
        await runner.cleanup()
        await _close(listeners)


async def _close(listeners: Sequence[asyncio.Server]) -> None:
    for listener in listeners:
        listener.close()
        await listener.wait_closed()


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
