"""The state channel: what the replica reports to its routers, when, and how it reconnects."""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from common.auth import is_authorized
from common.config import parse_config
from common.wire import CHANNEL_PATH, ReplicaSnapshot, WireError, decode_snapshot, encode_error
from replica import get_multiplexed_model_id, multiplexed
from replica._cache_core import CacheState, ResidentModel
from replica._metrics import CacheMetrics
from replica._runtime import runtime
from replica._snapshot import (
    build_snapshot,
    combined_capacity,
    combined_load_limit,
    mean_load_ms,
)
from replica.server import ReplicaServer
from router.server import RouterServer

from polling import until

SECRET = "test-secret"
MODEL = "serve_multiplexed_model_id"


class Model:
    def __init__(self, model_id: str, cleaned: list[str]) -> None:
        self.model_id = model_id
        self._cleaned = cleaned

    def __del__(self) -> None:
        self._cleaned.append(self.model_id)


class Deployment:
    def __init__(self) -> None:
        self.cleaned: list[str] = []
        self.load_gate: asyncio.Event | None = None

    @multiplexed(max_num_models_per_replica=2)
    async def load_model(self, model_id: str) -> Model:
        if self.load_gate is not None:
            await self.load_gate.wait()
        return Model(model_id, self.cleaned)

    async def __call__(self, request: web.Request) -> str:
        model: Model = await self.load_model(get_multiplexed_model_id())
        return model.model_id


class FakeRouter:
    """The router's end of the state channel: checks the secret, collects snapshots."""

    def __init__(self, secret: str = SECRET, reply: bytes | None = None) -> None:
        self.secret = secret
        self.reply = reply
        self.snapshots: list[ReplicaSnapshot] = []
        self.problems: list[str] = []
        self.attempts = 0
        self.refused = 0
        self.hangups = 0
        self._sockets: set[web.WebSocketResponse] = set()
        self.server: TestServer | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(CHANNEL_PATH, self._channel)
        app.on_shutdown.append(self._close_sockets)
        return app

    async def start(self, port: int | None = None) -> str:
        self.server = TestServer(self.app(), port=port)
        await self.server.start_server()
        return f"http://{self.server.host}:{self.server.port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def _close_sockets(self, _app: web.Application) -> None:
        for ws in list(self._sockets):
            await ws.close()

    async def _channel(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        if not is_authorized(request.headers.get("Authorization"), self.secret):
            self.refused += 1
            raise web.HTTPUnauthorized()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            async for message in ws:
                if message.type != WSMsgType.BINARY:
                    self.problems.append(f"unexpected {message.type}")
                    continue
                try:
                    self.snapshots.append(decode_snapshot(message.data))
                except WireError as error:
                    self.problems.append(str(error))
                if self.reply is not None:
                    await ws.send_bytes(self.reply)
        finally:
            self._sockets.discard(ws)
            self.hangups += 1
        return ws

    @property
    def last(self) -> ReplicaSnapshot:
        return self.snapshots[-1]


@dataclass
class Replica:
    server: ReplicaServer
    client: TestClient[web.Request, web.Application]
    deployment: Deployment

    async def request(self, model_id: str) -> int:
        async with self.client.get("/", headers={MODEL: model_id}) as resp:
            await resp.read()
            return resp.status


StartReplica = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def routers() -> AsyncIterator[list[FakeRouter]]:
    started: list[FakeRouter] = []
    yield started
    for router in started:
        await router.stop()


@pytest.fixture
async def start_replica() -> AsyncIterator[StartReplica]:
    started: list[Replica] = []

    async def start(
        router_urls: list[str],
        *,
        secret: str = SECRET,
        heartbeat_interval_s: float = 5.0,
        backoff_max_s: float = 2.0,
    ) -> Replica:
        deployment = Deployment()
        server = ReplicaServer(
            deployment,
            replica_id="replica-1",
            routers=router_urls,
            secret=secret,
            max_ongoing_requests=4,
            heartbeat_interval_s=heartbeat_interval_s,
            drain_quiet_s=0.01,
        )
        server.reporter.backoff_max_s = backoff_max_s
        client = TestClient(TestServer(server.app))
        await client.start_server()
        await server.start(f"http://{client.host}:{client.port}")
        replica = Replica(server, client, deployment)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        await replica.server.drain()
        await replica.client.close()


async def start_router(routers: list[FakeRouter], **kwargs: object) -> tuple[FakeRouter, str]:
    router = FakeRouter(**kwargs)  # type: ignore[arg-type]
    routers.append(router)
    return router, await router.start()


def models(snapshot: ReplicaSnapshot) -> list[str]:
    return [m.model_id for m in snapshot.models]


# -- what is sent, and when ----------------------------------------------------------------


async def test_a_snapshot_is_sent_on_connect(
    routers: list[FakeRouter], start_replica: StartReplica
) -> None:
    router, url = await start_router(routers)
    replica = await start_replica([url])
    await until(lambda: bool(router.snapshots), "the first snapshot")
    first = router.snapshots[0]
    assert first.replica_id == "replica-1"
    assert first.incarnation == replica.server.incarnation
    assert first.url == f"http://{replica.client.host}:{replica.client.port}"
    assert first.capacity == 2  # the decorator's value, known before any request
    assert first.models == ()
    assert first.loading == ()
    assert first.in_flight == 0
    assert first.max_ongoing_requests == 4
    assert first.draining is False
    assert first.load_ms_avg is None
    assert router.problems == []


async def test_a_load_is_reported_at_once(
    routers: list[FakeRouter], start_replica: StartReplica
) -> None:
    router, url = await start_router(routers)
    replica = await start_replica([url])  # heartbeats every 5 s: they cannot explain a report
    await until(lambda: bool(router.snapshots), "the first snapshot")
    gate = replica.deployment.load_gate = asyncio.Event()
    request = asyncio.create_task(replica.request("m1"))
    await until(lambda: router.last.loading == ("m1",), "the load to be reported")
    gate.set()
    assert await request == 200
    await until(lambda: models(router.last) == ["m1"], "the loaded model to be reported")
    assert router.last.loading == ()
    assert router.last.load_ms_avg is not None
    sequences = [s.sequence for s in router.snapshots]
    assert sequences == sorted(set(sequences))


async def test_heartbeats_repeat_the_state(
    routers: list[FakeRouter], start_replica: StartReplica
) -> None:
    router, url = await start_router(routers)
    await start_replica([url], heartbeat_interval_s=0.05)
    await until(lambda: len(router.snapshots) >= 4, "heartbeats")
    sequences = [s.sequence for s in router.snapshots]
    assert sequences == sorted(set(sequences))
    assert {s.incarnation for s in router.snapshots} == {router.snapshots[0].incarnation}


async def test_an_eviction_shows_in_the_next_report(
    routers: list[FakeRouter], start_replica: StartReplica
) -> None:
    router, url = await start_router(routers)
    replica = await start_replica([url])
    for model_id in ("a", "b", "a", "c"):
        assert await replica.request(model_id) == 200
    await until(lambda: models(router.last) == ["a", "c"], "the eviction of b")
    assert replica.deployment.cleaned == ["b"]
    assert router.last.models[0].idle_s >= router.last.models[1].idle_s >= 0


async def test_every_router_gets_the_reports(
    routers: list[FakeRouter], start_replica: StartReplica
) -> None:
    first, url1 = await start_router(routers)
    second, url2 = await start_router(routers)
    replica = await start_replica([url1, url2])
    assert await replica.request("m") == 200
    for router in (first, second):
        await until(lambda: bool(router.snapshots) and models(router.last) == ["m"], "reports")  # noqa: B023


# -- failures ------------------------------------------------------------------------------


async def test_a_wrong_secret_is_logged_and_retried(
    routers: list[FakeRouter], start_replica: StartReplica, caplog: pytest.LogCaptureFixture
) -> None:
    router, url = await start_router(routers, secret="another-secret")
    replica = await start_replica([url], backoff_max_s=0.05)
    await until(lambda: router.refused >= 3, "retries after a 401")
    assert router.snapshots == []
    assert "the router refused our secret" in caplog.text
    assert sum("refused our secret" in r.getMessage() for r in caplog.records) == 1
    assert await replica.request("m") == 200  # the replica keeps serving


async def test_an_unreachable_router_does_not_stop_the_replica(
    routers: list[FakeRouter], start_replica: StartReplica
) -> None:
    router, url = await start_router(routers)
    await router.stop()
    replica = await start_replica([url])
    assert await replica.request("m") == 200
    assert replica.server.reporter.connected == 0


async def test_the_replica_reconnects_when_the_router_comes_back(
    routers: list[FakeRouter], start_replica: StartReplica
) -> None:
    router, url = await start_router(routers)
    assert router.server is not None
    port = router.server.port
    replica = await start_replica([url])
    await until(lambda: bool(router.snapshots), "the first snapshot")
    await router.stop()
    await until(lambda: replica.server.reporter.connected == 0, "the channel to drop")
    assert await replica.request("m") == 200  # changes while the router is away

    restarted = FakeRouter()
    routers.append(restarted)
    await restarted.start(port=port)
    await until(lambda: bool(restarted.snapshots), "a snapshot to the restarted router")
    assert models(restarted.snapshots[0]) == ["m"]
    assert restarted.snapshots[0].sequence > router.last.sequence


async def test_an_error_frame_from_the_router_is_logged(
    routers: list[FakeRouter], start_replica: StartReplica, caplog: pytest.LogCaptureFixture
) -> None:
    reply = encode_error("bad_frame", "sequence went backwards")
    _, url = await start_router(routers, reply=reply)
    await start_replica([url])
    await until(lambda: "sequence went backwards" in caplog.text, "the warning")
    record = next(r for r in caplog.records if "sequence went backwards" in r.getMessage())
    assert record.levelno == logging.WARNING
    assert "bad_frame" in record.getMessage()


# -- drain ---------------------------------------------------------------------------------


async def test_drain_reports_draining_then_a_final_empty_state(
    routers: list[FakeRouter], start_replica: StartReplica
) -> None:
    router, url = await start_router(routers)
    replica = await start_replica([url])
    assert await replica.request("m") == 200
    await until(lambda: bool(router.snapshots) and models(router.last) == ["m"], "the load")
    await replica.server.drain()
    draining = [s for s in router.snapshots if s.draining]
    assert draining, "no draining report"
    assert models(draining[0]) == ["m"]  # sent at once, before the cleanup
    assert models(router.last) == []
    assert router.last.draining
    assert replica.deployment.cleaned == ["m"]
    await until(lambda: router.hangups == 1, "the channel to close")


# -- the snapshot itself (pure) ------------------------------------------------------------


def test_several_caches_merge_into_one_lru_order() -> None:
    first = CacheState(
        capacity=2,
        models=(ResidentModel("a", 1.0, 0), ResidentModel("c", 5.0, 1)),
        loading=("x",),
    )
    second = CacheState(
        capacity=3,
        models=(
            ResidentModel("b", 2.0, 0),
            ResidentModel("a", 4.0, 2),
            ResidentModel("\x01", 6.0, 0),
        ),
        loading=("x", "y"),
    )
    snapshot = build_snapshot(
        replica_id="r",
        incarnation="i",
        sequence=0,
        url="http://h:1",
        states=[first, second],
        fallback_capacity=3,
        in_flight=0,
        max_ongoing_requests=1,
        draining=False,
        load_ms_avg=None,
        now=10.0,
    )
    assert [(m.model_id, m.idle_s, m.in_use) for m in snapshot.models] == [
        ("b", 8.0, 0),
        ("a", 6.0, 2),
        ("c", 5.0, 1),
    ]
    assert snapshot.loading == ("x", "y")
    assert snapshot.capacity == 5


def test_capacity_of_several_caches() -> None:
    assert combined_capacity([], fallback=3) == 3
    assert combined_capacity([], fallback=-1) == -1
    assert combined_capacity([2, 4], fallback=3) == 6
    assert combined_capacity([2, -1], fallback=3) == -1


def limits(*caches: tuple[int, int | None]) -> list[CacheState]:
    return [CacheState(capacity, (), (), limit) for capacity, limit in caches]


def test_load_limit_of_several_caches() -> None:
    def combined(states: list[CacheState]) -> int | None:
        return combined_load_limit(states, fallback_capacity=3, fallback=None)

    assert combined(limits((3, None))) is None
    assert combined(limits((3, 1))) == 1
    assert combined(limits((3, 3))) is None  # no limit below the slots
    assert combined(limits((3, 5))) is None
    assert combined(limits((-1, 2))) == 2
    assert combined(limits((-1, None))) is None
    assert combined(limits((3, 1), (2, 1))) == 2
    assert combined(limits((3, 1), (2, None))) == 3  # one load, plus two in the other's slots
    assert combined(limits((3, 1), (-1, None))) is None
    assert combined(limits((3, 1), (-1, 4))) == 5


def test_load_limit_with_no_cache_yet_is_the_fallback() -> None:
    assert combined_load_limit([], fallback_capacity=3, fallback=None) is None
    assert combined_load_limit([], fallback_capacity=3, fallback=1) == 1
    assert combined_load_limit([], fallback_capacity=1, fallback=1) is None


def test_mean_load_time_over_caches() -> None:
    assert mean_load_ms([CacheMetrics()]) is None
    one, two = CacheMetrics(), CacheMetrics()
    one.load_latency_ms.observe(10)
    two.load_latency_ms.observe(20)
    two.load_latency_ms.observe(30)
    assert mean_load_ms([one, two]) == 20


def test_no_cache_yet_reports_the_override() -> None:
    runtime.capacity_override = 7

    async def plain(request: web.Request) -> str:
        return "no models here"

    server = ReplicaServer(plain, replica_id="r")
    assert server.snapshot().capacity == 7


def test_the_snapshot_reports_the_caches_load_limit() -> None:
    assert ReplicaServer(Deployment(), replica_id="r").snapshot().max_concurrent_loads is None
    runtime.reset()
    runtime.max_concurrent_loads = 1
    server = ReplicaServer(Deployment(), replica_id="r")
    assert [cache.max_concurrent_loads for cache in runtime.caches()] == [1]
    assert server.snapshot().max_concurrent_loads == 1


# -- hits, from a real router's count to its view --------------------------------------------


@pytest.fixture
async def real_router() -> AsyncIterator[
    tuple[RouterServer, TestClient[web.Request, web.Application]]
]:
    """The router itself (not `FakeRouter`): its admission, its proxy and its view."""
    config = parse_config({"deployment": {"import_path": "examples.synthetic:SyntheticModels"}})
    server = RouterServer(config, SECRET)
    client = TestClient(TestServer(server.app()))
    await client.start_server()
    yield server, client
    await client.close()


async def test_a_routers_count_seeds_the_hits_its_view_then_reads_from_the_reports(
    real_router: tuple[RouterServer, TestClient[web.Request, web.Application]],
    start_replica: StartReplica,
) -> None:
    """The router counted 5 requests for `m` before (served elsewhere, say): its cold dispatch
    sends 6, the replica's new load starts there, and each of the 11 requests after it adds
    one. The router's view shows 17 from the replica's reports, not its own count."""
    router, client = real_router
    await start_replica([str(client.make_url(""))], heartbeat_interval_s=0.1)
    await until(lambda: "replica-1" in router.view.replicas, "the replica's first report")
    for _ in range(5):
        router.view.demand.arrived("m")
    for _ in range(12):
        async with client.get("/", headers={MODEL: "m"}) as resp:
            assert resp.status == 200
            assert await resp.text() == "m"

    def hits() -> float | None:
        copy = router.view.replicas["replica-1"].models.get("m")
        return None if copy is None else copy.hits

    await until(lambda: hits() is not None and hits() == pytest.approx(17.0, abs=0.05), "hits")
    assert router.view.demand.frequency("m") == 17
