"""The router's HTTP glue: the public port, forwarding, and the routes it serves.

Decisions live elsewhere — where to send a request in `router.policy`, what the cluster looks
like in `router.view`, queueing in `router._admission`, a replica's failures in its circuit
breaker (`router.breaker`); the replicas' reports come in through `router._channel`. This
module only translates HTTP into
calls on them and back: read the model id, admit, forward with a pooled keep-alive connection
(bodies streamed), retry where nothing can have happened twice, and answer errors as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
from aiohttp import StreamReader, web
from multidict import CIMultiDict

from common.addresses import is_loopback
from common.auth import authorization_value, data_path_token, is_authorized
from common.config import ClusterConfig
from common.errors import error_response
from common.headers import COLD_HEADER, CREDENTIAL_HEADER, EVICT_HEADER
from common.model_id import MODEL_ID_HEADERS, InvalidModelId, model_id_from_headers
from common.tls import Side, client_auth, client_context
from common.wire import (
    CHANNEL_PATH,
    REPORT_PATH,
)
from router._admission import Admission, Admitted, NoReplica, QueueFull, QueueTimeout
from router._channel import ReportIntake
from router._http import request_head, request_headers, response_headers
from router._status import metrics_text, status_document
from router._upstream import ConnectFailed, UpstreamBroken, UpstreamPool, UpstreamResponse
from router.breaker import CircuitBreaker, RetryBudget
from router.policy import ModelplexPolicy, Prefetch
from router.view import ClusterView

__all__ = ["RouterServer"]

logger = logging.getLogger("modelplex.router")

_MAX_ATTEMPTS = 4
_SMALL_BODY = 64 * 1024  # answers up to this size with a known length are sent in one write
_MAX_BREAKER_COOLDOWN_S = 30.0
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})  # RFC 9110 9.2.2


@functools.cache
def _address(url: str) -> tuple[str, int]:
    """(host, port) of a replica's http:// URL."""
    parsed = urllib.parse.urlsplit(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 80


@dataclass(eq=False, slots=True)
class _Watch:
    """A request's wait on one replica: its timeout, and whether the replica went quiet."""

    timeout: asyncio.Timeout
    lost: bool = False


class _ClientGone(Exception):
    """Writing the answer to the client failed: it closed or reset its connection."""


class _BodyTooLarge(Exception):
    """A streamed request body went over `router.max_request_body_bytes`."""


async def _counted(body: StreamReader, limit: int) -> AsyncIterator[bytes]:
    """`body`'s chunks as they arrive; _BodyTooLarge once more than `limit` bytes came."""
    seen = 0
    async for chunk in body.iter_any():
        seen += len(chunk)
        if seen > limit:
            raise _BodyTooLarge
        yield chunk


class _Retry(Exception):
    """Forwarding failed in a way that is safe to try on another replica."""


class RouterServer:
    """One router: a cluster view fed by replica reports, and the request path through it."""

    def __init__(self, config: ClusterConfig, secret: str, *, public: bool | None = None) -> None:
        """`public`: the router listens beyond loopback, so `/-/status` and `/-/metrics` need
        the cluster secret (default: judged from `router.host`)."""
        self.config = config
        self.secret = secret
        self.public = not is_loopback(config.router.host) if public is None else public
        self._credential = authorization_value(data_path_token(secret))
        self.clock = time.monotonic
        router = config.router
        self.view = ClusterView(
            breaker=CircuitBreaker(
                failure_threshold=router.breaker_failures,
                cooldown_s=router.breaker_cooldown_s,
                max_cooldown_s=max(_MAX_BREAKER_COOLDOWN_S, router.breaker_cooldown_s),
            )
        )
        self.retry_budget = RetryBudget(
            ratio=router.retry_budget_ratio, min_per_s=router.retry_budget_min_per_s
        )
        self.policy = ModelplexPolicy(patience=config.router.popular_model_patience)
        self.admission = Admission(
            self.view,
            self.policy,
            clock=self.clock,
            max_queued=config.router.max_queued_requests,
            prefetch=self._start_prefetch,
        )
        self.counters: Counter[str] = Counter()
        self.reports = ReportIntake(
            self.view,
            self.admission,
            secret=secret,
            clock=self.clock,
            counters=self.counters,
            on_down=self._abandon,
            client_certificates=client_auth(config.tls),
        )
        self.started_at = time.time()
        self.url = ""
        self._session: aiohttp.ClientSession | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._prefetches: set[asyncio.Task[None]] = set()
        self._replica_tls = client_context(config.tls, Side.REPLICA)  # None: plain HTTP
        self._upstream = UpstreamPool(ssl_context=self._replica_tls)
        # The requests waiting on each replica, so a quiet one ends them (`_abandon`).
        self._watches: dict[str, set[_Watch]] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.router.max_request_body_bytes)
        app.router.add_get("/-/healthz", self._healthz)
        app.router.add_get("/-/status", self._status)
        app.router.add_get("/-/metrics", self._metrics)
        app.router.add_get(CHANNEL_PATH, self.reports.channel)
        app.router.add_post(REPORT_PATH, self.reports.report)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        app.on_startup.append(self._start)
        app.on_shutdown.append(lambda _: self.reports.close())
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, keepalive_timeout=30, ttl_dns_cache=300, ssl=self._replica_tls or True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )
        self._maintenance = asyncio.create_task(self._maintain())

    async def _stop(self, app: web.Application) -> None:
        self.admission.close()
        if self._maintenance is not None:
            self._maintenance.cancel()
        for task in list(self._prefetches):
            task.cancel()
        if self._session is not None:
            await self._session.close()
        self._upstream.close()

    async def _maintain(self) -> None:
        deployment = self.config.deployment
        period_s = min(0.5, deployment.heartbeat_interval_s / 2)
        while True:
            await asyncio.sleep(period_s)
            now = self.clock()
            for replica_id in self.view.expire(now, deployment.heartbeat_timeout_s):
                logger.warning("replica %s sent no report in time; not routing to it", replica_id)
                self._abandon(replica_id)
            for replica_id in self.view.cool_down(now):
                logger.info(
                    "replica %s: circuit half-open, probing it with one request", replica_id
                )
            for replica_id in self.view.forget_departed(now):
                logger.info("replica %s forgotten: out of routing and silent", replica_id)
            self.admission.offer()

    # -- the request path ------------------------------------------------------------------

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        self.counters["requests"] += 1
        try:
            model_id = model_id_from_headers(request.headers)
        except InvalidModelId as exc:
            self.counters["invalid_model_id"] += 1
            return error_response(400, "invalid_model_id", str(exc))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.router.request_timeout_s
        limit = self.config.router.max_request_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._too_large()
        body, replayable = await self._body(request)
        headers = request_headers(request)
        self.retry_budget.requested(self.clock())
        tried: frozenset[str] = frozenset()
        for _ in range(_MAX_ATTEMPTS):
            if tried and not self.retry_budget.try_retry(self.clock()):
                self.counters["retry_budget_exhausted"] += 1
                return error_response(
                    502,
                    "replica_failed",
                    "a replica failed the request and the router's retry budget is spent",
                )
            answer = await self._attempt(
                request, model_id, body, replayable, headers, deadline, tried=tried
            )
            if isinstance(answer, web.StreamResponse):
                return answer
            tried |= {answer}
        self.counters["replica_failed"] += 1
        return error_response(
            502, "replica_failed", f"the request failed on {_MAX_ATTEMPTS} replicas"
        )

    async def _attempt(
        self,
        request: web.Request,
        model_id: str,
        body: bytes | StreamReader | None,
        replayable: bool,
        headers: CIMultiDict[str],
        deadline: float,
        *,
        tried: frozenset[str],
    ) -> web.StreamResponse | str:
        """Admit the request (to none of the replicas in `tried`) and forward it once; the
        answer, or the id of the replica that failed it in a way that is safe to try on
        another one."""
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        try:
            admitted = await self.admission.admit(
                model_id, min(remaining, self.config.router.queue_timeout_s), tried=tried
            )
        except NoReplica as exc:
            if tried:
                self.counters["replica_failed"] += 1
                failed = ", ".join(sorted(tried))
                return error_response(
                    502,
                    "replica_failed",
                    f"the request failed on {failed} and no other replica is available",
                )
            self.counters["no_replica"] += 1
            return error_response(503, "no_replica", str(exc), retry_after_s=1)
        except QueueFull as exc:
            self.counters["queue_full"] += 1
            return error_response(503, "queue_full", str(exc), retry_after_s=1)
        except QueueTimeout as exc:
            if loop.time() >= deadline:
                return self._timed_out()
            self.counters["queue_timeout"] += 1
            return error_response(503, "queue_timeout", str(exc), retry_after_s=1)
        if admitted.cold:
            self.counters["cold_dispatches"] += 1
        headers[CREDENTIAL_HEADER] = self._credential
        if admitted.evict:
            headers[EVICT_HEADER] = admitted.evict
        else:
            headers.popall(EVICT_HEADER, None)
        started = loop.time()
        served_s: float | None = None
        ok = False
        try:
            response = await self._forward(request, admitted, headers, body, replayable, deadline)
            ok = response.status < 400
            if ok and COLD_HEADER not in response.headers:  # no load inside: inference
                served_s = loop.time() - started
            return response
        except _Retry:
            self.counters["retries"] += 1
            logger.info("retrying a request after replica %s failed", admitted.replica_id)
            return admitted.replica_id
        except TimeoutError:
            self._failed_on(admitted.replica_id)
            return self._timed_out()
        finally:
            self.admission.release(admitted, model_id, ok=ok, served_s=served_s)

    def _failed_on(self, replica_id: str) -> None:
        """A request to the replica failed (refused, broken, timed out): tell its breaker."""
        if self.view.request_failed(replica_id, self.clock()):
            self.counters["circuit_opened"] += 1
            logger.warning("replica %s: circuit open after failed requests", replica_id)

    def _start_prefetch(self, prefetch: Prefetch) -> None:
        task = asyncio.create_task(self._prefetch(prefetch))
        self._prefetches.add(task)
        task.add_done_callback(self._prefetches.discard)

    async def _prefetch(self, prefetch: Prefetch) -> None:
        """Ask a replica to load another copy of a hot model; the outcome arrives in reports."""
        assert self._session is not None
        self.counters["prefetches"] += 1
        headers = {
            MODEL_ID_HEADERS[0]: prefetch.model_id,
            "Authorization": authorization_value(self.secret),
        }
        if prefetch.evict:
            headers[EVICT_HEADER] = prefetch.evict
        replica = prefetch.replica
        try:
            async with self._session.post(replica.url + "/-/load", headers=headers) as answer:
                if answer.status != 200:
                    logger.warning(
                        "replica %s could not prefetch %r: %s",
                        replica.replica_id,
                        prefetch.model_id,
                        await answer.text(),
                    )
        except aiohttp.ClientError as exc:
            logger.warning("prefetch on replica %s failed: %s", replica.replica_id, exc)

    def _too_large(self) -> web.Response:
        self.counters["body_too_large"] += 1
        limit = self.config.router.max_request_body_bytes
        response = error_response(
            413, "body_too_large", f"the request body is over max_request_body_bytes={limit}"
        )
        response.force_close()  # the rest of the body is not read
        return response

    def _timed_out(self) -> web.Response:
        self.counters["timeouts"] += 1
        limit = self.config.router.request_timeout_s
        return error_response(504, "timeout", f"no answer within request_timeout_s={limit:g}")

    async def _body(self, request: web.Request) -> tuple[bytes | StreamReader | None, bool]:
        """The body to send: bytes when small enough to keep for a retry, else the stream."""
        if not request.body_exists:
            return None, True
        length = request.content_length
        if length is not None and length <= self.config.router.max_replay_body_bytes:
            return await request.read(), True
        return request.content, False

    async def _forward(
        self,
        request: web.Request,
        admitted: Admitted,
        headers: CIMultiDict[str],
        body: bytes | StreamReader | None,
        replayable: bool,
        deadline: float,
    ) -> web.StreamResponse:
        # Once sent, the replica may have acted on it: again only if that is harmless.
        retry_ok = replayable and (
            request.method in _IDEMPOTENT or self.config.router.retry_on_replica_failure
        )
        host, port = _address(admitted.url)
        upstream_body = (
            _counted(body, self.config.router.max_request_body_bytes)
            if isinstance(body, StreamReader)
            else body
        )
        head = request_head(request.method, request.raw_path, headers, body, f"{host}:{port}")
        timeout = asyncio.timeout_at(deadline)
        try:
            with self._watch(admitted.replica_id, timeout) as watch:
                async with timeout:
                    upstream = await self._upstream.request(host, port, head, upstream_body)
        except _BodyTooLarge:
            return self._too_large()
        except ConnectFailed as exc:
            # Nothing reached the replica: always safe to send elsewhere.
            logger.warning("replica %s refused a connection: %s", admitted.replica_id, exc)
            self._failed_on(admitted.replica_id)
            self.view.mark_down(admitted.replica_id)
            raise _Retry from exc
        except TimeoutError as exc:  # before OSError, which it is
            if watch.lost:
                return self._replica_failed(admitted, exc, retry_ok, unresponsive=True)
            raise
        except (UpstreamBroken, OSError) as exc:
            return self._replica_failed(admitted, exc, retry_ok)
        self.view.request_answered(admitted.replica_id)
        try:
            return await self._answer(request, upstream, admitted, retry_ok, deadline)
        finally:
            upstream.release()

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

    def _abandon(self, replica_id: str) -> None:
        """The replica went quiet: end every request waiting on it now."""
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
        self._failed_on(admitted.replica_id)
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
        self._failed_on(admitted.replica_id)
        if retry_ok:
            raise _Retry from exc
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

    # -- introspection ---------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        routable = len(self.view.routable())
        status = 200 if routable else 503
        word = "ok" if routable else "no_replica"
        return web.json_response({"status": word, "routable_replicas": routable}, status=status)

    def _locked(self, request: web.Request) -> web.Response | None:
        """401 for an admin request without the secret, when the router is public."""
        if self.public and not is_authorized(request.headers.get("Authorization"), self.secret):
            return error_response(401, "unauthorized", "the cluster secret is required")
        return None

    async def _status(self, request: web.Request) -> web.Response:
        return self._locked(request) or web.json_response(status_document(self, self.clock()))

    async def _metrics(self, request: web.Request) -> web.Response:
        return self._locked(request) or web.Response(
            body=metrics_text(self), content_type="text/plain", charset="utf-8"
        )
