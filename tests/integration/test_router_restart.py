"""The router killed (SIGKILL) and started again on its port: while it is gone a connection is
refused at once (no hang); the new router answers 503 with Retry-After (`no_replica`) until
replicas report, never a hang; once they have, the models they kept warm are served warm, where
they are, with no model loaded again."""

import json
import os
import signal
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from common.addresses import reachable_url
from common.headers import COLD_HEADER, REPLICA_HEADER
from router.launch import LocalCluster, wait_for

MODEL = "serve_multiplexed_model_id"
WARM = ("warm-a", "warm-b", "warm-c")
REQUEST_TIMEOUT_S = 10.0  # a hang would show; an answer takes milliseconds
REPORTED_WITHIN_S = 30.0  # a liveness bound: replicas reconnect within 0.5 s
REPO_ROOT = Path(__file__).resolve().parents[2]


def kill_router(cluster: LocalCluster) -> int:
    """SIGKILL the cluster's router; the port it listened on."""
    router = cluster.router
    assert router is not None
    port = urllib.parse.urlsplit(cluster.url).port
    assert port is not None
    os.kill(router.pid, signal.SIGKILL)
    assert router.wait() == -signal.SIGKILL
    router.stop()
    return port


async def answer(
    session: aiohttp.ClientSession, url: str, model: str | None
) -> tuple[int, CIMultiDict[str], bytes]:
    headers = {MODEL: model} if model else {}
    async with session.get(url + "/", headers=headers) as response:
        return response.status, response.headers.copy(), await response.read()


def warm_in_view(cluster: LocalCluster, placed: dict[str, str]) -> bool:
    """The router shows every model of `placed` resident on the replica that loaded it."""
    return all(model in cluster.replica_models(r) for model, r in placed.items())


async def test_a_restarted_router_serves_the_warm_models_without_loading_them_again(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=2)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        placed: dict[str, str] = {}
        for model in WARM:
            status, headers, _ = await answer(session, cluster.url, model)
            assert status == 200
            placed[model] = headers[REPLICA_HEADER]
        wait_for(lambda: warm_in_view(cluster, placed), 10, "the warm models in reports")
        loads = cluster.load_counts()
        assert sum(loads.values()) == len(WARM), loads

    url = cluster.url
    port = kill_router(cluster)

    # No router: refused at once, not left hanging.
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.monotonic()
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            await answer(session, url, WARM[0])
        assert isinstance(refused.value.os_error, ConnectionRefusedError), refused.value
        assert time.monotonic() - started < REQUEST_TIMEOUT_S / 2

    # The new router, before and while the replicas report again. Requests here name no
    # model, so that one answered before every replica has reported loads nothing.
    router = cluster.start_router(port)
    assert reachable_url(router.url()) == url
    early: list[int] = []
    deadline = time.monotonic() + REPORTED_WITHIN_S
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while len(cluster.healthy()) < 2:
            assert time.monotonic() < deadline, (
                f"no 2 healthy replicas within {REPORTED_WITHIN_S} s"
            )
            status, headers, body = await answer(session, url, None)
            early.append(status)
            assert status in (200, 503), (status, headers, body)
            if status == 503:
                assert headers.get("Retry-After"), headers
                assert json.loads(body)["error"]["code"] == "no_replica", body
        print(f"answers while the replicas reported again: {Counter(early)}")
        wait_for(lambda: warm_in_view(cluster, placed), 10, "the warm models in the new view")

        for model, replica_id in placed.items():
            status, headers, _ = await answer(session, url, model)
            assert status == 200
            assert COLD_HEADER not in headers, (model, headers)
            assert headers[REPLICA_HEADER] == replica_id
    assert cluster.load_counts() == loads
