"""Per-request context: the model id of the request being served and the pins it holds.

The replica server opens one `request_context` per HTTP request. Inside it,
`get_multiplexed_model_id()` returns that request's model id, and every model the request
obtains from a multiplexed cache stays pinned (never evicted) until the context closes.
Context variables are copied into each asyncio task, so concurrent requests never see each
other's ids or pins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["RequestScope", "current_scope", "get_multiplexed_model_id", "request_context"]

_model_id: ContextVar[str] = ContextVar("modelplex_model_id", default="")
_scope: ContextVar[RequestScope | None] = ContextVar("modelplex_request_scope", default=None)


class RequestScope:
    """What one request holds: its model id, its pins, and whether it waited for a load."""

    __slots__ = (
        "_releases",
        "closed",
        "evict_hint",
        "failed_load",
        "model_id",
        "request_id",
        "seed_hits",
        "waited_for_load",
    )

    def __init__(
        self, model_id: str, evict_hint: str = "", request_id: str = "", seed_hits: float = 0.0
    ) -> None:
        self.model_id = model_id
        self.seed_hits = seed_hits  # the router's count of the model's requests, for a new load
        self.request_id = request_id
        self.evict_hint = evict_hint  # the model the router asked this replica to give up
        self.waited_for_load = False
        self.failed_load: str | None = None  # a model whose load failed under this request
        self.closed = False
        self._releases: list[Callable[[], None]] = []

    def hold(self, release: Callable[[], None]) -> None:
        """Keep a pin until the request ends; `release` undoes it exactly once."""
        if self.closed:
            release()
        else:
            self._releases.append(release)

    def release_all(self) -> None:
        self.closed = True
        releases, self._releases = self._releases, []
        for release in reversed(releases):
            release()


def get_multiplexed_model_id() -> str:
    """The model id of the request being served, or "" when the request named none."""
    return _model_id.get()


def get_request_id() -> str:
    """The id of the request being served (its `x-request-id`), or "" outside a request."""
    scope = _scope.get()
    return scope.request_id if scope is not None else ""


def current_scope() -> RequestScope | None:
    return _scope.get()


@contextmanager
def request_context(
    model_id: str, *, evict_hint: str = "", request_id: str = "", seed_hits: float = 0.0
) -> Iterator[RequestScope]:
    """Serve one request for `model_id`: set the id and release the request's pins at the end.

    The replica server wraps every request in this; tests use it to call a deployment as a
    request would. `evict_hint` names the model to give up if this request needs a slot
    (the router's choice); when it cannot be evicted the cache's own LRU rule applies.
    `seed_hits`: the router's count of the model's requests, where a new load's hits start.
    """
    scope = RequestScope(model_id, evict_hint, request_id, seed_hits)
    id_token = _model_id.set(model_id)
    scope_token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(scope_token)
        _model_id.reset(id_token)
        scope.release_all()
