"""The chaos benchmark's load: closed-loop aiohttp clients, and what became of each request.

`Load` runs `concurrency` clients on one keep-alive `aiohttp` session until `stop()`. Each
client draws its next request from a seeded `random.Random`: a model id, and a shape — a plain
GET (with a short `sleep=`), a streamed GET (`stream=N`), or a POST with a small JSON body —
then waits `think_s` on average (uniform from 0 to twice that) and sends the next; after a
failed request it waits `failure_pause_s` instead, as a client that backs off a little, so an
outage of the router costs a number of failures that scales with its length, not with how fast
a refused connect returns. Requests for a `fail-load-*` id are sent only while
`fail_load_share` is above zero (the fail-load fault sets it) and are marked `expected`.

Every request has a client deadline (`deadline_s`, whole answer included) and ends as one
`Outcome` with a `kind`: "ok" for a complete 2xx answer, otherwise the first that applies of
`client_timeout` (no complete answer by the deadline: a hang), `connection_refused`,
`connection_reset` (at connect, or before the status line), `truncated_stream` /
`truncated_body` (the answer broke after its status line, or a stream had fewer chunks than
asked), `wrong_answer` (2xx with another model's JSON), `<status>:<error code>` for an HTTP
error with the JSON error body the router and replicas send, `<status>` for one without,
`client_error:<exception>` for anything else. The client never
retries: the router's retries are what is measured.
"""

from __future__ import annotations

import asyncio
import errno
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

MODEL_HEADER = "serve_multiplexed_model_id"
REPLICA_HEADER = "x-modelplex-replica"
FAIL_LOAD_PREFIX = "fail-load"


@dataclass(frozen=True, slots=True)
class RequestShape:
    """One request to send: where, how, and what a complete answer looks like."""

    model_id: str
    method: str
    query: str
    body: bytes | None
    stream_chunks: int | None
    expected: bool

    @property
    def idempotent(self) -> bool:
        return self.method == "GET"

    @property
    def shape(self) -> str:
        if self.stream_chunks is not None:
            return "stream"
        return "post" if self.method == "POST" else "get"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one request; times are `time.monotonic()` seconds."""

    start: float
    end: float
    model_id: str
    shape: str
    idempotent: bool
    expected: bool
    kind: str
    replica: str

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


@dataclass(frozen=True, kw_only=True)
class Mix:
    """The request mix: shares of each shape (the rest are plain GETs) and their knobs."""

    models: tuple[str, ...]
    stream_share: float = 0.25
    post_share: float = 0.15
    stream_chunks: int = 5
    stream_interval_s: float = 0.04
    max_sleep_s: float = 0.15
    post_body_bytes: int = 200

    def draw(self, rng: random.Random, *, fail_load_share: float) -> RequestShape:
        if fail_load_share > 0 and rng.random() < fail_load_share:
            model_id = f"{FAIL_LOAD_PREFIX}-{rng.randrange(4)}"
            return RequestShape(model_id, "GET", "", None, None, expected=True)
        model_id = rng.choice(self.models)
        roll = rng.random()
        if roll < self.stream_share:
            chunks = self.stream_chunks
            query = f"stream={chunks}&interval={self.stream_interval_s:g}"
            return RequestShape(model_id, "GET", query, None, chunks, expected=False)
        sleep = f"sleep={rng.uniform(0, self.max_sleep_s):.3f}"
        if roll < self.stream_share + self.post_share:
            payload = {"features": "x" * max(0, self.post_body_bytes - 20)}
            body = json.dumps(payload).encode()
            return RequestShape(model_id, "POST", sleep, body, None, expected=False)
        return RequestShape(model_id, "GET", sleep, None, None, expected=False)


def _error_kind(status: int, body: bytes) -> str:
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return str(status)
    return f"{status}:{code}"


def _transport_kind(error: BaseException, *, answered: bool, stream: bool) -> str:
    """The kind of a request that ended with `error`; `answered`: its status line had come."""
    if isinstance(error, TimeoutError):
        return "client_timeout"
    if answered or isinstance(error, aiohttp.ClientPayloadError):
        return "truncated_stream" if stream else "truncated_body"
    if isinstance(error, aiohttp.ClientConnectorError):
        if error.os_error.errno == errno.ECONNREFUSED:
            return "connection_refused"
        if error.os_error.errno == errno.ECONNRESET:  # accepted by a router that then died
            return "connection_reset"
        return f"connect_error:{errno.errorcode.get(error.os_error.errno or 0, '?')}"
    if isinstance(error, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return "connection_reset"
    if isinstance(error, aiohttp.ClientOSError) and error.errno in (
        errno.ECONNRESET,
        errno.EPIPE,
    ):
        return "connection_reset"
    return f"client_error:{type(error).__name__}"


class Load:
    """Closed-loop clients against `url` until `stop()`; `outcomes` holds every answer."""

    def __init__(
        self,
        url: str,
        mix: Mix,
        *,
        concurrency: int,
        deadline_s: float,
        think_s: float,
        failure_pause_s: float = 0.1,
        seed: int,
    ) -> None:
        self.url = url
        self.mix = mix
        self.concurrency = concurrency
        self.deadline_s = deadline_s
        self.think_s = think_s
        self.failure_pause_s = failure_pause_s
        self.fail_load_share = 0.0
        self.outcomes: list[Outcome] = []
        self._seed = seed
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._tasks = [
            asyncio.create_task(self._client(random.Random(f"{self._seed}:{i}")))
            for i in range(self.concurrency)
        ]

    def in_flight_at(self, instant: float) -> list[Outcome]:
        """Recorded requests that started before `instant` and ended after it."""
        return [o for o in self.outcomes if o.start < instant < o.end]

    async def stop(self) -> None:
        """Send no more requests; wait for those in flight (each ends by its deadline)."""
        self._stopping.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _client(self, rng: random.Random) -> None:
        while not self._stopping.is_set():
            shape = self.mix.draw(rng, fail_load_share=self.fail_load_share)
            outcome = await self.send(shape)
            self.outcomes.append(outcome)
            if not outcome.ok:
                await asyncio.sleep(self.failure_pause_s)
            elif self.think_s:
                await asyncio.sleep(rng.uniform(0, 2 * self.think_s))

    async def send(self, request: RequestShape) -> Outcome:
        """Send one request and classify its end; never raises for a failed request."""
        assert self._session is not None
        start = time.monotonic()
        answered = False
        replica = ""
        kind: str
        url = f"{self.url}/predict{'?' + request.query if request.query else ''}"
        headers = {MODEL_HEADER: request.model_id}
        if request.body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with (
                asyncio.timeout(self.deadline_s),
                self._session.request(
                    request.method, url, headers=headers, data=request.body
                ) as response,
            ):
                answered = True
                replica = response.headers.get(REPLICA_HEADER, "")
                kind = await self._read(request, response)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            kind = _transport_kind(error, answered=answered, stream=request.shape == "stream")
        return Outcome(
            start=start,
            end=time.monotonic(),
            model_id=request.model_id,
            shape=request.shape,
            idempotent=request.idempotent,
            expected=request.expected,
            kind=kind,
            replica=replica,
        )

    @staticmethod
    async def _read(request: RequestShape, response: aiohttp.ClientResponse) -> str:
        if response.status >= 300:
            return _error_kind(response.status, await response.read())
        if request.stream_chunks is not None:
            lines = 0
            async for line in response.content:
                if line.startswith(b"chunk "):
                    lines += 1
            return "ok" if lines == request.stream_chunks else "truncated_stream"
        body = await response.read()
        try:
            answer: Any = json.loads(body)
        except ValueError:
            return "wrong_answer"
        if not isinstance(answer, dict) or answer.get("model") != request.model_id:
            return "wrong_answer"
        return "ok"
