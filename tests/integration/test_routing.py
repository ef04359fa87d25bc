"""The router and replicas as real processes: affinity, single loads, eviction, streaming,
failures and bad input."""

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import msgpack
import pytest

from common.auth import authorization_value
from router.launch import LocalCluster, wait_for

from polling import until

MODEL = "serve_multiplexed_model_id"


def total_loads(cluster: LocalCluster) -> int:
    """Sum of every replica's serve_multiplexed_models_load_counter, from its /-/metrics."""
    return sum(cluster.load_counts().values())


async def get(session: aiohttp.ClientSession, url: str, model: str, **kw: Any) -> tuple[int, str]:
    async with session.get(url, headers={MODEL: model}, **kw) as response:
        await response.read()
        return response.status, response.headers.get("x-modelplex-replica", "")


async def test_repeat_requests_stay_on_one_replica(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=3)
    async with aiohttp.ClientSession() as session:
        seen = Counter()
        for _ in range(30):
            status, replica = await get(session, cluster.url + "/predict", "alpha")
            assert status == 200
            seen[replica] += 1
        assert len(seen) == 1, seen
    assert total_loads(cluster) == 1


@pytest.mark.parametrize("max_ongoing_requests", [8, 200])
async def test_a_burst_of_first_requests_causes_one_load(
    start_cluster: Callable[..., LocalCluster], max_ongoing_requests: int
) -> None:
    cluster = start_cluster(
        num_replicas=3,
        init_kwargs={"load_s": 0.5},
        max_ongoing_requests=max_ongoing_requests,
    )
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(get(session, cluster.url + "/", "burst-model") for _ in range(100))
        )
    assert all(status == 200 for status, _ in results), Counter(s for s, _ in results)
    assert len({replica for _, replica in results}) == 1
    assert total_loads(cluster) == 1


async def test_lru_eviction_shows_in_status_within_a_second(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=1, max_num_models_per_replica=2)
    async with aiohttp.ClientSession() as session:
        for model in ("m1", "m2", "m3"):
            assert (await get(session, cluster.url + "/", model))[0] == 200
        evicted_at = time.monotonic()
    wait_for(lambda: cluster.replica_models("replica-1") == ["m2", "m3"], 1.0, "m1 evicted")
    assert time.monotonic() - evicted_at < 1.0


async def test_the_configured_load_limit_reaches_the_replica_report(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=1, max_num_models_per_replica=3, max_concurrent_loads=1)
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(get(session, cluster.url + "/", m) for m in "xyz"))
        assert [status for status, _ in results] == [200, 200, 200]
        url = cluster.status()["replicas"][0]["url"] + "/-/state"
        auth = {"Authorization": authorization_value(cluster.secret)}
        async with session.get(url, headers=auth) as response:
            state = await response.json()
    assert state["max_concurrent_loads"] == 1
    assert total_loads(cluster) == 3


async def test_a_streamed_answer_arrives_chunk_by_chunk(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=1)
    arrivals: list[float] = []
    body = b""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            cluster.url + "/stream?stream=5&interval=0.2", headers={MODEL: "s"}
        ) as response,
    ):
        assert response.status == 200
        async for chunk in response.content.iter_any():
            arrivals.append(time.monotonic())
            body += chunk
    assert body == b"".join(f"chunk {i}\n".encode() for i in range(5))
    assert len(arrivals) >= 4
    assert arrivals[-1] - arrivals[0] > 0.5  # not buffered into one piece at the end


async def raw_request(url: str, header_value: bytes) -> tuple[int, dict[str, Any]]:
    """Send bytes no well-behaved client would, and read the JSON answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + MODEL.encode()
        + b": "
        + header_value
        + b"\r\n\r\n"
    )
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_invalid_model_ids_get_clear_errors(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=1)
    for bad in (b"x" * 257, b"bad\tid", b"caf\xe9"):
        status, document = await raw_request(cluster.url, bad)
        assert status == 400, (bad, document)
        assert document["error"]["code"] == "invalid_model_id"
        assert document["error"]["message"]
    async with aiohttp.ClientSession() as session:
        assert (await get(session, cluster.url + "/", "fine"))[0] == 200


async def test_garbage_on_the_state_channel_is_refused_and_the_router_keeps_serving(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=1)
    auth = {"Authorization": f"Bearer {cluster.secret}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(cluster.url + "/-/replicas/report", data=b"\xc1garbage") as r:
            assert r.status == 401
        async with session.post(
            cluster.url + "/-/replicas/report", data=b"\xc1garbage", headers=auth
        ) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "bad_report"
        async with session.ws_connect(cluster.url + "/-/replicas/channel", headers=auth) as ws:
            await ws.send_bytes(msgpack.packb({"v": 99, "type": "snapshot"}))
            reply = msgpack.unpackb((await ws.receive(timeout=5)).data)
            assert reply["type"] == "error"
            assert "version" in reply["message"]
            await ws.send_str("hello")
            assert msgpack.unpackb((await ws.receive(timeout=5)).data)["type"] == "error"
        assert (await get(session, cluster.url + "/", "still-works"))[0] == 200
    assert len(cluster.healthy()) == 1


async def test_kill_9_of_a_replica_under_traffic_fails_no_request(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=2, init_kwargs={"infer_s": 0.01})
    failures: list[Any] = []
    answered = [0]
    done = asyncio.Event()

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        while not done.is_set():
            status, _ = await get(session, cluster.url + "/", f"model-{n % 4}")
            if status != 200:
                failures.append(status)
            answered[0] += 1

    async def answered_at_least(count: int) -> None:
        await until(lambda: answered[0] >= count, f"{count} answers", timeout_s=60)

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(client(session, n)) for n in range(8)]
        await answered_at_least(20)
        victim = cluster.replicas["replica-1"]
        os.kill(victim.popen.pid, signal.SIGKILL)
        await answered_at_least(answered[0] + 40)  # the traffic goes on past the kill
        done.set()
        await asyncio.gather(*tasks)
    assert failures == []
    states = {r["replica_id"]: r["state"] for r in cluster.status()["replicas"]}
    assert states["replica-1"] == "down"
    assert states["replica-2"] == "healthy"


async def test_health_and_status_endpoints(start_cluster: Callable[..., LocalCluster]) -> None:
    cluster = start_cluster(num_replicas=2)
    async with aiohttp.ClientSession() as session:
        async with session.get(cluster.url + "/-/healthz") as r:
            assert r.status == 200
        await get(session, cluster.url + "/", "a")
        async with session.get(cluster.url + "/-/metrics") as r:
            assert "modelplex_router_events" in await r.text()
    document = cluster.status()
    assert {r["replica_id"] for r in document["replicas"]} == {"replica-1", "replica-2"}
    assert document["router"]["counters"]["requests"] >= 1
    for process in cluster.replicas.values():
        process.signal(signal.SIGTERM)
    for process in cluster.replicas.values():
        assert process.wait() == 0

    def no_replica() -> bool:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(cluster.url + "/-/healthz", timeout=5)
        except urllib.error.HTTPError as exc:
            return exc.code == 503
        return False

    wait_for(no_replica, 10, "healthz to turn 503")
