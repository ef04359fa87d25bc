"""The admin API on a real cluster: refused without the secret; preload, evict, drain and the
models list, over HTTP and from the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
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


# -- the CLI -------------------------------------------------------------------------------


def modelplex(cluster: LocalCluster, *args: str, secret: str | None = None) -> tuple[int, str]:
    """Run `python -m router.launch ARGS --url <router>` with the secret in its environment:
    (exit code, stdout then stderr); never a traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLEX_SECRET")}
    env["MODELPLEX_SECRET"] = cluster.secret if secret is None else secret
    done = subprocess.run(
        [sys.executable, "-m", "router.launch", *args, "--url", cluster.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout + done.stderr


async def test_the_cli_lists_preloads_evicts_and_drains(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=2)
    cluster.wait_healthy(2)
    code, out = modelplex(cluster, "preload", "m1", "--copies", "2", "--json")
    assert code == 0, out
    assert sorted(json.loads(out)["loading"]) == ["replica-1", "replica-2"]

    def listed() -> dict[str, str]:
        code, out = modelplex(cluster, "models", "--json")
        assert code == 0, out
        return copies(json.loads(out), "m1")

    await until(lambda: listed() == {"replica-1": "loaded", "replica-2": "loaded"}, "2 copies")
    code, out = modelplex(cluster, "models")
    assert code == 0, out
    header, row = out.splitlines()
    assert header.split() == ["MODEL", "REQ/MIN", "WAITING", "REPLICAS"]
    assert row.startswith("m1 ")
    assert "replica-1 (loaded, idle" in row
    assert "replica-2 (loaded, idle" in row

    code, out = modelplex(cluster, "evict", "m1", "--replica", "replica-1")
    assert (code, out) == (0, "m1 on replica-1: evicted\n")
    assert listed() == {"replica-2": "loaded"}

    code, out = modelplex(cluster, "drain", "replica-2")
    assert (code, out) == (0, "replica-2: draining\n")
    await until(lambda: "replica-2" not in cluster.replica_urls(), "replica-2 to leave")
    assert listed() == {}

    code, out = modelplex(cluster, "drain", "nobody")
    assert code == 1
    assert "no replica 'nobody'" in out
    code, out = modelplex(cluster, "models", secret="wrong")
    assert code == 1
    assert "refused the cluster secret" in out


def test_a_closed_pipe_ends_a_verb_quietly(start_cluster: Callable[..., LocalCluster]) -> None:
    cluster = start_cluster(num_replicas=1)
    env = {**os.environ, "MODELPLEX_SECRET": cluster.secret}
    verb = subprocess.Popen(
        [sys.executable, "-m", "router.launch", "models", "--json", "--url", cluster.url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert verb.stdout is not None
    assert verb.stderr is not None
    verb.stdout.close()  # the reader is gone before the answer is printed
    assert verb.wait(timeout=60) == 141
    assert verb.stderr.read() == b""
    verb.stderr.close()
