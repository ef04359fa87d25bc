"""The replica HTTP server: answers, errors, pins held while answering, drain, the CLI."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common.auth import authorization_value, data_path_token
from common.headers import CREDENTIAL_HEADER, DEMAND_HEADER, EVICT_HEADER
from common.status import ReplicaStateDocument
from common.wire import decode_snapshot, encode_snapshot
from replica import MultiplexedLoader, get_multiplexed_model_id, multiplexed
from replica._cli import run_replica
from replica._runtime import runtime
from replica.server import COLD_HEADER, ReplicaServer

from polling import until

REPO = Path(__file__).resolve().parents[2]
MODEL = "serve_multiplexed_model_id"
SECRET = "s3cret"
ROUTER = {CREDENTIAL_HEADER: authorization_value(data_path_token(SECRET))}  # a router's request
ADMIN = {"Authorization": authorization_value(SECRET)}


class Model:
    def __init__(self, model_id: str, cleaned: list[str]) -> None:
        self.model_id = model_id
        self._cleaned = cleaned

    def __del__(self) -> None:
        self._cleaned.append(self.model_id)


class Echo:
    """A deployment with knobs: `?kind=` picks what `__call__` returns or raises; streams
    advance one chunk per item put in `steps`."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.cleaned: list[str] = []
        self.steps: asyncio.Queue[None] = asyncio.Queue()

    @multiplexed(max_num_models_per_replica=2)
    async def load_model(self, model_id: str) -> Model:
        self.loads.append(model_id)
        if model_id.startswith("broken"):
            raise FileNotFoundError(f"no weights for {model_id}")
        return Model(model_id, self.cleaned)

    async def _chunks(self, count: int, *, text: bool, fail: bool = False) -> AsyncIterator[Any]:
        for index in range(count):
            if index:
                await self.steps.get()
            yield f"chunk-{index};" if text else f"chunk-{index};".encode()
        if fail:
            raise RuntimeError("stream broke")

    async def __call__(self, request: web.Request) -> object:
        model_id = get_multiplexed_model_id()
        if model_id:
            await self.load_model(model_id)
        kind = request.query.get("kind", "json")
        count = int(request.query.get("chunks", "3"))
        answers: dict[str, Callable[[], object]] = {
            "json": lambda: {"model": model_id, "path": request.path, "method": request.method},
            "list": lambda: [model_id, 1],
            "text": lambda: f"hello {model_id}",
            "bytes": lambda: b"\x00\x01",
            "bytearray": lambda: bytearray(b"ab"),
            "none": lambda: None,
            "response": lambda: web.Response(text="custom", status=201, headers={"x-k": "v"}),
            "stream": lambda: self._chunks(count, text=False),
            "stream_text": lambda: self._chunks(count, text=True),
            "stream_fail": lambda: self._chunks(count, text=False, fail=True),
            "number": lambda: 42,
        }
        if kind == "fail":
            raise RuntimeError("boom")
        if kind == "http_error":
            raise web.HTTPNotFound(text="no such thing")
        if kind == "prepared":
            response = web.StreamResponse(headers={"x-prepared": "yes"})
            await response.prepare(request)
            await response.write(b"written by the deployment")
            return response
        return answers[kind]()


@dataclass
class Replica:
    """A replica on a test server; `get` asks as its router does (with the router's credential)
    unless `as_router=False`."""

    server: ReplicaServer
    client: TestClient[web.Request, web.Application]
    deployment: Echo

    async def get(
        self,
        model_id: str | None,
        *,
        as_router: bool = True,
        headers: dict[str, str] | None = None,
        **query: str,
    ) -> aiohttp.ClientResponse:
        sent = {**ROUTER, **(headers or {})} if as_router else dict(headers or {})
        if model_id is not None:
            sent[MODEL] = model_id
        return await self.client.get("/predict", headers=sent, params=query)

    async def state(self) -> Any:
        async with self.client.get("/-/state", headers=ADMIN) as resp:
            assert resp.status == 200
            return await resp.json()

    def resident(self) -> list[tuple[str, int]]:
        return [(m.model_id, m.in_use) for m in self.server.snapshot().models]


StartReplica = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def start_replica() -> AsyncIterator[StartReplica]:
    started: list[Replica] = []

    async def start(
        *, capacity: int | None = None, slot_timeout_s: float = 5.0, routers_only: bool = False
    ) -> Replica:
        runtime.capacity_override = capacity
        runtime.slot_timeout_s = slot_timeout_s
        deployment = Echo()
        server = ReplicaServer(
            deployment,
            replica_id="replica-test",
            secret=SECRET,
            drain_quiet_s=0.01,
            graceful_shutdown_timeout_s=5.0,
            routers_only=routers_only,
        )
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


# -- answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "content_type", "body"),
    [
        ("json", 200, "application/json", b'{"model": "m1", "path": "/predict", "method": "GET"}'),
        ("list", 200, "application/json", b'["m1", 1]'),
        ("text", 200, "text/plain", b"hello m1"),
        ("bytes", 200, "application/octet-stream", b"\x00\x01"),
        ("bytearray", 200, "application/octet-stream", b"ab"),
        ("none", 204, "application/octet-stream", b""),
        ("response", 201, "text/plain", b"custom"),
    ],
)
async def test_return_values_become_answers(
    start_replica: StartReplica, kind: str, status: int, content_type: str, body: bytes
) -> None:
    replica = await start_replica()
    async with await replica.get("m1", kind=kind) as resp:
        assert resp.status == status
        if status != 204:
            assert resp.content_type == content_type
        assert await resp.read() == body
        assert resp.headers["x-modelplex-replica"] == "replica-test"
        if kind == "response":
            assert resp.headers["x-k"] == "v"


async def test_every_path_and_method_reaches_the_deployment(start_replica: StartReplica) -> None:
    replica = await start_replica()
    async with replica.client.post("/v1/deep/path?x=1", headers={MODEL: "m"}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"model": "m", "path": "/v1/deep/path", "method": "POST"}


async def test_a_prepared_response_is_returned_as_is(start_replica: StartReplica) -> None:
    replica = await start_replica()
    async with await replica.get("m1", kind="prepared") as resp:
        assert resp.status == 200
        assert resp.headers["x-prepared"] == "yes"
        assert await resp.read() == b"written by the deployment"


@pytest.mark.parametrize(
    ("kind", "content_type"),
    [("stream", "application/octet-stream"), ("stream_text", "text/plain")],
)
async def test_a_stream_is_sent_chunk_by_chunk(
    start_replica: StartReplica, kind: str, content_type: str
) -> None:
    replica = await start_replica()
    async with await replica.get("m1", kind=kind, chunks="3") as resp:
        assert resp.status == 200
        assert resp.content_type == content_type
        assert resp.headers["Transfer-Encoding"] == "chunked"
        received: list[bytes] = []
        async for data in resp.content.iter_any():
            received.append(data)
            replica.deployment.steps.put_nowait(None)  # the next chunk exists only now
    assert received == [b"chunk-0;", b"chunk-1;", b"chunk-2;"]


async def test_an_empty_stream_is_an_empty_body(start_replica: StartReplica) -> None:
    replica = await start_replica()
    async with await replica.get("m1", kind="stream", chunks="0") as resp:
        assert resp.status == 200
        assert await resp.read() == b""


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {MODEL: "x" * 300},
        {"serve_multiplexed_model_id": "a", "serve-multiplexed-model-id": "b"},
    ],
)
async def test_an_invalid_model_id_is_a_400(
    start_replica: StartReplica, headers: dict[str, str]
) -> None:
    replica = await start_replica()
    async with replica.client.get("/predict", headers=headers) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["code"] == "invalid_model_id"
        assert error["message"]
        assert resp.headers["x-modelplex-replica"] == "replica-test"
    assert replica.deployment.loads == []


async def test_a_deployment_exception_is_a_500_and_the_replica_keeps_serving(
    start_replica: StartReplica,
) -> None:
    replica = await start_replica()
    async with await replica.get("m1", kind="fail") as resp:
        assert resp.status == 500
        assert await resp.json() == {
            "error": {"code": "deployment_error", "message": "RuntimeError: boom"}
        }
        assert resp.headers["x-modelplex-replica"] == "replica-test"
    async with await replica.get("m1") as resp:
        assert resp.status == 200
    assert replica.server.in_flight == 0
    assert replica.resident() == [("m1", 0)]


async def test_an_unsupported_return_value_is_a_500(start_replica: StartReplica) -> None:
    replica = await start_replica()
    async with await replica.get("m1", kind="number") as resp:
        assert resp.status == 500
        error = (await resp.json())["error"]
        assert error["code"] == "deployment_error"
        assert "int" in error["message"]


async def test_an_http_exception_is_the_answer(start_replica: StartReplica) -> None:
    replica = await start_replica()
    async with await replica.get("m1", kind="http_error") as resp:
        assert resp.status == 404
        assert await resp.text() == "no such thing"
        assert resp.headers["x-modelplex-replica"] == "replica-test"


async def test_a_failure_mid_stream_truncates_the_body(start_replica: StartReplica) -> None:
    replica = await start_replica()
    replica.deployment.steps.put_nowait(None)
    async with await replica.get("m1", kind="stream_fail", chunks="2") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    async with await replica.get("m1") as resp:
        assert resp.status == 200
    assert replica.resident() == [("m1", 0)]


# -- cold answers and pins -----------------------------------------------------------------


async def test_only_the_request_that_waited_for_the_load_is_cold(
    start_replica: StartReplica,
) -> None:
    replica = await start_replica()
    async with await replica.get("m1") as resp:
        assert resp.headers["x-modelplex-cold"] == "1"
    async with await replica.get("m1") as resp:
        assert "x-modelplex-cold" not in resp.headers
    async with await replica.get("m2", kind="stream", chunks="1") as resp:
        assert resp.headers["x-modelplex-cold"] == "1"
        assert await resp.read() == b"chunk-0;"


async def test_a_stream_keeps_its_model_pinned_until_it_ends(
    start_replica: StartReplica,
) -> None:
    replica = await start_replica(capacity=1, slot_timeout_s=0.2)
    async with await replica.get("a", kind="stream", chunks="2") as streaming:
        assert await streaming.content.readexactly(8) == b"chunk-0;"
        assert replica.resident() == [("a", 1)]
        async with await replica.get("b") as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            assert (await resp.json())["error"]["code"] == "model_slot_timeout"
        replica.deployment.steps.put_nowait(None)
        assert await streaming.read() == b"chunk-1;"
    async with await replica.get("b") as resp:
        assert resp.status == 200
    assert replica.resident() == [("b", 0)]
    assert replica.deployment.cleaned == ["a"]


async def test_a_request_waits_for_a_slot_held_by_a_stream(start_replica: StartReplica) -> None:
    replica = await start_replica(capacity=1)
    async with await replica.get("a", kind="stream", chunks="2") as streaming:
        assert await streaming.content.readexactly(8) == b"chunk-0;"
        waiting = asyncio.create_task(replica.get("b"))
        await until(lambda: replica.server.in_flight == 2, "the second request to arrive")
        assert not waiting.done()
        assert replica.deployment.loads == ["a"]
        replica.deployment.steps.put_nowait(None)
        assert await streaming.read() == b"chunk-1;"
    async with await waiting as resp:
        assert resp.status == 200
        assert resp.headers["x-modelplex-cold"] == "1"
    assert replica.deployment.loads == ["a", "b"]


async def test_a_client_leaving_mid_stream_releases_the_pin(start_replica: StartReplica) -> None:
    replica = await start_replica()
    resp = await replica.get("a", kind="stream", chunks="50")
    assert await resp.content.readexactly(8) == b"chunk-0;"
    resp.close()
    for _ in range(50):
        replica.deployment.steps.put_nowait(None)
    await until(lambda: replica.server.in_flight == 0, "the abandoned stream to end")
    assert replica.resident() == [("a", 0)]


# -- reserved endpoints --------------------------------------------------------------------


async def test_healthz_state_and_metrics(start_replica: StartReplica) -> None:
    replica = await start_replica()
    async with await replica.get("m1") as resp:
        assert resp.status == 200
    async with replica.client.get("/-/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    state = await replica.state()
    assert state["replica_id"] == "replica-test"
    assert state["capacity"] == 2
    assert [m["model_id"] for m in state["models"]] == ["m1"]
    assert state["draining"] is False
    async with replica.client.get("/-/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    for line in (
        'serve_multiplexed_models_load_counter_total{replica="replica-test"} 1.0',
        'serve_multiplexed_get_model_requests_counter_total{replica="replica-test"} 1.0',
        'serve_num_multiplexed_models{replica="replica-test"} 1.0',
        'serve_multiplexed_model_load_latency_ms_count{replica="replica-test"} 1.0',
        'serve_multiplexed_models_unload_counter_total{replica="replica-test"} 0.0',
        'serve_multiplexed_model_unload_latency_ms_bucket{le="+Inf",replica="replica-test"} 0.0',
        'modelplex_replica_in_flight_requests{replica="replica-test"} 0.0',
    ):
        assert line in text.splitlines()
    async with replica.client.post("/-/healthz") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_reading_the_state_takes_no_report_sequence(start_replica: StartReplica) -> None:
    replica = await start_replica()
    reads = []
    for _ in range(2):
        reads.append(await replica.state())
    assert set(reads[0]) == set(ReplicaStateDocument.__annotations__)
    assert reads[0]["sequence"] == reads[1]["sequence"]
    frame = replica.server.reporter.fresh_frame()  # the next report to the routers
    assert frame is not None
    sequence = decode_snapshot(frame).sequence
    assert sequence == reads[0]["sequence"]
    assert (await replica.state())["sequence"] == sequence + 1


# -- /-/load: a model the router wants loaded, into the caches that serve it ---------------


class TwoLoaders:
    """A deployment with two multiplexed caches; `?use=` names the loaders a request calls."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, str]] = []

    @multiplexed(max_num_models_per_replica=2)
    async def load_tokenizer(self, model_id: str) -> str:
        self.loads.append(("tokenizer", model_id))
        return f"tokenizer of {model_id}"

    @multiplexed(max_num_models_per_replica=2)
    async def load_model(self, model_id: str) -> str:
        if model_id == "broken":
            raise RuntimeError("no such model")
        self.loads.append(("model", model_id))
        return f"model {model_id}"

    async def __call__(self, request: web.Request) -> object:
        model_id = get_multiplexed_model_id()
        use = request.query.get("use", "tokenizer,model").split(",")
        if "tokenizer" in use:
            await self.load_tokenizer(model_id)
        if "model" in use:
            await self.load_model(model_id)
        return {"model": model_id}


Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def two_loaders() -> AsyncIterator[tuple[Client, TwoLoaders]]:
    deployment = TwoLoaders()
    server = ReplicaServer(deployment, replica_id="replica-two", secret=SECRET, drain_quiet_s=0.01)
    client = TestClient(TestServer(server.app))
    await client.start_server()
    await server.start(f"http://{client.host}:{client.port}")
    yield client, deployment
    await server.drain()
    await client.close()


async def prefetch(client: Client, model_id: str, **extra: str) -> tuple[int, Any]:
    headers = {MODEL: model_id, "Authorization": authorization_value(SECRET), **extra}
    async with client.post("/-/load", headers=headers) as resp:
        return resp.status, await resp.json()


def resident_in(loader: MultiplexedLoader[Any], deployment: TwoLoaders) -> list[str]:
    return [m.model_id for m in loader.cache_for(deployment).state().models]


async def test_a_load_of_a_model_new_here_goes_into_every_cache(
    two_loaders: tuple[Client, TwoLoaders],
) -> None:
    client, deployment = two_loaders
    status, body = await prefetch(client, "m1")
    assert (status, body) == (
        200,
        {"loaded": "m1", "caches": ["TwoLoaders.load_model", "TwoLoaders.load_tokenizer"]},
    )
    assert sorted(deployment.loads) == [("model", "m1"), ("tokenizer", "m1")]
    async with client.get("/predict", headers={MODEL: "m1"}) as resp:
        assert resp.status == 200
        assert COLD_HEADER not in resp.headers  # the copy is warm in both caches
    assert len(deployment.loads) == 2


async def test_a_load_of_a_model_one_cache_holds_stays_in_that_cache(
    two_loaders: tuple[Client, TwoLoaders],
) -> None:
    client, deployment = two_loaders
    async with client.get("/predict", headers={MODEL: "m1"}, params={"use": "model"}) as resp:
        assert resp.status == 200
    status, body = await prefetch(client, "m1")
    assert (status, body) == (200, {"loaded": "m1", "caches": ["TwoLoaders.load_model"]})
    assert deployment.loads == [("model", "m1")]  # no tokenizer loaded for it
    assert resident_in(TwoLoaders.load_tokenizer, deployment) == []


async def test_a_load_may_name_its_cache(
    two_loaders: tuple[Client, TwoLoaders],
) -> None:
    client, deployment = two_loaders
    named = {"x-modelplex-cache": "TwoLoaders.load_tokenizer"}
    status, body = await prefetch(client, "m2", **named)
    assert (status, body) == (200, {"loaded": "m2", "caches": ["TwoLoaders.load_tokenizer"]})
    assert deployment.loads == [("tokenizer", "m2")]
    status, body = await prefetch(client, "m2", **{"x-modelplex-cache": "load_nothing"})
    assert status == 404
    assert body["error"]["code"] == "unknown_cache"
    assert "TwoLoaders.load_model, TwoLoaders.load_tokenizer" in body["error"]["message"]


async def test_a_load_that_fails_in_one_cache_is_a_500_and_keeps_the_other_copy(
    two_loaders: tuple[Client, TwoLoaders],
) -> None:
    client, deployment = two_loaders
    status, body = await prefetch(client, "broken")
    assert status == 500
    assert body["error"] == {"code": "load_failed", "message": "RuntimeError: no such model"}
    assert resident_in(TwoLoaders.load_tokenizer, deployment) == ["broken"]
    assert resident_in(TwoLoaders.load_model, deployment) == []


async def test_a_load_needs_the_cluster_secret(
    two_loaders: tuple[Client, TwoLoaders],
) -> None:
    client, deployment = two_loaders
    async with client.post("/-/load", headers={MODEL: "m1"}) as resp:
        assert resp.status == 401
    assert deployment.loads == []


# -- drain ---------------------------------------------------------------------------------


async def test_drain_finishes_requests_in_flight_then_cleans_up(
    start_replica: StartReplica,
) -> None:
    replica = await start_replica()
    server = replica.server
    async with await replica.get("a", kind="stream", chunks="2") as streaming:
        assert await streaming.content.readexactly(8) == b"chunk-0;"
        drain = asyncio.create_task(server.drain())
        await until(lambda: server.draining, "draining to start")
        async with replica.client.get("/-/healthz") as resp:
            assert resp.status == 503
            assert await resp.json() == {"status": "draining"}
        async with await replica.get("a", kind="text") as resp:  # dispatched before the report
            assert resp.status == 200
        assert not drain.done()
        replica.deployment.steps.put_nowait(None)
        assert await streaming.read() == b"chunk-1;"
    await asyncio.wait_for(drain, 5)
    assert replica.deployment.cleaned == ["a"]
    assert server.snapshot().draining
    async with await replica.get("b") as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "draining"


# -- the process ---------------------------------------------------------------------------


DEPLOYMENT_MODULE = """
import os
from replica import get_multiplexed_model_id, multiplexed

class Greeter:
    def __init__(self, greeting):
        self.greeting = greeting

    @multiplexed(max_num_models_per_replica=2)
    async def load_model(self, model_id):
        return model_id.upper()

    async def __call__(self, request):
        model = await self.load_model(get_multiplexed_model_id())
        return {"greeting": self.greeting, "model": model,
                "replica": os.environ["MODELPLEX_REPLICA_ID"]}
"""


def write_config(tmp_path: Path, import_path: str = "greeter_deployment:Greeter") -> Path:
    (tmp_path / "greeter_deployment.py").write_text(textwrap.dedent(DEPLOYMENT_MODULE))
    config = tmp_path / "cluster.yaml"
    config.write_text(
        "router:\n  port: 1\n"
        f"deployment:\n  import_path: {import_path}\n  init_kwargs: {{greeting: hi}}\n"
        "  graceful_shutdown_timeout_s: 10\n"
    )
    return config


async def test_the_process_serves_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
        "MODELPLEX_SECRET": "test-secret",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "replica",
        "--config",
        str(config),
        "--replica-id",
        "replica-7",
        "--port",
        "0",
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        prefix = "modelplex replica replica-7 listening on "
        assert line.startswith(prefix), line
        url = line.removeprefix(prefix).strip()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/x", headers={MODEL: "m"}) as resp,
        ):
            assert resp.status == 200
            assert await resp.json() == {"greeting": "hi", "model": "M", "replica": "replica-7"}
            assert resp.headers["x-modelplex-replica"] == "replica-7"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("bad_config", "deployment.import_path"),
        ("no_secret", "no cluster secret"),
        ("bad_import", "cannot import deployment"),
        ("missing_class", "has no 'Nope'"),
    ],
)
def test_the_cli_refuses_to_start_with_a_clear_message(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setup: str,
    message: str,
) -> None:
    monkeypatch.setenv("MODELPLEX_SECRET", "s")
    monkeypatch.delenv("MODELPLEX_SECRET_FILE", raising=False)
    monkeypatch.delenv("MODELPLEX_REPLICA_ID", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_config(tmp_path)
    if setup == "bad_config":
        config.write_text("deployment:\n  import_path: 42\n")
    elif setup == "no_secret":
        monkeypatch.delenv("MODELPLEX_SECRET")
    elif setup == "bad_import":
        config = write_config(tmp_path, "no_such_module_here:Greeter")
    elif setup == "missing_class":
        config = write_config(tmp_path, "greeter_deployment:Nope")
    assert run_replica(["--config", str(config), "--replica-id", "r"]) == 2
    assert message in capsys.readouterr().err


def test_json_body_shape_is_stable() -> None:
    """The error shape the router and clients parse."""
    from common.errors import error_response

    body = error_response(503, "draining", "bye").body
    assert isinstance(body, bytes)
    assert json.loads(body) == {"error": {"code": "draining", "message": "bye"}}


# -- who may ask what ------------------------------------------------------------------------


async def test_the_state_needs_the_cluster_secret(start_replica: StartReplica) -> None:
    replica = await start_replica()
    for headers in ({}, ROUTER, {"Authorization": "Bearer wrong"}):
        async with replica.client.get("/-/state", headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
    async with replica.client.get("/-/healthz") as resp:
        assert resp.status == 200  # probes need nothing


async def test_a_replica_beyond_loopback_serves_its_routers_only(
    start_replica: StartReplica,
) -> None:
    replica = await start_replica(routers_only=True)
    async with await replica.get("m1", as_router=False) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"
    forged = {CREDENTIAL_HEADER: authorization_value(SECRET)}  # the secret is not the token
    async with await replica.get("m1", as_router=False, headers=forged) as resp:
        assert resp.status == 401
    assert replica.resident() == []  # nothing was loaded for them
    async with await replica.get("m1") as resp:
        assert resp.status == 200
    async with replica.client.get("/-/metrics") as resp:
        assert resp.status == 401
    async with replica.client.get("/-/metrics", headers=ADMIN) as resp:
        assert resp.status == 200


async def test_only_a_routers_eviction_hint_is_obeyed(start_replica: StartReplica) -> None:
    replica = await start_replica(capacity=2)
    for model_id in ("a", "b"):
        async with await replica.get(model_id) as resp:
            assert resp.status == 200
    hint = {EVICT_HEADER: "b"}  # b is the most recently used: plain LRU would evict a
    async with await replica.get("c", as_router=False, headers=hint) as resp:
        assert resp.status == 200
    assert [m for m, _ in replica.resident()] == ["b", "c"]  # a client's hint: ignored
    async with await replica.get("d", headers={EVICT_HEADER: "c"}) as resp:
        assert resp.status == 200
    assert [m for m, _ in replica.resident()] == ["b", "d"]  # the router's: obeyed


def reported_hits(server: ReplicaServer) -> dict[str, float]:
    """Each resident model's hits as the replica reports them now (through the wire format)."""
    return {m.model_id: m.hits for m in decode_snapshot(encode_snapshot(server.state())).models}


async def test_a_routers_demand_seeds_a_new_loads_hits_and_the_report_carries_them(
    start_replica: StartReplica,
) -> None:
    replica = await start_replica(capacity=2)
    async with await replica.get("m1", headers={DEMAND_HEADER: "7"}) as resp:
        assert resp.status == 200
    assert reported_hits(replica.server) == {"m1": pytest.approx(7.0, abs=0.01)}
    async with await replica.get("m1", headers={DEMAND_HEADER: "500"}) as resp:
        assert resp.status == 200  # warm: the demand seeds new loads only, this is one hit
    assert reported_hits(replica.server) == {"m1": pytest.approx(8.0, abs=0.01)}
    async with await replica.get("m2") as resp:  # a router's request without a demand
        assert resp.status == 200
    assert reported_hits(replica.server)["m2"] == pytest.approx(1.0, abs=0.01)


async def test_a_demand_of_twelve_digits_is_taken(start_replica: StartReplica) -> None:
    replica = await start_replica()
    async with await replica.get("m1", headers={DEMAND_HEADER: "999999999999"}) as resp:
        assert resp.status == 200
    assert reported_hits(replica.server) == {"m1": pytest.approx(999_999_999_999, rel=1e-6)}


async def test_a_clients_demand_is_ignored(start_replica: StartReplica) -> None:
    replica = await start_replica()
    async with await replica.get("m1", as_router=False, headers={DEMAND_HEADER: "5000"}) as resp:
        assert resp.status == 200
    assert reported_hits(replica.server) == {"m1": pytest.approx(1.0, abs=0.01)}


UNICODE_DIGITS = ("\u00b2", "\uff11\uff12", "\u0661\u0662")
"""Superscript two, fullwidth and Arabic-Indic digits: `str.isdigit()` says yes to them all."""


@pytest.mark.parametrize(
    "demand",
    ["abc", "-1", "1e9", "2.5", "+3", "0x10", "1 2", *UNICODE_DIGITS, "1" * 13, "", " "],
    ids=repr,
)
async def test_a_demand_that_is_not_a_plain_count_is_ignored_never_an_error(
    start_replica: StartReplica, demand: str
) -> None:
    replica = await start_replica()
    async with await replica.get("m1", headers={DEMAND_HEADER: demand}) as resp:
        assert resp.status == 200
    assert reported_hits(replica.server) == {"m1": pytest.approx(1.0, abs=0.01)}


async def test_a_prefetch_seeds_its_loads_hits_with_the_routers_demand(
    two_loaders: tuple[Client, TwoLoaders],
) -> None:
    client, deployment = two_loaders
    tokenizer = {"x-modelplex-cache": "TwoLoaders.load_tokenizer"}
    assert (await prefetch(client, "m1", **tokenizer, **{DEMAND_HEADER: "9"}))[0] == 200
    assert (await prefetch(client, "m2", **tokenizer, **{DEMAND_HEADER: "1e9"}))[0] == 200
    models = TwoLoaders.load_tokenizer.cache_for(deployment).state().models
    assert {m.model_id: m.hits for m in models} == {"m1": 9.0, "m2": 1.0}


async def test_a_failed_load_is_a_500_that_says_so_and_is_reported(
    start_replica: StartReplica,
) -> None:
    replica = await start_replica()
    async with await replica.get("broken-1") as resp:
        assert resp.status == 500
        assert resp.headers["x-modelplex-load-failed"] == "broken-1"
        error = (await resp.json())["error"]
        assert error["code"] == "model_load_failed"
        assert "FileNotFoundError: no weights for broken-1" in error["message"]
    async with await replica.get("m1", kind="fail") as resp:  # the deployment's own error
        assert resp.status == 500
        assert "x-modelplex-load-failed" not in resp.headers
    failures = replica.server.snapshot().load_failures
    assert [(f.model_id, f.message) for f in failures] == [
        ("broken-1", "FileNotFoundError: no weights for broken-1")
    ]


# -- /-/evict and /-/drain: an operator's requests, through a router's admin API -----------


async def evict(replica: Replica, model_id: str, **extra: str) -> tuple[int, Any]:
    headers = {MODEL: model_id, **ADMIN, **extra}
    async with replica.client.post("/-/evict", headers=headers) as resp:
        return resp.status, await resp.json()


async def test_evict_drops_a_free_model_at_once_and_reports_it(
    start_replica: StartReplica,
) -> None:
    replica = await start_replica()
    async with await replica.get("a") as resp:
        assert resp.status == 200
    assert await evict(replica, "a") == (
        200,
        {"model": "a", "caches": {"Echo.load_model": "evicted"}},
    )
    assert replica.resident() == []
    assert replica.deployment.cleaned == ["a"]
    assert await evict(replica, "a") == (200, {"model": "a", "caches": {}})


async def test_evict_waits_for_the_request_using_the_model(start_replica: StartReplica) -> None:
    replica = await start_replica()
    async with await replica.get("a", kind="stream", chunks="2") as streaming:
        assert await streaming.content.readexactly(8) == b"chunk-0;"
        status, body = await evict(replica, "a")
        assert (status, body["caches"]) == (200, {"Echo.load_model": "after_requests"})
        assert replica.resident() == []  # no longer reported, though its request goes on
        replica.deployment.steps.put_nowait(None)
        assert await streaming.read() == b"chunk-1;"
    await until(lambda: replica.resident() == [], "the model to leave after its request")
    await until(lambda: replica.deployment.cleaned == ["a"], "its cleanup")


async def test_evict_and_drain_need_the_cluster_secret(start_replica: StartReplica) -> None:
    replica = await start_replica()
    async with await replica.get("a") as resp:
        assert resp.status == 200
    for path in ("/-/evict", "/-/drain"):
        async with replica.client.post(path, headers={MODEL: "a", **ROUTER}) as resp:
            assert resp.status == 401
    assert replica.resident() == [("a", 0)]
    assert not replica.server.draining


async def test_a_drain_request_starts_the_drain(start_replica: StartReplica) -> None:
    replica = await start_replica()
    async with await replica.get("a") as resp:
        assert resp.status == 200
    async with replica.client.post("/-/drain", headers=ADMIN) as resp:
        assert resp.status == 202
        assert await resp.json() == {"draining": "replica-test"}
    await until(lambda: replica.deployment.cleaned == ["a"], "the drain to clean up")
    assert replica.server.draining
    async with replica.client.post("/-/drain", headers=ADMIN) as resp:
        assert resp.status == 202  # idempotent
    await asyncio.wait_for(replica.server.drain(), 5)  # the same drain, already over
