"""The placement lease: several routers agree where a cold model goes, through Redis.

Routers choose a cold model's replica from what they all read alike in the replicas' reports,
so they agree without talking (`router.policy`), except while one of them has sent requests the
others cannot know of yet. For that, with `router.placement_lease_url` set, a router about to
place a model no replica holds claims the key `<namespace>:place:<model id>` for the replica it
chose, in one atomic call (a Lua script: the holder if a lease is live, else this router's
choice, stored with a TTL). The first claim wins; a router that loses sends its request where
the winner placed the model. Redis is an existing engine: nothing here is a protocol of ours.

A claim carries its age by Redis's clock (one clock for every router). A lease older than
`FRESH_S` whose replica does not show the model in this router's view is stale (the model was
evicted since, or its load failed): the router keeps its own choice rather than send the model
back to a replica that has just given it up. A younger one is always followed, since the
winner's request may not have reached its replica yet.

Failures never stop routing: a claim that errs, or takes longer than `timeout_s`, returns None
and the router keeps its own choice. After a failure no claim is tried for `retry_s`, so an
outage costs one timeout rather than one per cold request; it is logged once per streak.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Claim", "PlacementLease", "lease_namespace"]

logger = logging.getLogger("modelplex.router.lease")

_CLAIM: Final = """
local clock = redis.call('TIME')
local now = tostring(clock[1] * 1000 + math.floor(clock[2] / 1000))
local held = redis.call('GET', KEYS[1])
if held then return {held, now} end
local claim = now .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], claim, 'PX', ARGV[2])
return {claim, now}
"""
FRESH_S: Final = 0.25
"""A lease this young is followed whatever the view shows: the winner's request may still be
on its way to the replica, whose reports cannot show the model yet."""
_ERRORS: Final = (OSError, asyncio.TimeoutError, UnicodeDecodeError)


@dataclass(frozen=True, slots=True)
class Claim:
    """Who holds a placement: the replica, and how long ago it was claimed (Redis's clock)."""

    replica_id: str
    age_s: float


def lease_namespace(secret: str) -> str:
    """The key prefix of one cluster: routers sharing a secret share leases, and two clusters
    on one Redis never see each other's."""
    return "modelplex:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


class PlacementLease:
    """Claims on cold placements, in one Redis shared by a cluster's routers."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        namespace: str,
        timeout_s: float = 0.05,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from redis.asyncio import Redis  # imported only by routers that use a lease
        from redis.exceptions import RedisError

        self._redis: Redis = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._script: Any = self._redis.register_script(_CLAIM)
        self._errors = (*_ERRORS, RedisError)
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._namespace = namespace
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._clock = clock
        self._skip_until = -float("inf")
        self.failing = False  # the last claim failed

    async def claim(self, model_id: str, replica_id: str) -> Claim | None:
        """Where `model_id` goes: `replica_id` (age 0) if this claim won, the winner's claim if
        another router's came first, None if Redis did not answer in time (or holds something
        unreadable)."""
        if self._clock() < self._skip_until:
            return None
        key = f"{self._namespace}:place:{model_id}"
        try:
            async with asyncio.timeout(self.timeout_s):
                held, now = await self._script(keys=[key], args=[replica_id, self._ttl_ms])
            claimed_at, _, holder = _text(held).partition(" ")
            claim = Claim(holder, max(0.0, (int(_text(now)) - int(claimed_at)) / 1000))
        except (*self._errors, ValueError) as exc:
            self._skip_until = self._clock() + self.retry_s
            if not self.failing:
                logger.warning(
                    "placement lease unavailable (%s: %s); routing on this router's own "
                    "choices, retrying every %g s",
                    type(exc).__name__,
                    exc or "no answer in time",
                    self.retry_s,
                )
            self.failing = True
            return None
        if self.failing:
            logger.info("placement lease available again")
            self.failing = False
        return claim

    async def close(self) -> None:
        await self._redis.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
