"""Forwarding one admitted request to its replica, and what a failure there means.

`Forwarder.forward` sends the request (the body streamed, counted against the size limit) on a
pooled keep-alive connection and streams the answer back. It decides nothing about placement;
it tells the view what happened (`request_answered`, `request_failed`, a failed load) and raises
`Retry` when the request failed in a way that is harmless to try on another replica:
- a refused connection: nothing reached the replica, always;
- a broken connection, a replica that went quiet (`abandon`: its reports stopped) or a failed
  model load, before any of the answer went to the client: only for a request whose body was
  kept and whose method is idempotent, or when `router.retry_on_replica_failure` allows it.
Otherwise the client gets a JSON error (502 `replica_failed`, 504 `replica_unresponsive`, the
replica's own 500 `model_load_failed`), or a broken stream once part of the answer is out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from aiohttp import StreamReader, web
from multidict import CIMultiDict

from common.config import RouterConfig
from common.errors import error_response
from common.headers import LOAD_FAILED_HEADER
from router._http import request_head, response_headers
from router._upstream import ConnectFailed, UpstreamBroken, UpstreamPool, UpstreamResponse
from router.admission import Admitted
from router.view import ClusterView

__all__ = ["Body", "Forwarder", "PrefixedStream", "Retry", "error_message"]

logger = logging.getLogger("modelplex.router")

_SMALL_BODY = 64 * 1024  # answers up to this size with a known length are sent in one write
_LOAD_FAILED = LOAD_FAILED_HEADER.encode()
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})  # RFC 9110 9.2.2


@functools.cache
def _address(url: str) -> tuple[str, int]:
    """(host, port) of a replica's http:// URL."""
    parsed = urllib.parse.urlsplit(url)
    return parsed.hostname or "127.0.0.1", parsed.port or (443 if parsed.scheme == "https" else 80)


@dataclass(eq=False, slots=True)
class _Watch:
    """A request's wait on one replica: its timeout, and whether the replica went quiet."""

    timeout: asyncio.Timeout
    lost: bool = False


def _header(headers: list[tuple[bytes, bytes]], wanted: bytes) -> str | None:
    """The value of header `wanted` (lower case), if the answer has it."""
    for key, value in headers:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


def error_message(body: bytes, field: str = "message") -> str | None:
    """The `error.<field>` of a JSON error answer, if it is one."""
    try:
        message = json.loads(body)["error"][field]
    except (ValueError, KeyError, TypeError):
        return None
    return message if isinstance(message, str) else None


class _ClientGone(Exception):
    """Writing the answer to the client failed: it closed or reset its connection."""


class _BodyTooLarge(Exception):
    """A streamed request body went over `router.max_request_body_bytes`."""


class PrefixedStream:
    """A request body whose first bytes were read already (to find its model id)."""

    def __init__(self, prefix: bytes, rest: StreamReader) -> None:
        self.prefix = prefix
        self.rest = rest

    async def iter_any(self) -> AsyncIterator[bytes]:
        if self.prefix:
            yield self.prefix
        async for chunk in self.rest.iter_any():
            yield chunk


Body = bytes | StreamReader | PrefixedStream | None
"""What is forwarded: kept whole (replayable), streamed, or streamed after a peek."""


async def _counted(body: StreamReader | PrefixedStream, limit: int) -> AsyncIterator[bytes]:
    """`body`'s chunks as they arrive; _BodyTooLarge once more than `limit` bytes came."""
    seen = 0
    async for chunk in body.iter_any():
        seen += len(chunk)
        if seen > limit:
            raise _BodyTooLarge
        yield chunk


class Retry(Exception):
    """Forwarding failed in a way that is safe to try on another replica."""


class Forwarder:
    """Sends admitted requests to replicas for one router."""

    def __init__(
        self,
        view: ClusterView,
        config: RouterConfig,
        *,
        upstream: UpstreamPool,
        clock: Callable[[], float],
        counters: Counter[str],
    ) -> None:
        self.view = view
        self.config = config
        self.clock = clock
        self.counters = counters
        self._upstream = upstream
        # The requests waiting on each replica, so a quiet one ends them (`abandon`).
        self._watches: dict[str, set[_Watch]] = {}

    def failed_on(self, replica_id: str) -> None:
        """A request to the replica failed (refused, broken, timed out): tell its breaker."""
        if self.view.request_failed(replica_id, self.clock()):
            self.counters["circuit_opened"] += 1
            logger.warning("replica %s: circuit open after failed requests", replica_id)

    def too_large(self) -> web.Response:
        self.counters["body_too_large"] += 1
        limit = self.config.max_request_body_bytes
        response = error_response(
            413, "body_too_large", f"the request body is over max_request_body_bytes={limit}"
        )
        response.force_close()  # the rest of the body is not read
        return response

    async def forward(
        self,
        request: web.Request,
        admitted: Admitted,
        headers: CIMultiDict[str],
        body: Body,
        replayable: bool,
        deadline: float,
    ) -> web.StreamResponse:
        # Once sent, the replica may have acted on it: again only if that is harmless.
        retry_ok = replayable and (
            request.method in _IDEMPOTENT or self.config.retry_on_replica_failure
        )
        host, port = _address(admitted.url)
        upstream_body = (
            _counted(body, self.config.max_request_body_bytes)
            if isinstance(body, StreamReader | PrefixedStream)
            else body
        )
        head = request_head(request.method, request.raw_path, headers, body, f"{host}:{port}")
        timeout = asyncio.timeout_at(deadline)
        try:
            with self._watch(admitted.replica_id, timeout) as watch:
                async with timeout:
                    upstream = await self._upstream.request(host, port, head, upstream_body)
        except _BodyTooLarge:
            return self.too_large()
        except ConnectFailed as exc:
            # Nothing reached the replica: always safe to send elsewhere.
            logger.warning("replica %s refused a connection: %s", admitted.replica_id, exc)
            self.failed_on(admitted.replica_id)
            if self.view.mark_down(admitted.replica_id):
                # Out of routing, as if its channel closed: requests waiting on it end now,
                # since a cut link may keep that channel open until its heartbeats time out.
                self.abandon(admitted.replica_id)
            raise Retry from exc
        except TimeoutError as exc:  # before OSError, which it is
            if watch.lost:
                return self._replica_failed(admitted, exc, retry_ok, unresponsive=True)
            raise
        except (UpstreamBroken, OSError) as exc:
            return self._replica_failed(admitted, exc, retry_ok)
        self.view.request_answered(admitted.replica_id)
        try:
            failed_model = _header(upstream.headers, _LOAD_FAILED)
            if failed_model is not None:
                return await self._load_failed(upstream, admitted, failed_model, retry_ok)
            return await self._answer(request, upstream, admitted, retry_ok, deadline)
        finally:
            upstream.release()

    async def _load_failed(
        self, upstream: UpstreamResponse, admitted: Admitted, model_id: str, retry_ok: bool
    ) -> web.StreamResponse:
        """The replica could not load the model: remember it, and try another replica if that
        is harmless (the view keeps the model off this one for a while), else pass it on."""
        try:
            data = await upstream.read()
        except (UpstreamBroken, OSError) as exc:
            return self._replica_failed(admitted, exc, retry_ok)
        message = error_message(data, "loader_error") or "the loader failed"
        self.counters["load_failures"] += 1
        self.view.load_failures.record(model_id, admitted.replica_id, message, self.clock())
        logger.warning("model %r failed to load on %s: %s", model_id, admitted.replica_id, message)
        if retry_ok:
            raise Retry
        headers = response_headers(upstream.headers, admitted.replica_id)
        return web.Response(status=upstream.status, body=data, headers=headers)

    @contextlib.contextmanager
    def _watch(self, replica_id: str, timeout: asyncio.Timeout) -> Iterator[_Watch]:
        """While the block runs, `timeout` ends at once if the replica goes quiet (no report
        in time): its requests must not hang until their deadline."""
        watch = _Watch(timeout)
        watches = self._watches.setdefault(replica_id, set())
        watches.add(watch)
        try:
            yield watch
        finally:
            watches.discard(watch)
            if not watches and self._watches.get(replica_id) is watches:
                del self._watches[replica_id]

    def abandon(self, replica_id: str) -> None:
        """The replica went quiet or down: end every request waiting on it now."""
        now = asyncio.get_running_loop().time()
        for watch in self._watches.pop(replica_id, set()):
            watch.lost = True
            if not watch.timeout.expired():
                with contextlib.suppress(RuntimeError):  # its block just ended
                    watch.timeout.reschedule(now)

    async def _answer(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        admitted: Admitted,
        retry_ok: bool,
        deadline: float,
    ) -> web.StreamResponse:
        headers = response_headers(upstream.headers, admitted.replica_id)
        length = upstream.content_length
        small = length is not None and length <= _SMALL_BODY
        response = web.StreamResponse(status=upstream.status, headers=headers)
        if length is not None:
            response.content_length = length
        first = True
        timeout = asyncio.timeout_at(deadline)
        try:
            with self._watch(admitted.replica_id, timeout) as watch:
                async with timeout:
                    if small:
                        data = await upstream.read()
                        return web.Response(status=upstream.status, body=data, headers=headers)
                    async for chunk in upstream.iter_chunks():
                        try:
                            if first:
                                await response.prepare(request)
                                first = False
                            await response.write(chunk)
                        except OSError as exc:
                            raise _ClientGone from exc
        except _ClientGone:
            # The client went away mid-answer: not the replica's fault; the upstream connection
            # is closed unread (released before its end), and nothing more can be sent.
            self.counters["client_disconnects"] += 1
            return response
        except TimeoutError as exc:  # before OSError, which it is
            if first:
                if watch.lost:
                    return self._replica_failed(admitted, exc, retry_ok, unresponsive=True)
                raise
            return self._broken_stream(request, response, admitted, exc)
        except (UpstreamBroken, OSError) as exc:
            if first:
                return self._replica_failed(admitted, exc, retry_ok)
            return self._broken_stream(request, response, admitted, exc)
        if first:
            await response.prepare(request)
        await response.write_eof()
        return response

    def _broken_stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        admitted: Admitted,
        exc: BaseException,
    ) -> web.StreamResponse:
        """Part of the answer is out: the client must see a broken response, not a short one."""
        self.counters["broken_streams"] += 1
        logger.warning("replica %s failed mid-answer: %r", admitted.replica_id, exc)
        self.failed_on(admitted.replica_id)
        response.force_close()
        if request.transport is not None:
            request.transport.close()
        return response

    def _replica_failed(
        self, admitted: Admitted, exc: Exception, retry_ok: bool, *, unresponsive: bool = False
    ) -> web.Response:
        """Nothing of the answer reached the client: retry elsewhere if that is harmless,
        else answer 502 (it failed) or 504 (it stopped answering)."""
        logger.warning("replica %s failed mid-request: %r", admitted.replica_id, exc)
        self.failed_on(admitted.replica_id)
        if retry_ok:
            raise Retry from exc
        if unresponsive:
            self.counters["replica_unresponsive"] += 1
            return error_response(
                504,
                "replica_unresponsive",
                f"replica {admitted.replica_id} stopped answering during the request",
            )
        self.counters["replica_failed"] += 1
        return error_response(
            502, "replica_failed", f"replica {admitted.replica_id} failed during the request"
        )
