"""examples/synthetic.py: the loader's knobs, the per-request query knobs, the counters."""

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from deployment_server import MODEL_ID_HEADER, Serve

from examples import synthetic
from examples.synthetic import InvalidKnob, Knobs, SyntheticModels, parse_knobs
from replica import request_context

REPO = Path(__file__).resolve().parents[2]


def headers(model_id: str) -> dict[str, str]:
    return {MODEL_ID_HEADER: model_id}


def resident(deployment: SyntheticModels) -> list[str]:
    return [m.model_id for m in SyntheticModels.load_model.cache_for(deployment).state().models]


# -- knobs ----------------------------------------------------------------------------------


def test_no_knobs_means_infer_s_and_a_json_answer() -> None:
    assert parse_knobs({}, infer_s=0.25) == Knobs(sleep_s=0.25)


def test_knobs_are_read_from_the_query() -> None:
    knobs = parse_knobs({"sleep": "0.5", "stream": "3", "interval": "0", "fail": "1"}, infer_s=2)
    assert knobs == Knobs(sleep_s=0.5, stream=3, interval_s=0.0, fail=True)
    assert parse_knobs({"status": "418", "hang": "true", "crash": "0"}, infer_s=0) == Knobs(
        sleep_s=0, status=418, hang=True
    )


@pytest.mark.parametrize(
    "query",
    [
        {"sleep": "-1"},
        {"sleep": "soon"},
        {"sleep": "inf"},
        {"interval": "nan"},
        {"stream": "-2"},
        {"stream": "2.5"},
        {"status": "99"},
        {"status": "600"},
        {"fail": "maybe"},
        {"stream": "2", "echo": "1"},
        {"echo": "1", "status": "201"},
    ],
)
def test_bad_knob_values_are_refused(query: dict[str, str]) -> None:
    with pytest.raises(InvalidKnob):
        parse_knobs(query, infer_s=0)


async def test_a_bad_knob_is_a_400(serve: Serve) -> None:
    client = await serve(SyntheticModels())
    response = await client.get("/?sleep=later", headers=headers("m1"))
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_query"


# -- the loader -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"load_s": -1}, ValueError),
        ({"infer_s": "1"}, TypeError),
        ({"fail_load": "m1"}, TypeError),
        ({"max_num_models_per_replica": 0}, ValueError),
        ({"max_num_models_per_replica": 2.0}, TypeError),
        ({"load_parallelism": 0}, ValueError),
        ({"load_parallelism": 1.5}, TypeError),
        ({"load_parallelism": True}, TypeError),
    ],
)
def test_bad_init_kwargs_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        SyntheticModels(**kwargs)


async def test_a_load_failure_raises_and_is_not_cached() -> None:
    deployment = SyntheticModels(fail_load=["broken"])
    loads = synthetic.LOADS
    for model_id in ("broken", "fail-load-7", "broken"):
        with pytest.raises(RuntimeError, match=f"synthetic load failure for {model_id}"):
            await deployment.load_model(model_id)
    cache = SyntheticModels.load_model.cache_for(deployment)
    assert cache.state().models == ()
    assert cache.state().loading == ()
    assert cache.metrics.load_failures == 3
    assert loads == synthetic.LOADS


async def test_a_failed_load_is_a_500_and_the_next_request_retries(serve: Serve) -> None:
    deployment = SyntheticModels(fail_load=["broken"])
    client = await serve(deployment)
    for _ in range(2):
        response = await client.get("/", headers=headers("broken"))
        assert response.status == 500
        assert "synthetic load failure for broken" in await response.text()
    assert SyntheticModels.load_model.cache_for(deployment).metrics.load_failures == 2


async def test_loads_and_unloads_are_counted_and_the_lru_holds_three() -> None:
    deployment = SyntheticModels()
    loads, unloads = synthetic.LOADS, synthetic.UNLOADS
    for model_id in ("a", "b", "c", "a", "d"):
        with request_context(model_id):
            model = await deployment.load_model(model_id)
        assert model.model_id == model_id
    assert resident(deployment) == ["c", "a", "d"]
    assert synthetic.LOADS - loads == 4
    assert synthetic.UNLOADS - unloads == 1  # "b", when "d" took its slot


async def test_max_num_models_per_replica_sets_this_instance_capacity() -> None:
    small = SyntheticModels(max_num_models_per_replica=1)
    default = SyntheticModels()
    for model_id in ("a", "b"):
        await small.load_model(model_id)
        await default.load_model(model_id)
    assert resident(small) == ["b"]
    assert resident(default) == ["a", "b"]
    assert SyntheticModels.load_model.cache_for(default).capacity == 3


async def test_load_s_delays_each_load() -> None:
    deployment = SyntheticModels(load_s=0.05)
    started = asyncio.get_running_loop().time()
    await deployment.load_model("slow")
    assert asyncio.get_running_loop().time() - started >= 0.05


async def test_load_parallelism_one_runs_the_loads_one_after_another() -> None:
    deployment = SyntheticModels(load_s=0.05, load_parallelism=1)
    cache = SyntheticModels.load_model.cache_for(deployment)
    assert cache.max_concurrent_loads is None  # the cache calls all three loaders at once
    loop = asyncio.get_running_loop()
    started = loop.time()
    models = await asyncio.gather(*(deployment.load_model(m) for m in ("a", "b", "c")))
    assert loop.time() - started >= 3 * 0.05 - 0.005  # the hardware ran them in turn
    assert [m.model_id for m in models] == ["a", "b", "c"]
    stamps = [m.loaded_at for m in models]
    assert stamps == sorted(stamps)


async def test_a_failed_load_frees_the_hardware_for_the_next() -> None:
    deployment = SyntheticModels(load_s=0.01, fail_load=["broken"], load_parallelism=1)
    with pytest.raises(RuntimeError, match="synthetic load failure for broken"):
        await deployment.load_model("broken")
    model = await asyncio.wait_for(deployment.load_model("next"), 5)
    assert model.model_id == "next"


# -- answers --------------------------------------------------------------------------------


async def test_the_default_answer_names_model_process_and_loads(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLEX_REPLICA_ID", "replica-3")
    client = await serve(SyntheticModels())
    response = await client.get("/any/path", headers=headers("m1"))
    assert response.status == 200
    answer = await response.json()
    assert answer["model"] == "m1"
    assert answer["pid"] == os.getpid()
    assert answer["replica"] == "replica-3"
    assert answer["loads"] == synthetic.LOADS
    assert isinstance(answer["loaded_at"], float)
    assert "body_bytes" not in answer


async def test_the_body_size_is_echoed_when_a_body_is_sent(serve: Serve) -> None:
    client = await serve(SyntheticModels())
    response = await client.post("/", data=b"x" * 100_000, headers=headers("m1"))
    assert (await response.json())["body_bytes"] == 100_000


async def test_a_request_without_a_model_id_is_served_without_a_load(serve: Serve) -> None:
    deployment = SyntheticModels()
    client = await serve(deployment)
    response = await client.put("/", data=b"abc")
    answer = await response.json()
    assert answer["model"] == ""
    assert answer["loaded_at"] is None
    assert answer["body_bytes"] == 3
    assert len(SyntheticModels.load_model.cache_for(deployment)) == 0


async def test_echo_returns_the_body_as_is(serve: Serve) -> None:
    client = await serve(SyntheticModels())
    body = bytes(range(256)) * 1000
    response = await client.post("/?echo=1", data=body, headers=headers("m1"))
    assert response.status == 200
    assert response.content_type == "application/octet-stream"
    assert await response.read() == body


async def test_stream_yields_n_chunks() -> None:
    deployment = SyntheticModels()
    request = make_mocked_request("GET", "/?stream=4&interval=0")
    with request_context("m1"):
        chunks = await deployment(request)
        assert isinstance(chunks, AsyncIterator)
        assert [chunk async for chunk in chunks] == [f"chunk {i}\n" for i in range(4)]


async def test_stream_over_http(serve: Serve) -> None:
    client = await serve(SyntheticModels())
    response = await client.get("/?stream=3&interval=0.01", headers=headers("m1"))
    assert response.status == 200
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert await response.text() == "chunk 0\nchunk 1\nchunk 2\n"


async def test_status_sets_the_status_of_the_json_answer(serve: Serve) -> None:
    client = await serve(SyntheticModels())
    response = await client.get("/?status=418", headers=headers("m1"))
    assert response.status == 418
    assert (await response.json())["model"] == "m1"
    response = await client.get("/?status=204", headers=headers("m1"))
    assert response.status == 204


async def test_fail_is_a_500_after_the_model_loaded(serve: Serve) -> None:
    deployment = SyntheticModels()
    client = await serve(deployment)
    response = await client.post("/?fail=1", data=b"abc", headers=headers("m1"))
    assert response.status == 500
    assert "synthetic request failure" in await response.text()
    assert resident(deployment) == ["m1"]


async def test_sleep_overrides_infer_s() -> None:
    deployment = SyntheticModels(infer_s=60.0)
    request = make_mocked_request("GET", "/?sleep=0")
    with request_context("m1"):
        answer = await asyncio.wait_for(deployment(request), 5)
    assert isinstance(answer, dict)
    assert answer["model"] == "m1"


async def test_hang_never_answers_until_cancelled() -> None:
    deployment = SyntheticModels()
    request = make_mocked_request("GET", "/?hang=1")
    with request_context("m1"):
        task = asyncio.ensure_future(deployment(request))
        done, _ = await asyncio.wait({task}, timeout=0.1)
        assert not done
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_crash_exits_the_process_at_once() -> None:
    program = (
        "import asyncio\n"
        "from aiohttp.test_utils import make_mocked_request\n"
        "from examples.synthetic import SyntheticModels\n"
        "async def main():\n"
        "    await SyntheticModels()(make_mocked_request('GET', '/?crash=1'))\n"
        "    print('survived')\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert "survived" not in result.stdout
