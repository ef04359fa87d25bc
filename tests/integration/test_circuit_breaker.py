"""The circuit breaker with real processes: a replica whose reports arrive but whose data port
refuses connections (it advertises a closed port) is taken out of routing after
`router.breaker_failures` refused requests, whatever its reports say; every client request is
retried on the good replica and succeeds; after `router.breaker_cooldown_s` one probe request
is let through, and its failure opens the circuit again."""

import itertools
import socket
import time
from collections.abc import Callable

import aiohttp

from common.status import ReplicaStatusDocument
from router.launch import LocalCluster, ReplicaPlacement, wait_for

MODEL = "serve_multiplexed_model_id"
GOOD = "replica-1"
BAD = "replica-2"
BREAKER = {"breaker_failures": 2, "breaker_cooldown_s": 0.5}
DEADLINE_S = 30.0  # a liveness bound, never a speed claim
HEARTBEAT_TIMEOUT_S = 2.0  # QUICK_DEPLOYMENT's, in tests/integration/conftest.py

_fresh_models = (f"model-{n}" for n in itertools.count())


def closed_port() -> int:
    """A loopback port nothing listens on: bound to learn a free number, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def start_with_a_refusing_replica(start_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    refusing = ReplicaPlacement(advertise_url=f"http://127.0.0.1:{closed_port()}")
    return start_cluster(num_replicas=2, router=BREAKER, placements={BAD: refusing})


def replica(cluster: LocalCluster, replica_id: str) -> ReplicaStatusDocument:
    return next(r for r in cluster.status()["replicas"] if r["replica_id"] == replica_id)


def counter(cluster: LocalCluster, name: str) -> int:
    return cluster.status()["router"]["counters"].get(name, 0)


async def serve_one(session: aiohttp.ClientSession, cluster: LocalCluster) -> None:
    """A request for a model never asked for before, so the router may place it on either
    replica; it must be answered 200 by the good one."""
    model = next(_fresh_models)
    async with session.get(cluster.url + "/", headers={MODEL: model}) as response:
        body = await response.text()
        assert response.status == 200, (model, response.status, body)
        assert response.headers["x-modelplex-replica"] == GOOD, (model, body)


async def serve_until(
    session: aiohttp.ClientSession, cluster: LocalCluster, condition: Callable[[], bool], what: str
) -> int:
    """`serve_one` until `condition()` holds; how many requests that took."""
    deadline = time.monotonic() + DEADLINE_S
    sent = 0
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {DEADLINE_S} s waiting for {what}"
        await serve_one(session, cluster)
        sent += 1
    return sent


def circuit_open_while_reporting(cluster: LocalCluster) -> bool:
    """The refusing replica is `circuit_open` and its reports are fresh (it is not stale)."""
    bad = replica(cluster, BAD)
    return bad["state"] == "circuit_open" and bad["last_report_age_s"] < HEARTBEAT_TIMEOUT_S / 2


async def open_the_circuit(session: aiohttp.ClientSession, cluster: LocalCluster) -> None:
    sent = await serve_until(
        session, cluster, lambda: counter(cluster, "circuit_opened") >= 1, "the circuit to open"
    )
    print(f"the circuit opened after {sent} requests")
    wait_for(lambda: circuit_open_while_reporting(cluster), 10, f"{BAD} to show circuit_open")


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE_S))


async def test_a_replica_that_refuses_connections_leaves_routing_though_it_reports(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_with_a_refusing_replica(start_cluster)
    assert replica(cluster, BAD)["state"] == "healthy"  # its reports say so
    async with client() as session:
        await open_the_circuit(session, cluster)
        counters = cluster.status()["router"]["counters"]
        assert counters["circuit_opened"] >= 1, counters
        assert counters["retries"] >= 1, counters
        assert replica(cluster, GOOD)["state"] == "healthy"
        for _ in range(10):  # out of routing (or probed and refused): no client sees it
            await serve_one(session, cluster)
    assert circuit_open_while_reporting(cluster) or replica(cluster, BAD)["state"] == "probing"


async def test_after_the_cool_down_a_failed_probe_opens_the_circuit_again(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_with_a_refusing_replica(start_cluster)
    assert cluster.router is not None
    async with client() as session:
        await open_the_circuit(session, cluster)
        opened = counter(cluster, "circuit_opened")
        # No traffic: once the cool-down is over the breaker is half-open and stays so.
        wait_for(lambda: replica(cluster, BAD)["state"] == "probing", 10, f"{BAD} probing")
        assert any("circuit half-open" in line for line in cluster.router.lines)
        sent = await serve_until(
            session, cluster, lambda: counter(cluster, "circuit_opened") > opened, "the probe"
        )
        print(f"the probe was sent within {sent} requests")
        wait_for(lambda: circuit_open_while_reporting(cluster), 10, f"{BAD} circuit_open again")
    counters = cluster.status()["router"]["counters"]
    assert counters["circuit_opened"] == opened + 1, counters
