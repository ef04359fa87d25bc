"""The replica's HTTP server: every request goes to the user's deployment, inside its model id.

`ReplicaServer` is thin glue: it reads the model id, opens the request's context (the model
pins live exactly as long as the answer is being sent), calls the deployment and translates
its result or exception into HTTP (`replica._respond`). It counts requests in flight, serves
`/-/healthz`, `/-/state` and `/-/metrics`, loads a model the router asks for (`/-/load`),
evicts one an operator asks to (`/-/evict`, once no request uses it), reports the caches'
state to every router (`replica._reporter`), and drains gracefully (on a stop signal, or when
asked: `/-/drain`).
Reading the state (`/-/state`) changes nothing: only a report takes a sequence number.

Error answers are JSON `{"error": {"code", "message"}}` with a stable code:
`invalid_model_id` (400), `model_slot_timeout` (503, Retry-After), `draining` (503, Retry-After),
`deployment_error` (500). An `aiohttp.web.HTTPException` the deployment raises is its answer.

The process entry point (`python -m replica`) is in `replica._cli`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from multidict import istr

from common import headers
from common.auth import data_path_token, is_authorized
from common.errors import error_response
from common.model_id import InvalidModelId, model_id_from_headers
from common.request_id import REQUEST_ID_HEADER, request_id_from
from common.wire import MAX_FAILURE_MESSAGE_CHARS, ReplicaSnapshot, encode_snapshot
from replica._cache import CacheClosed, Eviction, ModelSlotTimeout
from replica._context import RequestScope, request_context
from replica._deployment import open_caches
from replica._discovery import DEFAULT_INTERVAL_S, RouterName
from replica._prometheus import CONTENT_TYPE, ReplicaMetrics
from replica._reporter import Reporter
from replica._respond import respond
from replica._runtime import runtime
from replica._snapshot import DEFAULT_CAPACITY, build_snapshot, mean_load_ms, state_document

__all__ = ["COLD_HEADER", "REPLICA_HEADER", "ReplicaServer"]

logger = logging.getLogger("modelplex.replica")

REPLICA_HEADER = istr(headers.REPLICA_HEADER)
COLD_HEADER = istr(headers.COLD_HEADER)
EVICT_HEADER = istr(headers.EVICT_HEADER)
CREDENTIAL_HEADER = istr(headers.CREDENTIAL_HEADER)
REQUEST_ID = istr(REQUEST_ID_HEADER)
LOAD_FAILED_HEADER = istr(headers.LOAD_FAILED_HEADER)
CACHE_HEADER = istr(headers.CACHE_HEADER)
DEMAND_HEADER = istr(headers.DEMAND_HEADER)
_RETRY_AFTER = istr("Retry-After")
_RESERVED_METHODS = frozenset({"GET", "HEAD"})

Deployment = Callable[[web.Request], Any]


class ReplicaServer:
    """Serve one deployment instance over HTTP and report its caches to the routers.

    Lifecycle: build it, serve `app` (an `AppRunner`, or aiohttp's `TestServer`), call
    `start(url)` once the listening address is known, and `drain()` to stop: it reports
    draining, lets the requests still arriving finish, shuts the caches down (model cleanup
    runs), sends a final report and closes the channels. The caller then stops the listener.

    Building it creates the caches of the deployment's `@multiplexed` methods, so set
    `runtime.capacity_override`, `runtime.slot_timeout_s` and `runtime.max_concurrent_loads`
    first.
    """

    def __init__(
        self,
        deployment: Deployment,
        *,
        replica_id: str,
        routers: Sequence[str] = (),
        secret: str | None = None,
        max_ongoing_requests: int = 8,
        heartbeat_interval_s: float = 1.0,
        graceful_shutdown_timeout_s: float = 30.0,
        drain_quiet_s: float = 0.2,
        client_max_size_bytes: int = 64 * 1024 * 1024,
        routers_only: bool = False,
        router_names: Sequence[RouterName] = (),
        router_dns_interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        """`routers_only`: serve requests only from this cluster's routers (the replica listens
        beyond loopback, so clients could otherwise bypass the router); either way only a
        router's eviction hint is obeyed, and `/-/state` and `/-/load` need the secret.
        `router_names`: report also to every address these resolve to, looked up every
        `router_dns_interval_s` (`replica._discovery`)."""
        if (routers or router_names) and secret is None:
            raise ValueError("a secret is needed to report to routers")
        self.replica_id = replica_id
        self.incarnation = uuid.uuid4().hex
        self.url: str | None = None
        self.max_ongoing_requests = max_ongoing_requests
        self.graceful_shutdown_timeout_s = graceful_shutdown_timeout_s
        self.drain_quiet_s = drain_quiet_s
        self.in_flight = 0
        self.draining = False
        self._deployment = deployment
        self._sequence = -1
        self._last_arrival = 0.0
        self._idle: asyncio.Event | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self.reporter = Reporter(
            routers,
            secret=secret or "",
            build_snapshot=self.snapshot,
            heartbeat_interval_s=heartbeat_interval_s,
            router_names=router_names,
            discovery_interval_s=router_dns_interval_s,
        )
        self._metrics = ReplicaMetrics(replica_id=replica_id, in_flight=lambda: self.in_flight)
        open_caches(deployment)
        self.app = web.Application(client_max_size=client_max_size_bytes)
        self.app.router.add_route("*", "/-/healthz", self._healthz)
        self.app.router.add_route("*", "/-/state", self._state)
        self.app.router.add_route("*", "/-/metrics", self._metrics_text)
        self.app.router.add_post("/-/load", self._load)
        self.app.router.add_post("/-/evict", self._evict)
        self.app.router.add_post("/-/drain", self._drain_requested)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self._secret = secret
        self._data_token = data_path_token(secret) if secret else None
        self.routers_only = routers_only

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, url: str) -> None:
        """Advertise `url` to the routers and start reporting; raises ValueError if the
        replica id or the url cannot be reported."""
        self.url = url
        encode_snapshot(self.state())  # WireError (a ValueError) names what is wrong
        runtime.add_listener(lambda _event: self.reporter.notify())
        self.reporter.start()

    async def drain(self) -> None:
        """Stop gracefully; idempotent, and concurrent callers wait for the same drain."""
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        await asyncio.shield(self._drain_task)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.graceful_shutdown_timeout_s
        self.draining = True
        self._last_arrival = loop.time()
        self._idle = asyncio.Event()
        self.reporter.notify()
        logger.info("replica %s draining: %d requests in flight", self.replica_id, self.in_flight)
        await self._wait_until_quiet(deadline)
        remaining_s = max(deadline - loop.time(), 1.0)
        try:
            async with asyncio.timeout(remaining_s):
                for cache in runtime.caches():
                    await cache.shutdown()
        except TimeoutError:
            logger.warning("model cleanup did not finish within %.1f s; leaving it", remaining_s)
        await self.reporter.close(final_report=True)
        logger.info("replica %s drained", self.replica_id)

    async def _wait_until_quiet(self, deadline: float) -> None:
        """Until nothing is in flight and nothing arrived for `drain_quiet_s`, or `deadline`."""
        loop = asyncio.get_running_loop()
        assert self._idle is not None
        while True:
            now = loop.time()
            if now >= deadline:
                logger.warning(
                    "graceful shutdown timeout reached with %d requests in flight", self.in_flight
                )
                return
            if self.in_flight == 0:
                quiet_left = self._last_arrival + self.drain_quiet_s - now
                if quiet_left <= 0:
                    return
                await asyncio.sleep(min(quiet_left, deadline - now))
            else:
                self._idle.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), deadline - now)

    # -- state -----------------------------------------------------------------------------

    def snapshot(self) -> ReplicaSnapshot:
        """The next report: the state now, with the next sequence number (taken: each report
        is newer than the last, which is what a router checks before applying one)."""
        self._sequence += 1
        return self._snapshot(self._sequence)

    def state(self) -> ReplicaSnapshot:
        """The state now, for reading: it carries the sequence number the next report will
        take, and takes none."""
        return self._snapshot(self._sequence + 1)

    def _snapshot(self, sequence: int) -> ReplicaSnapshot:
        caches = runtime.caches()
        now = time.monotonic()
        override = runtime.capacity_override
        return build_snapshot(
            replica_id=self.replica_id,
            incarnation=self.incarnation,
            sequence=sequence,
            url=self.url or "",
            states=[cache.state() for cache in caches],
            fallback_capacity=DEFAULT_CAPACITY if override is None else override,
            fallback_max_concurrent_loads=runtime.max_concurrent_loads,
            in_flight=self.in_flight,
            max_ongoing_requests=self.max_ongoing_requests,
            draining=self.draining,
            load_ms_avg=mean_load_ms(cache.metrics for cache in caches),
            now=now,
            load_failures=[f for cache in caches for f in cache.recent_failures(now)],
        )

    # -- the request path ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        from_router = self._from_router(request)
        if self.routers_only and not from_router:
            message = "this replica serves its routers only: send the request to a router"
            return self._stamped(error_response(401, "unauthorized", message))
        try:
            model_id = model_id_from_headers(request.headers)
        except InvalidModelId as error:
            return self._stamped(error_response(400, "invalid_model_id", str(error)))
        self.in_flight += 1
        if self.draining:
            self._last_arrival = asyncio.get_running_loop().time()
        evict_hint = request.headers.get(EVICT_HEADER, "") if from_router else ""
        seed = _seed_hits(request.headers.get(DEMAND_HEADER)) if from_router else 0.0
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        try:
            with request_context(
                model_id, evict_hint=evict_hint, request_id=request_id, seed_hits=seed
            ) as scope:
                return await self._serve(request, scope)
        finally:
            self.in_flight -= 1
            if self._idle is not None and self.in_flight == 0:
                self._idle.set()

    async def _serve(self, request: web.Request, scope: RequestScope) -> web.StreamResponse:
        def stamp(response: web.StreamResponse) -> None:
            response.headers[REPLICA_HEADER] = self.replica_id
            response.headers[REQUEST_ID] = scope.request_id
            if scope.waited_for_load:
                response.headers[COLD_HEADER] = "1"

        try:
            result = self._deployment(request)
            if inspect.isawaitable(result):
                result = await result
            return await respond(request, result, stamp)
        except web.HTTPException as answer:
            stamp(answer)
            raise
        except ModelSlotTimeout as error:
            response = error_response(503, "model_slot_timeout", str(error))
            response.headers[_RETRY_AFTER] = "1"
        except CacheClosed as error:
            response = error_response(503, "draining", str(error))
            response.headers[_RETRY_AFTER] = "1"
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            if scope.failed_load is not None:
                logger.warning("loading model %r failed: %s", scope.failed_load, message)
                response = error_response(
                    500,
                    "model_load_failed",
                    f"loading model {scope.failed_load!r} failed: {message}",
                    model_id=scope.failed_load,
                    loader_error=message[:MAX_FAILURE_MESSAGE_CHARS],
                )
                response.headers[LOAD_FAILED_HEADER] = scope.failed_load
                stamp(response)
                return response
            logger.exception(
                "the deployment failed on %s %s (model %r)",
                request.method,
                request.path,
                scope.model_id,
            )
            response = error_response(500, "deployment_error", message)
        stamp(response)
        return response

    def _from_router(self, request: web.Request) -> bool:
        """The request carries a router's credential (`common.auth.data_path_token`)."""
        token = self._data_token
        return token is not None and is_authorized(request.headers.get(CREDENTIAL_HEADER), token)

    def _has_secret(self, request: web.Request) -> bool:
        secret = self._secret
        return secret is not None and is_authorized(request.headers.get("Authorization"), secret)

    def _operator_model_id(self, request: web.Request) -> str | web.StreamResponse:
        """The model id of a request from the router or an operator (`/-/load`, `/-/evict`),
        or the answer refusing it: 401 without the cluster secret, 400 for a bad id."""
        if not self._has_secret(request):
            return self._unauthorized()
        try:
            return model_id_from_headers(request.headers)
        except InvalidModelId as error:
            return self._stamped(error_response(400, "invalid_model_id", str(error)))

    def _unauthorized(self) -> web.StreamResponse:
        return self._stamped(error_response(401, "unauthorized", "the cluster secret is required"))

    def _stamped(self, response: web.StreamResponse) -> web.StreamResponse:
        response.headers[REPLICA_HEADER] = self.replica_id
        return response

    # -- reserved endpoints ----------------------------------------------------------------

    def _reserved(
        self, request: web.Request, answer: Callable[[], web.StreamResponse]
    ) -> web.StreamResponse:
        if request.method not in _RESERVED_METHODS:
            response = error_response(405, "method_not_allowed", f"{request.path} answers GET only")
            response.headers["Allow"] = "GET, HEAD"
            return self._stamped(response)
        return self._stamped(answer())

    async def _load(self, request: web.Request) -> web.StreamResponse:
        """Load a model with no request for it (the router wants another copy of a hot one).

        The model id is in the usual header; the router's eviction hint (`x-modelplex-evict`)
        applies in each cache that needs a slot. A deployment may have several `@multiplexed`
        loaders, each with its cache; the model goes to:
        - the cache(s) of the loader named by `x-modelplex-cache` (its qualified name, e.g.
          `Deployment.load_model`), when given: 404 `unknown_cache` if there is none;
        - else the caches that hold the model (resident or loading): it is theirs, and the load
          only marks it recently used, or waits for the load under way;
        - else every cache, as a request that uses each loader with the model id would. A
          deployment whose loaders share the ids out between them should name the cache, or have
          a loader refuse an id that is not its own (the others keep their copy).
        The answer comes once every load ended: 200 `{"loaded": id, "caches": [names]}`;
        503 `cannot_load` if no slot freed in time or the replica drains; 500 `load_failed` if
        a loader failed. Loading pins the model only until its load is done.
        """
        model_id = self._operator_model_id(request)
        if not isinstance(model_id, str):
            return model_id
        if not model_id or not runtime.caches():
            message = "a model id and a deployment with a @multiplexed loader are required"
            return self._stamped(error_response(400, "nothing_to_load", message))
        name = request.headers.get(CACHE_HEADER, "")
        caches = runtime.caches_for(model_id, name=name)
        if not caches:
            known = ", ".join(sorted({cache.name for cache in runtime.caches()}))
            message = f"no @multiplexed loader is named {name!r}; this replica has: {known}"
            return self._stamped(error_response(404, "unknown_cache", message))
        with request_context(
            model_id,
            evict_hint=request.headers.get(EVICT_HEADER, ""),
            seed_hits=_seed_hits(request.headers.get(DEMAND_HEADER)),
        ):
            outcomes = await asyncio.gather(
                *(cache.get(model_id) for cache in caches), return_exceptions=True
            )
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        for failure in failures:
            if not isinstance(failure, Exception):
                raise failure
        refused = [f for f in failures if isinstance(f, ModelSlotTimeout | CacheClosed)]
        if refused:
            return self._stamped(error_response(503, "cannot_load", str(refused[0])))
        if failures:
            for failure in failures:
                logger.error("prefetching model %r failed", model_id, exc_info=failure)
            message = f"{type(failures[0]).__name__}: {failures[0]}"
            return self._stamped(error_response(500, "load_failed", message))
        names = sorted({cache.name for cache in caches})
        return self._stamped(web.json_response({"loaded": model_id, "caches": names}))

    async def _evict(self, request: web.Request) -> web.StreamResponse:
        """Evict a model (an operator asked, through a router's admin API), never from under a
        request: a model no request holds leaves now, one in use or loading leaves when its
        last request ends. Meanwhile requests arriving still use it, but the replica no
        longer reports it, so the routers stop sending them and its requests run out.

        The model id is in the usual header; `x-modelplex-cache` limits it to one loader's
        cache. 200 `{"model": id, "caches": {name: "evicted" | "after_requests"}}`, naming
        the caches that held it (none: `{}`); 404 `unknown_cache`.
        """
        model_id = self._operator_model_id(request)
        if not isinstance(model_id, str):
            return model_id
        if not model_id:
            return self._stamped(error_response(400, "nothing_to_evict", "a model id is required"))
        name = request.headers.get(CACHE_HEADER, "")
        caches = [cache for cache in runtime.caches() if not name or cache.name == name]
        if name and not caches:
            message = f"no @multiplexed loader is named {name!r}"
            return self._stamped(error_response(404, "unknown_cache", message))
        outcomes = {cache.name: await cache.evict(model_id) for cache in caches}
        held = {name: o.value for name, o in outcomes.items() if o is not Eviction.ABSENT}
        if held:
            logger.info("replica %s evicting %r: %s", self.replica_id, model_id, held)
        self.reporter.notify()
        return self._stamped(web.json_response({"model": model_id, "caches": held}))

    async def _drain_requested(self, request: web.Request) -> web.StreamResponse:
        """Start the drain a stop signal starts (`drain`), without stopping the process:
        202 `{"draining": replica_id}` at once; the drain goes on in the background."""
        if not self._has_secret(request):
            return self._unauthorized()
        if self._drain_task is None:
            logger.info("replica %s asked to drain", self.replica_id)
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        return self._stamped(web.json_response({"draining": self.replica_id}, status=202))

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        def answer() -> web.StreamResponse:
            if self.draining:
                return web.json_response({"status": "draining"}, status=503)
            return web.json_response({"status": "ok"})

        return self._reserved(request, answer)

    async def _state(self, request: web.Request) -> web.StreamResponse:
        if not self._has_secret(request):
            return self._unauthorized()
        return self._reserved(
            request,
            lambda: web.json_response(state_document(self.state(), self.reporter.routers)),
        )

    async def _metrics_text(self, request: web.Request) -> web.StreamResponse:
        if self.routers_only and not self._has_secret(request):
            return self._unauthorized()  # Prometheus: `authorization: {credentials: SECRET}`
        return self._reserved(
            request,
            lambda: web.Response(
                body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE}
            ),
        )


def _seed_hits(value: str | None) -> float:
    """The router's count of a model's requests (`x-modelplex-demand`); 0 when absent or not
    a plain count (it only seeds a new load's hits, so a bad one is ignored, not refused)."""
    if not value or len(value) > 12 or not (value.isascii() and value.isdigit()):
        return 0.0
    return float(value)
