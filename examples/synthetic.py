"""A deployment with knobs, for the tests and the benchmark: fake models whose load time,
inference time, failures and answers are chosen per deployment and per request.

Init kwargs (the config's `deployment.init_kwargs`):

    load_s       seconds every model load takes
    infer_s      seconds every request takes once its model is loaded
    fail_load    model ids whose load fails; ids starting with "fail-load" always fail
    max_num_models_per_replica
                 this instance's cache capacity (-1: no limit); None keeps the decorator's 3,
                 or the config's deployment-wide override when it sets one
    load_parallelism
                 loads the simulated hardware runs at once (per instance, so per replica
                 process); more loads wait inside the loader before their load_s. None: no
                 limit. The cache does not know of it: the config's
                 deployment.max_concurrent_loads is what tells the cache, and so the router

Query parameters, per request (any method, any path):

    sleep=S        spend S seconds instead of infer_s
    stream=N       answer with N chunks "chunk 0\\n" ... "chunk N-1\\n", streamed
    interval=S     seconds between streamed chunks (default 0.05)
    echo=1         answer with the request body as is (application/octet-stream)
    status=CODE    answer the JSON with this status code (200-599)
    fail=1         raise RuntimeError once the model is loaded: a 500
    hang=1         never answer, until the request is cancelled
    crash=1        os._exit(1) at once: the replica process dies

A request runs: crash; load its model (none when it names no model id); read its body; fail;
hang; sleep; answer. At most one of stream, echo and status may be given. The default answer is
JSON `{"model", "pid", "replica", "loads", "loaded_at"}`, plus "body_bytes" when the request
has a body; "replica" is `$MODELPLEX_REPLICA_ID`. A knob with a bad value is a 400 JSON error
with code "invalid_query".

`LOADS` and `UNLOADS` count, in this process, the models loaded and the models unloaded (whose
`__del__` ran).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from replica import get_multiplexed_model_id, multiplexed

__all__ = [
    "LOADS",
    "UNLOADS",
    "InvalidKnob",
    "Knobs",
    "SyntheticModel",
    "SyntheticModels",
    "parse_knobs",
]

LOADS = 0
UNLOADS = 0

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class SyntheticModel:
    """A loaded fake model; `loaded_at` is the wall-clock time of its load, in seconds."""

    __slots__ = ("loaded_at", "model_id")

    def __init__(self, model_id: str, loaded_at: float) -> None:
        self.model_id = model_id
        self.loaded_at = loaded_at

    def __repr__(self) -> str:
        return f"SyntheticModel({self.model_id!r}, loaded_at={self.loaded_at})"

    def __del__(self) -> None:
        global UNLOADS
        UNLOADS += 1


class InvalidKnob(ValueError):
    """A query parameter with a value the knob does not accept."""


@dataclass(frozen=True, slots=True)
class Knobs:
    """What one request asks the deployment to do, read from its query string."""

    sleep_s: float
    stream: int | None = None
    interval_s: float = 0.05
    echo: bool = False
    status: int | None = None
    fail: bool = False
    hang: bool = False
    crash: bool = False


def parse_knobs(query: Mapping[str, str], *, infer_s: float) -> Knobs:
    """Read the knobs of one request; unknown parameters are ignored."""
    stream = _count(query, "stream")
    status = _count(query, "status")
    if status is not None and not 200 <= status <= 599:
        raise InvalidKnob(f"status must be from 200 to 599, got {status}")
    echo = _flag(query, "echo")
    shapes = [
        name
        for name, given in (
            ("stream", stream is not None),
            ("echo", echo),
            ("status", status is not None),
        )
        if given
    ]
    if len(shapes) > 1:
        raise InvalidKnob(f"give at most one of stream, echo and status, got {', '.join(shapes)}")
    sleep_s = _seconds(query, "sleep")
    interval_s = _seconds(query, "interval")
    return Knobs(
        sleep_s=infer_s if sleep_s is None else sleep_s,
        stream=stream,
        interval_s=0.05 if interval_s is None else interval_s,
        echo=echo,
        status=status,
        fail=_flag(query, "fail"),
        hang=_flag(query, "hang"),
        crash=_flag(query, "crash"),
    )


def _flag(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None or value.lower() in _FALSE:
        return False
    if value.lower() in _TRUE:
        return True
    raise InvalidKnob(f"{name} must be 1 or 0, got {value!r}")


def _count(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    if not value.isdecimal() or len(value) > 9:
        raise InvalidKnob(f"{name} must be a whole number >= 0, got {value!r}")
    return int(value)


def _seconds(query: Mapping[str, str], name: str) -> float | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise InvalidKnob(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


class SyntheticModels:
    """Fake models with configurable load time, inference time and load failures."""

    def __init__(
        self,
        *,
        load_s: float = 0.0,
        infer_s: float = 0.0,
        fail_load: list[str] | None = None,
        max_num_models_per_replica: int | None = None,
        load_parallelism: int | None = None,
    ) -> None:
        self.load_s = _checked_seconds("load_s", load_s)
        self.infer_s = _checked_seconds("infer_s", infer_s)
        self.fail_load = frozenset(_checked_ids(fail_load or []))
        if load_parallelism is not None:
            if isinstance(load_parallelism, bool) or not isinstance(load_parallelism, int):
                raise TypeError(f"load_parallelism must be an integer, got {load_parallelism!r}")
            if load_parallelism < 1:
                raise ValueError(f"load_parallelism must be >= 1, got {load_parallelism}")
        self.load_parallelism = load_parallelism
        self._hardware: asyncio.Semaphore | None = None  # made in the running loop, when needed
        if max_num_models_per_replica is not None:
            capacity = max_num_models_per_replica
            if isinstance(capacity, bool) or not isinstance(capacity, int):
                raise TypeError(f"max_num_models_per_replica must be an integer, got {capacity!r}")
            if capacity != -1 and capacity <= 0:
                raise ValueError(f"max_num_models_per_replica must be -1 or > 0, got {capacity}")
            type(self).load_model.cache_for(self).capacity = capacity

    @multiplexed(max_num_models_per_replica=3)
    async def load_model(self, model_id: str) -> SyntheticModel:
        global LOADS
        if self.load_parallelism is None:
            await self._load_time()
        else:
            if self._hardware is None:
                self._hardware = asyncio.Semaphore(self.load_parallelism)
            async with self._hardware:
                await self._load_time()
        if model_id in self.fail_load or model_id.startswith("fail-load"):
            raise RuntimeError(f"synthetic load failure for {model_id}")
        LOADS += 1
        return SyntheticModel(model_id, time.time())

    async def _load_time(self) -> None:
        if self.load_s:
            await asyncio.sleep(self.load_s)

    async def __call__(
        self, request: web.Request
    ) -> dict[str, Any] | bytes | web.StreamResponse | AsyncIterator[str]:
        try:
            knobs = parse_knobs(request.query, infer_s=self.infer_s)
        except InvalidKnob as error:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": {"code": "invalid_query", "message": str(error)}}),
                content_type="application/json",
            ) from None
        if knobs.crash:
            os._exit(1)
        model_id = get_multiplexed_model_id()
        model: SyntheticModel | None = await self.load_model(model_id) if model_id else None
        body, body_bytes = await _read_body(request, keep=knobs.echo)
        if knobs.fail:
            raise RuntimeError(f"synthetic request failure for {model_id or 'no model'}")
        if knobs.hang:
            await asyncio.Event().wait()
        if knobs.sleep_s:
            await asyncio.sleep(knobs.sleep_s)

        if knobs.stream is not None:
            return _chunks(knobs.stream, knobs.interval_s)
        if knobs.echo:
            return body
        answer: dict[str, Any] = {
            "model": model_id,
            "pid": os.getpid(),
            "replica": os.environ.get("MODELPLEX_REPLICA_ID", ""),
            "loads": LOADS,
            "loaded_at": None if model is None else model.loaded_at,
        }
        if request.body_exists:
            answer["body_bytes"] = body_bytes
        if knobs.status is not None:
            if knobs.status in (204, 304):
                return web.Response(status=knobs.status)
            return web.json_response(answer, status=knobs.status)
        return answer


async def _read_body(request: web.Request, *, keep: bool) -> tuple[bytes, int]:
    """Read the whole body as it streams in, and its size; keep it only when asked to."""
    kept: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if keep:
            kept.append(chunk)
    return b"".join(kept), size


async def _chunks(count: int, interval_s: float) -> AsyncIterator[str]:
    for i in range(count):
        if i and interval_s:
            await asyncio.sleep(interval_s)
        yield f"chunk {i}\n"


def _checked_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not 0 <= value < math.inf:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return float(value)


def _checked_ids(ids: object) -> list[str]:
    if not isinstance(ids, list | tuple | set | frozenset) or not all(
        isinstance(i, str) for i in ids
    ):
        raise TypeError(f"fail_load must be a list of model ids, got {ids!r}")
    return [str(i) for i in ids]
