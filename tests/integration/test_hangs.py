"""A replica that stops answering (SIGSTOP): taken out of routing once its reports stop, its
requests in flight retried elsewhere when that is safe or answered 504 when not — never left
hanging until the request deadline — and back, with its models, when it resumes."""

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import aiohttp

from router.launch import LocalCluster, wait_for

MODEL = "serve_multiplexed_model_id"
REQUEST_TIMEOUT_S = 60.0  # far beyond the heartbeat timeout (2 s): a hang would show


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def state_of(cluster: LocalCluster, replica_id: str) -> str:
    return next(r["state"] for r in cluster.status()["replicas"] if r["replica_id"] == replica_id)


async def warm(session: aiohttp.ClientSession, cluster: LocalCluster, model: str) -> str:
    async with session.get(cluster.url + "/", headers={MODEL: model}) as response:
        assert response.status == 200
        return response.headers["x-modelplex-replica"]


async def test_requests_in_flight_on_a_stopped_replica_are_retried_and_it_rejoins(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(
        num_replicas=2,
        init_kwargs={"infer_s": 0.01},
        router={"request_timeout_s": REQUEST_TIMEOUT_S},
    )
    async with aiohttp.ClientSession() as session:
        victim = await warm(session, cluster, "m1")
        incarnation = next(
            r["incarnation"] for r in cluster.status()["replicas"] if r["replica_id"] == victim
        )

        async def slow(method: str) -> tuple[int, str, float]:
            started = time.monotonic()
            async with session.request(
                method, cluster.url + "/?sleep=1.5", headers={MODEL: "m1"}, data=b"x" * 10
            ) as response:
                await response.read()
                replica = response.headers.get("x-modelplex-replica", "")
                return response.status, replica, time.monotonic() - started

        requests = [asyncio.create_task(slow(m)) for m in ("GET", "GET", "PUT", "POST")]
        await asyncio.sleep(0.3)  # let them reach the victim before it stops
        with stopped(cluster.replicas[victim].pid):
            results = await asyncio.wait_for(asyncio.gather(*requests), REQUEST_TIMEOUT_S / 2)
            for status, replica, elapsed in results:
                assert status == 200, results
                assert replica != victim, results
                print(f"answered by {replica} after {elapsed:.1f} s")
            assert state_of(cluster, victim) == "stale"
        wait_for(lambda: state_of(cluster, victim) == "healthy", 30, f"{victim} to rejoin")
        after = next(r for r in cluster.status()["replicas"] if r["replica_id"] == victim)
        assert after["incarnation"] == incarnation  # the same process, not a restart
        assert "m1" in [m["model_id"] for m in after["models"]]  # it kept its model


async def test_a_request_that_cannot_be_retried_gets_504_when_its_replica_stops(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(
        num_replicas=2,
        init_kwargs={"infer_s": 0.01},
        router={"request_timeout_s": REQUEST_TIMEOUT_S, "retry_on_replica_failure": False},
    )
    async with aiohttp.ClientSession() as session:
        victim = await warm(session, cluster, "m1")

        async def post() -> tuple[int, dict[str, object], float]:
            started = time.monotonic()
            async with session.post(
                cluster.url + "/?sleep=1.5", headers={MODEL: "m1"}, data=b"an order"
            ) as response:
                return response.status, await response.json(), time.monotonic() - started

        request = asyncio.create_task(post())
        await asyncio.sleep(0.3)
        with stopped(cluster.replicas[victim].pid):
            status, body, elapsed = await asyncio.wait_for(request, REQUEST_TIMEOUT_S / 2)
        print(f"answered after {elapsed:.1f} s")
        assert status == 504
        assert body["error"]["code"] == "replica_unresponsive"  # type: ignore[index]
        async with session.get(cluster.url + "/", headers={MODEL: "m1"}) as response:
            assert response.status == 200  # the router serves on
