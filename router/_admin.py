"""The router's admin API: every route under `/-/admin/`, each behind the cluster secret.

    GET  /-/admin/models                            where each model is, how often it is asked for
    POST /-/admin/preload {"model": id, "copies": n}  load it until n routable replicas hold it
    POST /-/admin/evict   {"model": id, "replica": r?}  evict it from r, or from every replica
    POST /-/admin/drain   {"replica": r}              stop routing to r and have it drain

Each takes effect in the router's view at once, through the view's own methods (`prefetch`,
`evicted`, `drain`), before the replica is asked: routing follows the operator's word
immediately, and the replica's next report confirms it. The replicas are asked over their own
secret-protected endpoints (`/-/load`, `/-/evict`, `/-/drain`). What they guarantee:
- preload: the copies are placed as the policy places a cold model (`Policy.choose`, avoiding
  the replicas that hold it), loading at once; the answer names them and does not wait for
  the loads, whose outcome arrives in reports (a failure as a load failure);
- evict: never from under a request: the replica drops the model once its last request ends
  and stops reporting it at once, so no router sends it more;
- drain: the drain a stop signal starts; the replica finishes its requests, unloads its models
  and leaves the view, while its process stays up until it is stopped.
Errors are the usual JSON (`common.errors`): 401 `unauthorized`, 400 `bad_request`, 404
`unknown_replica`, 502 `replica_failed` (the view changed; the replica did not answer), 503
`no_slot` (a preload could place no copy).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from common.auth import authorization_value, is_authorized
from common.errors import error_response
from common.model_id import MODEL_ID_HEADERS, InvalidModelId, validate_model_id
from router._forward import error_message
from router.policy import Policy, Prefetch, Route
from router.view import ClusterView, ReplicaView

__all__ = ["ADMIN_PREFIX", "AdminRoutes", "models_document", "plan_preload"]

ADMIN_PREFIX = "/-/admin"
_REPLICA_TIMEOUT_S = 30.0  # an eviction waits for the model's cleanup when it is free

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(ValueError):
    """The body is not what the route takes; the message says what is."""


class UnknownReplica(LookupError):
    """The body names a replica the view does not know."""


def models_document(view: ClusterView, now: float) -> dict[str, Any]:
    """`GET /-/admin/models`: every model the view holds or was asked for in the last minute,
    with its copies (replica, loaded or loading, idle seconds, this router's requests in
    flight) and its requests per minute, sorted by model id."""
    rates = view.demand.per_minute(now)
    models = []
    for model_id in sorted(view.holders.keys() | rates.keys()):
        copies = []
        for replica in sorted(view.holders_of(model_id), key=lambda r: r.replica_id):
            copy = replica.models[model_id]
            copies.append(
                {
                    "replica": replica.replica_id,
                    "replica_state": replica.status.value,
                    "state": "loading" if copy.loading else "loaded",
                    "idle_s": round(max(0.0, now - copy.last_used), 3),
                    "in_flight": copy.in_flight,
                    "in_use": copy.in_use,
                }
            )
        models.append(
            {
                "model": model_id,
                "requests_per_minute": rates.get(model_id, 0.0),
                "waiting": view.demand.waiting.get(model_id, 0),
                "replicas": copies,
            }
        )
    return {"models": models}


def plan_preload(
    view: ClusterView, policy: Policy, model_id: str, copies: int, now: float
) -> tuple[list[str], list[Prefetch]]:
    """The routable replicas holding `model_id`, and the loads that bring its copies up to
    `copies`: each placed by the policy like a cold request, avoiding the replicas that hold it
    or were chosen already, and recorded in the view (`prefetch`) so the next choice sees it.
    Fewer loads when the policy finds no slot (every one is held, or worth waiting for)."""
    holding = sorted(r.replica_id for r in view.holders_of(model_id) if r.routable)
    avoid = {r.replica_id for r in view.holders_of(model_id)}
    plan: list[Prefetch] = []
    while len(holding) + len(plan) < copies:
        decision = policy.choose(view, model_id, now, avoid=frozenset(avoid))
        if not isinstance(decision, Route):
            break
        replica = decision.replica
        if replica.replica_id in avoid or model_id in replica.models:
            break
        view.prefetch(replica.replica_id, model_id, now, evict=decision.evict)
        plan.append(Prefetch(replica, model_id, decision.evict))
        avoid.add(replica.replica_id)
    return holding, plan


class AdminRoutes:
    """Translates the admin routes to view and policy calls and to requests to replicas."""

    def __init__(
        self,
        *,
        view: ClusterView,
        policy: Policy,
        secret: str,
        clock: Callable[[], float],
        session: Callable[[], aiohttp.ClientSession | None],
        prefetch: Callable[[Prefetch], None],
    ) -> None:
        """`session`: the router's client session (None before it started); `prefetch`: how
        the router asks a replica to load a model (`RouterServer._start_prefetch`). The view's
        demand starts counting requests per minute (`Demand.track_rates`) on `clock`."""
        self.view = view
        self.policy = policy
        self.clock = clock
        self._secret = secret
        self._session = session
        self._prefetch = prefetch
        view.demand.track_rates(clock)

    def register(self, app: web.Application) -> None:
        """Add the routes (before any catch-all route)."""
        app.router.add_get(f"{ADMIN_PREFIX}/models", self._locked(self._models))
        app.router.add_post(f"{ADMIN_PREFIX}/preload", self._locked(self._preload))
        app.router.add_post(f"{ADMIN_PREFIX}/evict", self._locked(self._evict))
        app.router.add_post(f"{ADMIN_PREFIX}/drain", self._locked(self._drain))
        app.router.add_route("*", ADMIN_PREFIX + "/{tail:.*}", self._locked(self._unknown))

    def _locked(self, handler: Handler) -> Handler:
        async def locked(request: web.Request) -> web.StreamResponse:
            if not is_authorized(request.headers.get("Authorization"), self._secret):
                return error_response(401, "unauthorized", "the cluster secret is required")
            try:
                return await handler(request)
            except BadRequest as exc:
                return error_response(400, "bad_request", str(exc))
            except UnknownReplica as exc:
                return error_response(404, "unknown_replica", str(exc))

        return locked

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        routes = "GET models, POST preload, POST evict, POST drain"
        message = f"no admin route {request.method} {request.path}; there are: {routes}"
        return error_response(404, "not_found", message)

    # -- the routes ------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(models_document(self.view, self.clock()))

    async def _preload(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        model_id = _model_id(body)
        copies = body.get("copies", 1)
        if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
            raise BadRequest(f'"copies" must be a positive integer, not {copies!r}')
        holding, plan = plan_preload(self.view, self.policy, model_id, copies, self.clock())
        for prefetch in plan:
            self._prefetch(prefetch)
        placed = [p.replica.replica_id for p in plan]
        if not placed and len(holding) < copies:
            return error_response(
                503,
                "no_slot",
                f"no replica can load another copy of {model_id!r} now (every slot is in use)",
                model=model_id,
                holding=holding,
            )
        return web.json_response(
            {
                "model": model_id,
                "copies": copies,
                "holding": holding,
                "loading": placed,
                "evicting": {p.replica.replica_id: p.evict for p in plan if p.evict},
            }
        )

    async def _evict(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        model_id = _model_id(body)
        replica_id = body.get("replica")
        if replica_id is not None:
            targets = [self._replica(replica_id)]
        else:
            targets = sorted((r for r in self.view if not r.down), key=lambda r: r.replica_id)
        for replica in targets:
            self.view.evicted(replica.replica_id, model_id)
        answers = await asyncio.gather(
            *(self._ask(r, "/-/evict", model_id) for r in targets), return_exceptions=True
        )
        outcomes: dict[str, str] = {}
        errors: dict[str, str] = {}
        for replica, answer in zip(targets, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, Exception):
                    raise answer
                errors[replica.replica_id] = str(answer)
                continue
            self.view.evicted(replica.replica_id, model_id)  # a report may have raced the ask
            caches = set(answer.get("caches", {}).values())
            outcome = "after_requests" if "after_requests" in caches else None
            outcomes[replica.replica_id] = outcome or ("evicted" if caches else "not_held")
        if errors:
            failed = ", ".join(sorted(errors))
            return error_response(
                502,
                "replica_failed",
                f"replicas {failed} did not evict {model_id!r}",
                model=model_id,
                replicas=outcomes,
                errors=errors,
            )
        return web.json_response({"model": model_id, "replicas": outcomes})

    async def _drain(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        replica = self._replica(body.get("replica"))
        self.view.drain(replica.replica_id)
        try:
            await self._ask(replica, "/-/drain", "")
        except Exception as exc:
            return error_response(
                502,
                "replica_failed",
                f"not routing to {replica.replica_id} any more, but it did not drain: {exc}",
                replica=replica.replica_id,
            )
        self.view.drain(replica.replica_id)  # a report may have raced the ask
        return web.json_response({"replica": replica.replica_id, "state": "draining"})

    # -- helpers ---------------------------------------------------------------------------

    def _replica(self, replica_id: object) -> ReplicaView:
        if not isinstance(replica_id, str) or not replica_id:
            raise BadRequest(f'"replica" must be a replica id, not {replica_id!r}')
        replica = self.view.replicas.get(replica_id)
        if replica is None:
            known = ", ".join(sorted(self.view.replicas)) or "none"
            raise UnknownReplica(f"no replica {replica_id!r} in the view; there are: {known}")
        return replica

    async def _ask(self, replica: ReplicaView, path: str, model_id: str) -> dict[str, Any]:
        """POST to a replica's endpoint with the secret; its JSON answer, or an exception
        whose message says why not."""
        session = self._session()
        if session is None:
            raise RuntimeError("the router is not started")
        headers = {"Authorization": authorization_value(self._secret)}
        if model_id:
            headers[MODEL_ID_HEADERS[0]] = model_id
        timeout = aiohttp.ClientTimeout(total=_REPLICA_TIMEOUT_S)
        try:
            async with session.post(replica.url + path, headers=headers, timeout=timeout) as got:
                data = await got.read()
                if got.status >= 300:
                    message = error_message(data) or data.decode(errors="replace")
                    raise RuntimeError(f"HTTP {got.status}: {message}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc
        try:
            answer = json.loads(data)
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _model_id(body: dict[str, Any]) -> str:
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise BadRequest(f'"model" must be a model id, not {model_id!r}')
    try:
        return validate_model_id(model_id)
    except InvalidModelId as exc:
        raise BadRequest(str(exc)) from None
