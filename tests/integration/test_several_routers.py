"""Two routers side by side (`LocalCluster(routers=2)`, as `router.count: 2` runs them): both
serve the shared port, every replica reports to each router's own address, a router killed
under traffic costs no request to a client that retries once on the other router, and once it
is back with its reports it serves the warm models where they are, loading nothing again. A
drain asked of one router takes the replica out of routing on the other too (the replica's own
draining report tells it)."""

import asyncio
import itertools
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.auth import authorization_value
from common.headers import REPLICA_HEADER
from router.launch import LocalCluster, wait_for

MODEL = "serve_multiplexed_model_id"
WARM = ("warm-a", "warm-b", "warm-c")
TIMEOUT = aiohttp.ClientTimeout(total=10.0)
QUICK_DEPLOYMENT = {  # small caches and fast heartbeats, as tests/integration/conftest.py's
    "max_num_models_per_replica": 2,
    "heartbeat_interval_s": 0.2,
    "heartbeat_timeout_s": 2.0,
    "graceful_shutdown_timeout_s": 10.0,
}


def two_routers(tmp_path: Path, **kwargs: Any) -> LocalCluster:
    return LocalCluster(
        tmp_path, num_replicas=2, routers=2, deployment=QUICK_DEPLOYMENT, **kwargs
    ).start()


def resident_on_every_router(cluster: LocalCluster, placed: dict[str, str]) -> bool:
    return all(
        model
        in [m["model_id"] for r in doc["replicas"] if r["replica_id"] == rid for m in r["models"]]
        for doc in cluster.statuses()
        for model, rid in placed.items()
    )


async def warm_up(cluster: LocalCluster, session: aiohttp.ClientSession) -> dict[str, str]:
    """Load the warm models through the first router; model -> the replica holding it, once
    every router shows it there."""
    placed: dict[str, str] = {}
    for model in WARM:
        async with session.get(cluster.router_urls[0] + "/", headers={MODEL: model}) as r:
            assert r.status == 200, await r.text()
            placed[model] = r.headers[REPLICA_HEADER]
    await asyncio.to_thread(
        wait_for, lambda: resident_on_every_router(cluster, placed), 20, "warm models everywhere"
    )
    return placed


async def test_the_shared_port_is_served_by_both_routers(tmp_path: Path) -> None:
    cluster = two_routers(tmp_path)
    try:
        assert len(set(cluster.router_urls)) == 2
        assert cluster.url not in cluster.router_urls
        for document in cluster.statuses():  # each knows every replica from its own reports
            assert {r["replica_id"] for r in document["replicas"]} == {"replica-1", "replica-2"}
        answered_by: set[str] = set()
        headers = {"Authorization": authorization_value(cluster.secret), "Connection": "close"}
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            async with session.get(cluster.url + "/", headers={MODEL: "m1"}) as r:
                assert r.status == 200
            for _ in range(200):  # each new connection goes to one router or the other
                async with session.get(cluster.url + "/-/status", headers=headers) as r:
                    answered_by.add((await r.json())["router"]["direct_url"])
                if len(answered_by) == 2:
                    break
        assert answered_by == set(cluster.router_urls)
    finally:
        cluster.close()


class AlternatingClient:
    """Steady GETs for the warm models, sent to the routers' direct URLs in turn; a request that
    fails is retried once on another router. `out` holds routers (by index) not to send to."""

    def __init__(self, urls: list[str], workers: int = 3) -> None:
        self.urls = urls
        self.workers = workers
        self.out: set[int] = set()
        self.failed: list[str] = []
        self.retried = 0
        self.served = [0] * len(urls)
        self._turn = itertools.count()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> "AlternatingClient":
        self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        self._tasks = [asyncio.create_task(self._worker(n)) for n in range(self.workers)]
        return self

    async def _get(self, router: int, model: str) -> str | None:
        """None when served, else what went wrong."""
        try:
            async with self._session.get(self.urls[router] + "/", headers={MODEL: model}) as r:
                body = await r.read()
                if r.status == 200:
                    self.served[router] += 1
                    return None
                return f"{r.status} {body[:200]!r}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return repr(exc)

    async def _worker(self, n: int) -> None:
        for i in itertools.count(n):
            if self._stop.is_set():
                return
            live = [r for r in range(len(self.urls)) if r not in self.out]
            router = live[next(self._turn) % len(live)]
            model = WARM[i % len(WARM)]
            problem = await self._get(router, model)
            if problem is not None:
                self.retried += 1
                other = (router + 1) % len(self.urls)
                again = await self._get(other, model)
                if again is not None:
                    self.failed.append(f"router {router}: {problem}; router {other}: {again}")

    async def served_more(self, router: int, count: int) -> None:
        start = self.served[router]
        await asyncio.to_thread(
            wait_for, lambda: self.served[router] >= start + count, 30, f"router {router} serving"
        )

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()


async def test_a_router_killed_under_traffic_fails_no_request_and_comes_back_warm(
    tmp_path: Path,
) -> None:
    cluster = two_routers(tmp_path, router_log_level="WARNING")
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            placed = await warm_up(cluster, session)
        loads = cluster.load_counts()
        assert sum(loads.values()) == len(WARM), loads

        async with AlternatingClient(cluster.router_urls) as client:
            await client.served_more(1, 20)
            cluster.kill_router(1)
            await client.served_more(0, 50)  # while router 1 is gone
            client.out.add(1)  # what a client learns from refused connections
            cluster.restart_router(1)
            # Back in rotation once it has every replica's report, as a readiness check sees.
            await asyncio.to_thread(
                wait_for,
                lambda: resident_on_every_router(cluster, placed),
                30,
                "the restarted router's reports",
            )
            client.out.discard(1)
            await client.served_more(1, 50)
        assert client.failed == []
        assert client.retried > 0  # the kill was felt, and absorbed
        assert cluster.load_counts() == loads
        for model, replica_id in placed.items():  # still where they were, on both routers
            assert resident_on_every_router(cluster, {model: replica_id})
    finally:
        cluster.close()


async def test_a_drain_through_one_router_takes_the_replica_out_of_routing_on_both(
    tmp_path: Path,
) -> None:
    cluster = two_routers(tmp_path)
    try:
        auth = {"Authorization": authorization_value(cluster.secret)}
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            drain = {"replica": "replica-2"}
            url = cluster.router_urls[0] + "/-/admin/drain"
            async with session.post(url, json=drain, headers=auth) as r:
                assert r.status == 200, await r.text()

            def out_on_the_other_router() -> bool:
                replicas = {r["replica_id"]: r["state"] for r in cluster.status(1)["replicas"]}
                return replicas.get("replica-2", "gone") != "healthy"

            await asyncio.to_thread(wait_for, out_on_the_other_router, 20, "replica-2 out")
            served_by = set()
            for n in range(20):
                model = f"after-drain-{n % 4}"
                async with session.get(cluster.router_urls[1] + "/", headers={MODEL: model}) as r:
                    assert r.status == 200, await r.text()
                    served_by.add(r.headers[REPLICA_HEADER])
        assert served_by == {"replica-1"}
    finally:
        cluster.close()


def test_a_cluster_needs_a_router(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="routers must be >= 1"):
        LocalCluster(tmp_path, routers=0)


async def test_a_replicas_state_lists_every_router_it_reports_to(tmp_path: Path) -> None:
    cluster = two_routers(tmp_path)
    try:
        headers = {"Authorization": authorization_value(cluster.secret)}
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            for url in cluster.replica_urls().values():
                async with session.get(url + "/-/state", headers=headers) as answer:
                    assert answer.status == 200
                    routers = (await answer.json())["routers"]
                assert routers == [
                    {"url": router_url, "connected": True}
                    for router_url in sorted(cluster.router_urls)
                ]
    finally:
        cluster.close()
