"""Three routers with a Redis placement lease: one load per cold model, whatever their views.

Issue 12's acceptance case, live: a real `redis-server`, three routers and four replicas as
real processes. Each router carries steady traffic of its own (its own models, its own
requests in flight, its own demand), so their views differ at every instant; then the first
request for a model nobody holds reaches all three routers at once, 50 times over. Every
repetition must make exactly one load: all three answers come from one replica, and from one
load there (the same `loaded_at`). With Redis gone, the routers keep serving on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from common.auth import authorization_value
from common.headers import REPLICA_HEADER
from router.launch import LocalCluster

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

MODEL = "serve_multiplexed_model_id"
ROUTERS = 3
REPETITIONS = 50
TIMEOUT = aiohttp.ClientTimeout(total=30.0)
DEPLOYMENT = {
    "max_num_models_per_replica": 3,
    "max_ongoing_requests": 8,
    "heartbeat_interval_s": 0.2,
    "heartbeat_timeout_s": 2.0,
    "graceful_shutdown_timeout_s": 10.0,
}
LIVENESS_S = 20.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@contextlib.contextmanager
def redis_server(workdir: Path, port: int | None = None) -> Iterator[int]:
    """A real redis-server on loopback (an ephemeral port unless `port`), without persistence;
    yields its port and stops it at the end."""
    assert REDIS_SERVER is not None
    for _ in range(5):  # a port picked free may be taken before redis binds it: pick again
        chosen = port or _free_port()
        argv = [REDIS_SERVER, "--port", str(chosen), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(workdir)]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + LIVENESS_S
        while process.poll() is None and not _accepts(chosen):
            if time.monotonic() > deadline:
                process.kill()
                raise TimeoutError("redis-server did not accept connections in time")
            time.sleep(0.02)
        if process.poll() is None:
            try:
                yield chosen
            finally:
                process.terminate()
                process.wait(timeout=10)
            return
        if port is not None:
            break
    raise RuntimeError("redis-server did not start")


def lease_cluster(tmp_path: Path, redis_port: int) -> LocalCluster:
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    return LocalCluster(
        workdir,
        num_replicas=4,
        routers=ROUTERS,
        deployment=DEPLOYMENT,
        init_kwargs={"load_s": 0.3, "infer_s": 0.005},
        # A claim may wait longer than the default 50 ms on a busy CI machine: this test is
        # about agreement, not Redis's latency.
        router={
            "placement_lease_url": f"redis://127.0.0.1:{redis_port}/0",
            "placement_lease_timeout_s": 1.0,
        },
    ).start()


async def own_traffic(
    session: aiohttp.ClientSession, url: str, models: list[str], stop: asyncio.Event
) -> list[int]:
    """One router's traffic of its own until `stop`: its models, a few requests in flight."""
    statuses: list[int] = []

    async def worker(offset: int) -> None:
        for n in itertools.count(offset):
            if stop.is_set():
                return
            headers = {MODEL: models[n % len(models)]}
            async with session.get(url + "/?sleep=0.02", headers=headers) as answer:
                await answer.read()
                statuses.append(answer.status)

    await asyncio.gather(*(worker(k) for k in range(3)))
    return statuses


async def first_requests(
    session: aiohttp.ClientSession, urls: list[str], model_id: str
) -> list[tuple[int, str, float]]:
    """The first request for `model_id` on every router at once: (status, replica, loaded_at)."""

    async def one(url: str) -> tuple[int, str, float]:
        async with session.get(url + "/", headers={MODEL: model_id}) as answer:
            body = await answer.json()
            return answer.status, answer.headers[REPLICA_HEADER], float(body["loaded_at"])

    return list(await asyncio.gather(*(one(url) for url in urls)))


def counters(cluster: LocalCluster) -> list[dict[str, int]]:
    return [document["router"]["counters"] for document in cluster.statuses()]


async def test_three_routers_with_divergent_views_load_each_cold_model_once(
    tmp_path: Path,
) -> None:
    with redis_server(tmp_path) as port:
        cluster = lease_cluster(tmp_path, port)
        try:
            urls = cluster.router_urls
            stop = asyncio.Event()
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
                traffic = [
                    asyncio.create_task(
                        own_traffic(session, url, [f"own-{i}-a", f"own-{i}-b"], stop)
                    )
                    for i, url in enumerate(urls)
                ]
                await asyncio.sleep(0.5)  # every router busy with its own traffic
                split = []
                for repetition in range(REPETITIONS):
                    answers = await first_requests(session, urls, f"cold-{repetition}")
                    assert all(status == 200 for status, _, _ in answers), answers
                    if len({(replica, loaded_at) for _, replica, loaded_at in answers}) > 1:
                        split.append((repetition, answers))
                stop.set()
                background = [s for task in traffic for s in await task]
            assert not split, f"{len(split)} of {REPETITIONS} loaded a cold model twice: {split}"
            assert background
            assert set(background) == {200}
            seen = counters(cluster)
            assert sum(c.get("lease_claims", 0) for c in seen) >= REPETITIONS
            assert sum(c.get("lease_unavailable", 0) for c in seen) == 0
            for name in ("lease_redirects", "lease_stale"):
                print(f"{name}: {[c.get(name, 0) for c in seen]}")
        finally:
            cluster.close()


async def test_routers_keep_serving_while_redis_is_away(tmp_path: Path) -> None:
    with redis_server(tmp_path) as port:
        cluster = lease_cluster(tmp_path, port)
    try:  # redis is stopped now: every claim fails
        urls = cluster.router_urls
        headers = {"Authorization": authorization_value(cluster.secret)}
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            for n in range(10):
                answers = await first_requests(session, urls, f"alone-{n}")
                assert [status for status, _, _ in answers] == [200] * ROUTERS
            async with session.get(urls[0] + "/-/healthz", headers=headers) as answer:
                assert answer.status == 200
        assert sum(c.get("lease_unavailable", 0) for c in counters(cluster)) >= 1
        with redis_server(tmp_path, port):  # back on the same address: claims work again
            before = [c.get("lease_unavailable", 0) for c in counters(cluster)]
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
                deadline = time.monotonic() + LIVENESS_S
                for n in itertools.count():
                    answers = await first_requests(session, urls, f"again-{n}")
                    assert [status for status, _, _ in answers] == [200] * ROUTERS
                    after = [c.get("lease_unavailable", 0) for c in counters(cluster)]
                    if after == before and len({r for _, r, _ in answers}) == 1:
                        break  # a whole round with every claim answered, on one replica
                    before = after
                    assert time.monotonic() < deadline, "claims did not recover"
    finally:
        cluster.close()
