"""The router's HTTP glue: the public port and the routes it serves.

Decisions live elsewhere — where to send a request in `router.policy`, what the cluster looks
like in `router.view`, queueing in `router._admission`, a replica's failures in its circuit
breaker (`router.breaker`) and `router.load_failures`. The replicas' reports come in through
`router._channel`, and one attempt at a replica is `router._forward`'s. This module translates
HTTP into calls on them and back: read the model id, admit, forward, try another replica while
a failure allows it within the retry budget, and answer errors as JSON. The admin API
(`/-/admin/...`) is `router._admin`'s.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import StreamReader, web
from multidict import CIMultiDict

from common.addresses import is_loopback
from common.auth import authorization_value, data_path_token, is_authorized
from common.config import ClusterConfig
from common.errors import error_response
from common.headers import COLD_HEADER, CREDENTIAL_HEADER, DEMAND_HEADER, EVICT_HEADER
from common.model_id import (
    MODEL_ID_HEADERS,
    InvalidModelId,
    model_id_from_headers,
    validate_model_id,
)
from common.request_id import REQUEST_ID_HEADER, request_id_from
from common.tls import Side, client_auth, client_context
from common.wire import (
    CHANNEL_PATH,
    REPORT_PATH,
)
from router._admin import AdminRoutes
from router._admission import (
    Admission,
    Admitted,
    LoadFailed,
    NoReplica,
    QueueFull,
    QueueTimeout,
)
from router._body_model import MAX_PEEK_BYTES, BodyModel, ModelField
from router._channel import ReportIntake
from router._dashboard import dashboard_handler
from router._forward import Body, Forwarder, PrefixedStream, Retry, error_message
from router._http import request_headers
from router._lease import FRESH_S, Claim, PlacementLease, lease_namespace
from router._status import metrics_text, status_document
from router._telemetry import Outcome, RequestRecord, Telemetry
from router._upstream import UpstreamPool
from router.breaker import CircuitBreaker, RetryBudget
from router.load_failures import LoadFailures
from router.policy import ModelplexPolicy, Prefetch
from router.view import Claimed, ClusterView

__all__ = ["RouterServer"]

logger = logging.getLogger("modelplex.router")

_MAX_ATTEMPTS = 4
_LOGGED_PATH_CHARS = 200
_MAX_BREAKER_COOLDOWN_S = 30.0


def _refused(
    record: RequestRecord, status: int, code: str, message: str, **kwargs: Any
) -> web.Response:
    """The router refuses the request itself (before any replica saw it)."""
    record.reason = code
    return error_response(status, code, message, **kwargs)


def _body_bytes(response: web.StreamResponse | None) -> int:
    """Bytes of the answer's body, for the access log."""
    if response is None:
        return 0
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        return len(response.body)
    return response.body_length


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
            load_failures=LoadFailures(
                cooldown_s=router.load_failure_cooldown_s, max_failures=router.max_load_failures
            ),
            breaker=CircuitBreaker(
                failure_threshold=router.breaker_failures,
                cooldown_s=router.breaker_cooldown_s,
                max_cooldown_s=max(_MAX_BREAKER_COOLDOWN_S, router.breaker_cooldown_s),
            ),
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
            # A restarted router hears from every replica within a heartbeat (or their
            # reconnect backoff, half a second): until then requests wait, not fail.
            first_reports_within_s=config.deployment.heartbeat_interval_s + 1.0,
        )
        self.counters: Counter[str] = Counter()
        self.telemetry = Telemetry(access_log=config.router.access_log)
        self._replica_tls = client_context(config.tls, Side.REPLICA)  # None: plain HTTP
        self._upstream = UpstreamPool(ssl_context=self._replica_tls)
        self.forwarder = Forwarder(
            self.view,
            config.router,
            upstream=self._upstream,
            clock=self.clock,
            counters=self.counters,
        )
        self.reports = ReportIntake(
            self.view,
            self.admission,
            secret=secret,
            clock=self.clock,
            counters=self.counters,
            on_down=self.forwarder.abandon,
            client_certificates=client_auth(config.tls),
        )
        self.lease: PlacementLease | None = None
        if router.placement_lease_url is not None:
            self.lease = PlacementLease(
                router.placement_lease_url,
                ttl_s=router.placement_lease_ttl_s,
                timeout_s=router.placement_lease_timeout_s,
                namespace=lease_namespace(secret),
            )
        # Cold placements whose lease is being claimed: their model's other requests wait
        # for the answer before they go anywhere.
        self._claims: dict[str, asyncio.Future[Claim | None]] = {}
        self.started_at = time.time()
        self.url = ""  # where it listens; shared with the other routers when there are several
        self.direct_url = ""  # its own address: `url` unless it shares that one
        self._session: aiohttp.ClientSession | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._prefetches: set[asyncio.Task[None]] = set()
        self.admin = AdminRoutes(
            view=self.view,
            policy=self.policy,
            secret=secret,
            clock=self.clock,
            session=lambda: self._session,
            prefetch=self._start_prefetch,
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.router.max_request_body_bytes)
        app.router.add_get("/-/healthz", self._healthz)
        app.router.add_get("/-/status", self._status)
        app.router.add_get("/-/metrics", self._metrics)
        app.router.add_get("/-/dashboard", dashboard_handler())
        app.router.add_get(CHANNEL_PATH, self.reports.channel)
        app.router.add_post(REPORT_PATH, self.reports.report)
        self.admin.register(app)
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
        if self.lease is not None:
            await self.lease.close()
        self._upstream.close()

    async def _maintain(self) -> None:
        deployment = self.config.deployment
        period_s = min(0.5, deployment.heartbeat_interval_s / 2)
        while True:
            await asyncio.sleep(period_s)
            now = self.clock()
            for replica_id in self.view.expire(now, deployment.heartbeat_timeout_s):
                logger.warning("replica %s sent no report in time; not routing to it", replica_id)
                self.forwarder.abandon(replica_id)
            for replica_id in self.view.cool_down(now):
                logger.info(
                    "replica %s: circuit half-open, probing it with one request", replica_id
                )
            for replica_id in self.view.forget_departed(now):
                logger.info("replica %s forgotten: out of routing and silent", replica_id)
            self.admission.offer()

    # -- the request path ------------------------------------------------------------------

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        """One client request, recorded (metrics, access log) and tagged with its id."""
        self.counters["requests"] += 1
        record = RequestRecord(
            request_id=request_id_from(request.headers.get(REQUEST_ID_HEADER)),
            method=request.method,
            path=request.raw_path[:_LOGGED_PATH_CHARS],
            started=self.clock(),
        )
        status = 499  # the client went away before its answer (nginx's code for it)
        response: web.StreamResponse | None = None
        try:
            response = await self._route(request, record)
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = record.request_id
            return response
        finally:
            self.telemetry.finished(record, status, _body_bytes(response), self.clock())

    async def _route(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        try:
            model_id = model_id_from_headers(request.headers)
        except InvalidModelId as exc:
            self.counters["invalid_model_id"] += 1
            return _refused(record, 400, "invalid_model_id", str(exc))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.router.request_timeout_s
        limit = self.config.router.max_request_body_bytes
        if request.content_length is not None and request.content_length > limit:
            record.reason = "body_too_large"
            return self.forwarder.too_large()
        body, replayable = await self._body(request)
        headers = request_headers(request)
        source = self.config.router.model_id_from
        if source == "json_body" or (source == "both" and not model_id):
            found = await self._model_in_body(body)
            if isinstance(found, web.Response):
                record.reason = "invalid_model_id"
                return found
            model_id, body = found
            headers[MODEL_ID_HEADERS[0]] = model_id  # how the replica learns it
            for alias in MODEL_ID_HEADERS[1:]:
                headers.popall(alias, None)
        record.model_id = model_id
        headers[REQUEST_ID_HEADER] = record.request_id
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
                request, record, body, replayable, headers, deadline, tried=tried
            )
            if isinstance(answer, web.StreamResponse):
                return answer
            tried |= {answer}
            record.retries += 1
        self.counters["replica_failed"] += 1
        return error_response(
            502, "replica_failed", f"the request failed on {_MAX_ATTEMPTS} replicas"
        )

    async def _attempt(
        self,
        request: web.Request,
        record: RequestRecord,
        body: Body,
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
        model_id = record.model_id
        remaining = deadline - loop.time()
        asked = loop.time()
        try:
            wait_s = min(remaining, self.config.router.queue_timeout_s)
            admitted = await self.admission.admit(model_id, wait_s, tried=tried)
            if self.lease is not None and model_id:
                admitted = await self._follow_lease(admitted, model_id, wait_s, tried)
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
            return _refused(record, 503, "no_replica", str(exc), retry_after_s=1)
        except QueueFull as exc:
            self.counters["queue_full"] += 1
            return _refused(record, 503, "queue_full", str(exc), retry_after_s=1)
        except LoadFailed as exc:
            self.counters["load_failed_refusals"] += 1
            wait_s = self.view.load_failures.retry_after_s(model_id, self.clock())
            retry_after_s = max(1, math.ceil(wait_s))
            return _refused(record, 503, "model_load_failed", str(exc), retry_after_s=retry_after_s)
        except QueueTimeout as exc:
            record.queued_s += loop.time() - asked
            if loop.time() >= deadline:
                record.reason = "timeout"
                return self._timed_out()
            self.counters["queue_timeout"] += 1
            return _refused(record, 503, "queue_timeout", str(exc), retry_after_s=1)
        record.queued_s += loop.time() - asked
        record.replica_id = admitted.replica_id
        if not model_id:
            record.outcome = Outcome.NO_MODEL
        elif admitted.cold:
            record.outcome = Outcome.COLD_LOAD
        else:
            record.outcome = Outcome.WARM
        if admitted.cold:
            self.counters["cold_dispatches"] += 1
            self.telemetry.loaded(admitted.replica_id)
        headers[CREDENTIAL_HEADER] = self._credential
        if admitted.evict:
            headers[EVICT_HEADER] = admitted.evict
        else:
            headers.popall(EVICT_HEADER, None)
        if admitted.demand:
            headers[DEMAND_HEADER] = str(admitted.demand)
        else:
            headers.popall(DEMAND_HEADER, None)
        started = loop.time()
        served_s: float | None = None
        ok = False
        try:
            response = await self.forwarder.forward(
                request, admitted, headers, body, replayable, deadline
            )
            ok = response.status < 400
            if COLD_HEADER in response.headers:
                if not admitted.cold:
                    record.outcome = Outcome.WAITED_FOR_LOAD
            elif ok:  # no load inside: inference
                served_s = loop.time() - started
            return response
        except Retry:
            self.counters["retries"] += 1
            logger.info("retrying a request after replica %s failed", admitted.replica_id)
            return admitted.replica_id
        except TimeoutError:
            self.forwarder.failed_on(admitted.replica_id)
            return self._timed_out()
        finally:
            record.upstream_s += loop.time() - started
            self.admission.release(admitted, model_id, ok=ok, served_s=served_s)

    async def _follow_lease(
        self, admitted: Admitted, model_id: str, wait_s: float, tried: frozenset[str]
    ) -> Admitted:
        """With a placement lease: where `admitted` really goes. A cold placement claims the
        lease for its replica; the model's other requests meanwhile wait for that answer. If
        another router won the claim and the view says to follow it
        (`ClusterView.claimed_elsewhere`, which records the model loading there), the request
        is admitted again, and goes there."""
        assert self.lease is not None
        pending = self._claims.get(model_id)
        claim: Claim | None = None
        try:
            if pending is not None:
                claim = await asyncio.shield(pending)
            elif admitted.cold:
                pending = asyncio.get_running_loop().create_future()
                self._claims[model_id] = pending
                try:
                    claim = await self.lease.claim(model_id, admitted.replica_id)
                finally:
                    del self._claims[model_id]
                    pending.set_result(claim)
                self.counters["lease_claims"] += 1
                if claim is None:
                    self.counters["lease_unavailable"] += 1
            else:
                return admitted
        except BaseException:
            self.admission.release(admitted, model_id, ok=False)
            raise
        if claim is None:
            return admitted
        outcome = self.view.claimed_elsewhere(
            model_id,
            admitted.replica_id,
            claim.replica_id,
            claim.age_s,
            self.clock(),
            fresh_s=FRESH_S,
            avoid=tried,
        )
        if outcome is Claimed.STALE:
            self.counters["lease_stale"] += 1
        if outcome is not Claimed.FOLLOW:
            return admitted
        self.counters["lease_redirects"] += 1
        self.admission.release(admitted, model_id, ok=False)
        return await self.admission.admit(model_id, wait_s, tried=tried)

    def _start_prefetch(self, prefetch: Prefetch) -> None:
        task = asyncio.create_task(self._prefetch(prefetch))
        self._prefetches.add(task)
        task.add_done_callback(self._prefetches.discard)

    async def _prefetch(self, prefetch: Prefetch) -> None:
        """Ask a replica to load another copy of a hot model; the outcome arrives in reports."""
        assert self._session is not None
        self.counters["prefetches"] += 1
        self.telemetry.loaded(prefetch.replica.replica_id)
        headers = {
            MODEL_ID_HEADERS[0]: prefetch.model_id,
            "Authorization": authorization_value(self.secret),
        }
        if prefetch.evict:
            headers[EVICT_HEADER] = prefetch.evict
        demand = self.view.demand.frequency(prefetch.model_id)
        if demand:
            headers[DEMAND_HEADER] = str(demand)
        replica = prefetch.replica
        try:
            async with self._session.post(replica.url + "/-/load", headers=headers) as answer:
                if answer.status != 200:
                    body = await answer.read()
                    message = error_message(body) or body.decode(errors="replace")
                    logger.warning(
                        "replica %s could not prefetch %r: %s",
                        replica.replica_id,
                        prefetch.model_id,
                        message,
                    )
                    if error_message(body, "code") == "load_failed":  # the loader raised
                        self.view.load_failures.record(
                            prefetch.model_id, replica.replica_id, message, self.clock()
                        )
        except aiohttp.ClientError as exc:
            logger.warning("prefetch on replica %s failed: %s", replica.replica_id, exc)

    def _timed_out(self) -> web.Response:
        self.counters["timeouts"] += 1
        limit = self.config.router.request_timeout_s
        return error_response(504, "timeout", f"no answer within request_timeout_s={limit:g}")

    async def _model_in_body(self, body: Body) -> tuple[str, Body] | web.Response:
        """The model id in the JSON body's top-level "model" field, and the body to forward
        (the bytes read to find it, then the rest, untouched); or the 400 answer."""
        field = ModelField()
        found: str | BodyModel = BodyModel.NEED_MORE
        if body is None:
            return "", None  # no body (GET /v1/models, say): a request for no model
        if isinstance(body, bytes):
            found = field.feed(body[:MAX_PEEK_BYTES])
        elif isinstance(body, StreamReader):
            prefix = bytearray()
            while found is BodyModel.NEED_MORE and len(prefix) < MAX_PEEK_BYTES:
                chunk = await body.readany()
                if not chunk:
                    break
                prefix += chunk
                found = field.feed(chunk)
            body = PrefixedStream(bytes(prefix), body)
        if not isinstance(found, str):
            self.counters["invalid_model_id"] += 1
            return error_response(
                400,
                "invalid_model_id",
                'the request names no model: the JSON body needs a top-level "model" string '
                f"within its first {MAX_PEEK_BYTES} bytes",
            )
        try:
            return validate_model_id(found), body
        except InvalidModelId as exc:
            self.counters["invalid_model_id"] += 1
            return error_response(400, "invalid_model_id", str(exc))

    async def _body(self, request: web.Request) -> tuple[Body, bool]:
        """The body to send: bytes when small enough to keep for a retry, else the stream."""
        if not request.body_exists:
            return None, True
        length = request.content_length
        if length is not None and length <= self.config.router.max_replay_body_bytes:
            return await request.read(), True
        return request.content, False

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
