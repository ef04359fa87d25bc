"""The admin API on a real cluster: refused without the secret; preload, evict, drain and the
models list, over HTTP and from the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from common.auth import authorization_value
from router.launch import LocalCluster

from polling import until

MODEL = "serve_multiplexed_model_id"
ADMIN_ROUTES = [
    ("GET", "/-/admin/models", None),
    ("POST", "/-/admin/preload", {"model": "m", "copies": 1}),
    ("POST", "/-/admin/evict", {"model": "m"}),
    ("POST", "/-/admin/drain", {"replica": "replica-1"}),
    ("GET", "/-/admin/anything", None),
]


def copies(document: dict[str, Any], model_id: str) -> dict[str, str]:
    """Replica id -> "loaded" or "loading", for `model_id` in a models document."""
    for model in document["models"]:
        if model["model"] == model_id:
            return {c["replica"]: c["state"] for c in model["replicas"]}
    return {}


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_every_admin_route_needs_the_cluster_secret(
    start_cluster: Callable[..., LocalCluster],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    cluster = start_cluster(num_replicas=1)
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": authorization_value("not-the-secret")}):
            async with session.request(
                method, cluster.url + path, json=body, headers=headers
            ) as answer:
                assert answer.status == 401
                assert (await answer.json())["error"]["code"] == "unauthorized"
    assert cluster.healthy()[0]["state"] == "healthy"  # nothing was drained


async def test_preload_evict_and_drain_over_http(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=2, init_kwargs={"load_s": 0.3})
    cluster.wait_healthy(2)
    admin = {"Authorization": authorization_value(cluster.secret)}
    async with aiohttp.ClientSession(headers=admin) as session:

        async def call(method: str, path: str, body: object = None) -> tuple[int, Any]:
            async with session.request(method, cluster.url + path, json=body) as answer:
                return answer.status, await answer.json()

        async def placed(model_id: str) -> dict[str, str]:
            status, document = await call("GET", "/-/admin/models")
            assert status == 200
            return copies(document, model_id)

        status, body = await call("POST", "/-/admin/preload", {"model": "m1", "copies": 2})
        assert status == 200, body
        assert body["holding"] == []
        assert sorted(body["loading"]) == ["replica-1", "replica-2"]
        assert set((await placed("m1")).values()) <= {"loading", "loaded"}  # at once
        await until_async(
            lambda: placed("m1"), {"replica-1": "loaded", "replica-2": "loaded"}, "loaded"
        )
        status, body = await call("POST", "/-/admin/preload", {"model": "m1", "copies": 2})
        assert (status, body["loading"]) == (200, [])

        status, body = await call("POST", "/-/admin/evict", {"model": "m1", "replica": "replica-1"})
        assert (status, body) == (200, {"model": "m1", "replicas": {"replica-1": "evicted"}})
        assert await placed("m1") == {"replica-2": "loaded"}  # at once, and reports agree:
        await asyncio.sleep(0.5)  # a few heartbeats (0.2 s)
        assert await placed("m1") == {"replica-2": "loaded"}

        # A model in use leaves only after its request.
        request = asyncio.create_task(
            session.get(cluster.url + "/predict?sleep=1", headers={MODEL: "m1"})
        )
        await until(lambda: in_flight(cluster) == 1, "the request to start")
        status, body = await call("POST", "/-/admin/evict", {"model": "m1"})
        assert status == 200
        assert body["replicas"]["replica-2"] == "after_requests"
        async with await request as answer:
            assert answer.status == 200
            assert answer.headers["x-modelplex-replica"] == "replica-2"
        await until_async(lambda: placed("m1"), {}, "m1 gone after its request")
        assert cluster.replica_models("replica-2") == []

        status, body = await call("POST", "/-/admin/drain", {"replica": "replica-2"})
        assert (status, body) == (200, {"replica": "replica-2", "state": "draining"})
        for _ in range(5):
            async with session.get(cluster.url + "/predict", headers={MODEL: "m2"}) as answer:
                assert answer.status == 200
                assert answer.headers["x-modelplex-replica"] == "replica-1"
        await until(
            lambda: "replica-2" not in cluster.replica_urls(), "the drained replica to leave"
        )

        status, body = await call("POST", "/-/admin/drain", {"replica": "nobody"})
        assert (status, body["error"]["code"]) == (404, "unknown_replica")
        status, body = await call("POST", "/-/admin/preload", {"copies": 2})
        assert (status, body["error"]["code"]) == (400, "bad_request")


def in_flight(cluster: LocalCluster) -> int:
    return sum(r["in_flight"] for r in cluster.status()["replicas"])


async def until_async(read: Callable[[], Any], expected: object, what: str) -> None:
    """Poll the coroutine `read()` until it returns `expected`, for up to 10 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while (got := await read()) != expected:
        assert loop.time() < deadline, f"{what}: still {got!r}"
        await asyncio.sleep(0.05)
