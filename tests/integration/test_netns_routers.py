"""Two routers and replicas as separate hosts: the routers (`LocalCluster(routers=2)`, as
`router.count: 2` runs them) in the root namespace, each replica in a network namespace of its
own over a veth link (`_netns.Hosts`), reporting to both routers' direct addresses. Steady GETs
go to the two routers in turn while one host is drained, or has its link cut and restored.
The routers stay in the root namespace, as in test_netns.py: the test reads their status and
sends them traffic from there, and every host's link already ends there, so a router namespace
would only add a hop (and forwarding between namespaces) without exercising anything new.

The client retries a request that fails once, on the other router (what a client of two
routers does); a request fails only if both attempts do, and the test asserts none does. The
retries are counted and recorded, not asserted: the target is that the routers need none.

What is asserted, on both routers:
- a drained host leaves routing (the router asked tells the other through the replica's own
  draining report); an answer it was streaming when the drain began still ends, whole;
- a host whose link is cut leaves routing once its reports stop for heartbeat_timeout_s (or
  sooner, on a refused connection), within a generous margin beyond that;
- the restored host rejoins as the same process (incarnation) with the models it held and
  serves them again, and no replica loads a model after the restore: every load since the cut
  is one the cut forced (a model of the cut host's loaded elsewhere while it was away).
The times observed are printed and recorded as junit properties; none is a speed claim.

- a GET waiting on a host whose link is cut is ended and retried elsewhere when the host leaves
  routing, whether its reports stopped or a new connection to it failed (a failed connect
  marks it down and ends the requests waiting on it, as a closed channel does).
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.auth import authorization_value
from common.status import ReplicaStatusDocument
from router.launch import LocalCluster, ReplicaPlacement, wait_for
from router.launch._local_cluster import LOAD_COUNTER

from _netns import (
    DEPLOYMENT,
    HEARTBEAT_TIMEOUT_S,
    LIVENESS_S,
    MARGIN_S,
    MODEL,
    MODELS,
    REQUEST_TIMEOUT_S,
    WORKERS,
    Host,
    unavailable,
)

_NO_NETNS = unavailable()
pytestmark = pytest.mark.skipif(_NO_NETNS is not None, reason=f"{_NO_NETNS}")

ROUTERS = 2
ROUTABLE = {"healthy", "probing"}
"""The `/-/status` states a router still sends requests in (`ReplicaView.routable`)."""


@dataclass(frozen=True)
class Outcome:
    """One client request: when it was issued and ended (monotonic s), the router it went to
    first, whether it was retried on the other, and how it ended (status 0: no HTTP answer)."""

    model: str
    issued_at: float
    ended_at: float
    router: int
    retried: bool
    status: int
    replica: str
    detail: str


class TwoRouterTraffic:
    """`WORKERS` threads sending GETs one after another, to the routers' direct URLs in turn,
    cycling through `MODELS`; a request that fails is sent once more, to the other router.
    Every outcome (the retry's, when there was one) is recorded."""

    def __init__(self, router_urls: list[str], *, timeout_s: float) -> None:
        self._addresses = [_address(url) for url in router_urls]
        self._timeout_s = timeout_s
        self._turn = itertools.count()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._threads = [
            threading.Thread(target=self._run, args=(number,), daemon=True)
            for number in range(WORKERS)
        ]

    def __enter__(self) -> TwoRouterTraffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=2 * self._timeout_s + 10)

    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def count(self, condition: Callable[[Outcome], bool]) -> int:
        return sum(1 for o in self.outcomes() if condition(o))

    def _run(self, number: int) -> None:
        for sent in itertools.count(number):
            if self._stopping.is_set():
                return
            model = MODELS[sent % len(MODELS)]
            router = next(self._turn) % len(self._addresses)
            issued_at = time.monotonic()
            status, replica, detail = send_get(self._addresses[router], model, self._timeout_s)
            retried = status != 200
            if retried:
                other = (router + 1) % len(self._addresses)
                status, replica, again = send_get(self._addresses[other], model, self._timeout_s)
                detail = f"router {router}: {detail}; router {other}: {again}"
            outcome = Outcome(
                model, issued_at, time.monotonic(), router, retried, status, replica, detail
            )
            with self._lock:
                self._outcomes.append(outcome)


def send_get(address: tuple[str, int], model: str, timeout_s: float) -> tuple[int, str, str]:
    """GET /predict for `model`: (status, the replica that answered, what went wrong: "" on a
    200); status 0 when no HTTP answer came."""
    connection = http.client.HTTPConnection(*address, timeout=timeout_s)
    try:
        connection.request("GET", "/predict", headers={MODEL: model})
        response = connection.getresponse()
        body = response.read()
        status, replica = response.status, response.getheader("x-modelplex-replica", "")
        return status, replica, "" if status == 200 else body.decode(errors="replace")[:200]
    except OSError as error:
        return 0, "", repr(error)
    finally:
        connection.close()


class StreamedRequest:
    """A GET whose answer streams `CHUNKS` chunks over about `STREAM_S`, in a thread:
    `started` is set once the first chunk arrived (the request is on `replica`, answering),
    `result` holds (status, replica, chunks received) once it ended."""

    CHUNKS = 30
    STREAM_S = 1.5

    def __init__(self, router_url: str, model: str) -> None:
        self.started = threading.Event()
        self.replica = ""
        self.result: tuple[int, str, int] | None = None
        self._address = _address(router_url)
        self._model = model
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        path = f"/predict?stream={self.CHUNKS}&interval={self.STREAM_S / self.CHUNKS}"
        connection = http.client.HTTPConnection(*self._address, timeout=REQUEST_TIMEOUT_S)
        try:
            connection.request("GET", path, headers={MODEL: self._model})
            response = connection.getresponse()
            self.replica = response.getheader("x-modelplex-replica", "")
            chunks = [response.readline()]
            self.started.set()
            chunks += response.read().splitlines()
            self.result = (response.status, self.replica, sum(1 for c in chunks if c.strip()))
        except OSError:
            self.result = (0, "", 0)
        finally:
            connection.close()


def _address(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 80


def entry(cluster: LocalCluster, router: int, replica_id: str) -> ReplicaStatusDocument | None:
    """`replica_id` in router `router`'s `/-/status`; None once it has forgotten it."""
    for replica in cluster.status(router)["replicas"]:
        if replica["replica_id"] == replica_id:
            return replica
    return None


def routable(cluster: LocalCluster, router: int, replica_id: str) -> bool:
    found = entry(cluster, router, replica_id)
    return found is not None and found["state"] in ROUTABLE


def load_count(cluster: LocalCluster, replica_url: str) -> int:
    """The replica's `serve_multiplexed_models_load_counter`, summed (as `load_counts` reads
    it), for one replica while another cannot be reached."""
    request = urllib.request.Request(
        replica_url + "/-/metrics", headers={"Authorization": authorization_value(cluster.secret)}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return int(sum(float(v) for v in LOAD_COUNTER.findall(text)))


def each_router_until(
    cluster: LocalCluster, holds: Callable[[int], bool], since: float, what: str, timeout_s: float
) -> list[float]:
    """Poll every router until `holds(router)` is true for each; the seconds from `since` at
    which each router was first seen to hold it."""
    seen: dict[int, float] = {}

    def every_router() -> bool:
        for router in range(cluster.num_routers):
            if router not in seen and holds(router):
                seen[router] = time.monotonic() - since
        return len(seen) == cluster.num_routers

    wait_for(every_router, timeout_s, what)
    return [seen[router] for router in range(cluster.num_routers)]


def report_failures(outcomes: list[Outcome], origin: float) -> list[Outcome]:
    """The requests that failed on both routers, printed with their times from `origin`."""
    failed = [o for o in outcomes if o.status != 200]
    for o in failed:
        print(
            f"failed: {o.model} issued {o.issued_at - origin:+.2f} s, ended "
            f"{o.ended_at - o.issued_at:.2f} s later: {o.status} {o.detail}"
        )
    return failed


@pytest.fixture
def cluster(hosts: list[Host], tmp_path: Path) -> Iterator[LocalCluster]:
    """Two routers in the root namespace, bound to every address of it (so each host reaches
    both direct ports at its own gateway); three replicas, one per host."""
    placements = {
        f"replica-{number}": ReplicaPlacement(
            command_prefix=host.exec_prefix, host=host.address, router_host=host.gateway
        )
        for number, host in enumerate(hosts, start=1)
    }
    with LocalCluster(
        tmp_path,
        num_replicas=len(hosts),
        routers=ROUTERS,
        init_kwargs={"load_s": 0.05, "infer_s": 0.02},
        deployment=DEPLOYMENT,
        router={"request_timeout_s": REQUEST_TIMEOUT_S},
        router_host="0.0.0.0",
        placements=placements,
    ) as started:
        for router in range(ROUTERS):
            for number, host in enumerate(hosts, start=1):
                found = entry(started, router, f"replica-{number}")
                assert found is not None, (router, number)
                assert urllib.parse.urlsplit(found["url"]).hostname == host.address
        yield started


@pytest.fixture
def observed(record_property: Callable[[str, object], None]) -> Callable[[str, float], None]:
    def observe(name: str, value: float) -> None:
        print(f"{name}: {round(value, 3)}")
        record_property(name, round(value, 3))

    return observe


def warmed_up(cluster: LocalCluster, traffic: TwoRouterTraffic) -> None:
    """Wait until each model has been served through each router (so every model is loaded
    somewhere, and each router has seen it) and no router shows a load still going on."""
    wanted = {(router, model) for router in range(ROUTERS) for model in MODELS}
    wait_for(
        lambda: {(o.router, o.model) for o in traffic.outcomes() if o.status == 200} >= wanted,
        LIVENESS_S,
        "every model to be served through each router",
    )
    wait_for(
        lambda: not any(r["loading"] for doc in cluster.statuses() for r in doc["replicas"]),
        LIVENESS_S,
        "the first loads to end",
    )


def test_a_drained_host_leaves_both_routers_and_finishes_its_requests(
    cluster: LocalCluster, observed: Callable[[str, float], None]
) -> None:
    with TwoRouterTraffic(cluster.router_urls, timeout_s=REQUEST_TIMEOUT_S + 5) as traffic:
        warmed_up(cluster, traffic)
        streamed = StreamedRequest(cluster.router_urls[0], MODELS[0])
        wait_for(streamed.started.is_set, LIVENESS_S, "a streamed answer to start")
        victim_id = streamed.replica

        drain_at = time.monotonic()
        request = urllib.request.Request(
            cluster.router_urls[1] + "/-/admin/drain",
            data=json.dumps({"replica": victim_id}).encode(),
            headers={
                "Authorization": authorization_value(cluster.secret),
                "Content-Type": "application/json",
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        times = each_router_until(
            cluster,
            lambda router: not routable(cluster, router, victim_id),
            drain_at,
            f"{victim_id} out of routing on every router after its drain",
            LIVENESS_S,
        )
        out_at = drain_at + max(times)
        for router, seconds in enumerate(times):
            observed(f"router{router}_out_of_routing_after_drain_s", seconds)
        streamed.join(REQUEST_TIMEOUT_S + 5)
        observed("streamed_answer_done_after_drain_s", time.monotonic() - drain_at)
        wait_for(
            lambda: traffic.count(lambda o: o.issued_at > out_at) >= 50,
            LIVENESS_S,
            "traffic to go on without the drained host",
        )

    outcomes = traffic.outcomes()
    retried = sum(1 for o in outcomes if o.retried)
    after = [o for o in outcomes if o.issued_at > out_at]
    print(f"{len(outcomes)} requests, {retried} retried on the other router")
    observed("requests_retried", retried)
    assert not report_failures(outcomes, drain_at)
    assert streamed.result == (200, victim_id, StreamedRequest.CHUNKS), streamed.result
    assert {o.router for o in after} == set(range(ROUTERS))
    assert victim_id not in {o.replica for o in after}
    assert cluster.replicas[victim_id].alive()  # a drain asked for does not stop the process


def test_a_cut_host_leaves_both_routers_and_rejoins_them_warm(
    hosts: list[Host], cluster: LocalCluster, observed: Callable[[str, float], None]
) -> None:
    with TwoRouterTraffic(cluster.router_urls, timeout_s=REQUEST_TIMEOUT_S + 5) as traffic:
        warmed_up(cluster, traffic)
        victim = max(cluster.status(0)["replicas"], key=lambda r: len(r["models"]))
        victim_id, incarnation = victim["replica_id"], victim["incarnation"]
        held = {m["model_id"] for m in victim["models"]}
        host = hosts[int(victim_id.removeprefix("replica-")) - 1]
        others = {rid: url for rid, url in cluster.replica_urls().items() if rid != victim_id}
        before_cut = cluster.load_counts()

        cut_at = time.monotonic()
        host.cut()
        times = each_router_until(
            cluster,
            lambda router: not routable(cluster, router, victim_id),
            cut_at,
            f"{victim_id} out of routing on every router after its link was cut",
            HEARTBEAT_TIMEOUT_S + MARGIN_S,
        )
        out_at = cut_at + max(times)
        for router, seconds in enumerate(times):
            observed(f"router{router}_out_of_routing_after_cut_s", seconds)
        wait_for(
            lambda: (
                {o.model for o in traffic.outcomes() if o.issued_at > out_at} == set(MODELS)
                and traffic.count(lambda o: o.issued_at > out_at) >= 50
            ),
            LIVENESS_S,
            "traffic for every model to go on without the cut host",
        )
        at_restore = {rid: load_count(cluster, url) for rid, url in others.items()}
        at_restore[victim_id] = before_cut[victim_id]  # unreachable; checked unchanged below

        restored_at = time.monotonic()
        host.restore()
        times = each_router_until(
            cluster,
            lambda router: routable(cluster, router, victim_id),
            restored_at,
            f"{victim_id} back in routing on every router after its link was restored",
            LIVENESS_S,
        )
        back_at = restored_at + max(times)
        for router, seconds in enumerate(times):
            observed(f"router{router}_rejoined_after_restore_s", seconds)
        rejoined = [entry(cluster, router, victim_id) for router in range(ROUTERS)]
        wait_for(
            lambda: (
                {
                    o.router
                    for o in traffic.outcomes()
                    if o.issued_at > back_at and o.replica == victim_id and o.model in held
                }
                == set(range(ROUTERS))
                and traffic.count(lambda o: o.issued_at > back_at) >= 50
            ),
            LIVENESS_S,
            f"{victim_id} to serve its models again through each router",
        )

    outcomes = traffic.outcomes()
    retried = sum(1 for o in outcomes if o.retried)
    across = [o for o in outcomes if o.issued_at < out_at and o.ended_at > cut_at]
    slowest = max(across, key=lambda o: o.ended_at - o.issued_at)
    print(
        f"slowest across the cut: {slowest.model} through router {slowest.router}, issued "
        f"{slowest.issued_at - cut_at:+.2f} s from the cut, served by {slowest.replica}"
    )
    served = sum(1 for o in outcomes if o.issued_at > back_at and o.replica == victim_id)
    print(f"{len(outcomes)} requests, {retried} retried; {victim_id} served {served} again")
    observed("slowest_request_across_the_cut_s", slowest.ended_at - slowest.issued_at)
    observed("requests_retried", retried)
    forced = {rid: at_restore[rid] - before_cut[rid] for rid in at_restore}
    print(f"loads the cut forced: {forced}")
    assert not report_failures(outcomes, cut_at)

    assert cluster.replicas[victim_id].alive()
    for document in rejoined:
        assert document is not None
        assert document["incarnation"] == incarnation
        assert held <= {m["model_id"] for m in document["models"]}, (held, document["models"])
    assert cluster.load_counts() == at_restore, "a model was loaded after the restore"
    assert sum(forced.values()) <= len(held) * len(others), forced


class SleepingRequest:
    """One GET for `model` that spends `sleep_s` on its replica, in a thread: `result` holds
    (status, replica, detail) once it ended."""

    def __init__(self, router_url: str, model: str, sleep_s: float) -> None:
        self.result: tuple[int, str, str] | None = None
        self._thread = threading.Thread(target=self._run, args=(router_url, model, sleep_s))
        self._thread.daemon = True
        self._thread.start()

    def _run(self, router_url: str, model: str, sleep_s: float) -> None:
        address = _address(router_url)
        connection = http.client.HTTPConnection(*address, timeout=REQUEST_TIMEOUT_S + 5)
        try:
            connection.request("GET", f"/predict?sleep={sleep_s}", headers={MODEL: model})
            response = connection.getresponse()
            body = response.read().decode(errors="replace")[:200]
            self.result = (response.status, response.getheader("x-modelplex-replica", ""), body)
        except OSError as error:
            self.result = (0, "", repr(error))
        finally:
            connection.close()


@pytest.mark.parametrize(
    "connect_fails",
    [
        pytest.param(False, id="out-by-heartbeat"),
        pytest.param(True, id="out-by-a-failed-connect"),
    ],
)
def test_a_request_waiting_on_a_cut_host_ends_when_the_host_leaves_routing(
    hosts: list[Host], cluster: LocalCluster, connect_fails: bool
) -> None:
    """A GET in flight on a host when its link is cut is ended, and retried on another replica,
    once the host leaves routing: by its reports stopping, or by a connect to it failing (a
    second request for the same model finds the pooled connection busy and opens another)."""
    sleep_s = 2.0
    status, victim_id, _ = send_get(_address(cluster.router_urls[0]), MODELS[0], 10)
    assert status == 200
    host = hosts[int(victim_id.removeprefix("replica-")) - 1]
    waiting = SleepingRequest(cluster.router_urls[0], MODELS[0], sleep_s)
    wait_for(
        lambda: (entry(cluster, 0, victim_id) or {"in_flight": 0})["in_flight"] == 1,
        LIVENESS_S,
        f"a request in flight on {victim_id}",
    )
    cut_at = time.monotonic()
    host.cut()
    if connect_fails:
        status, replica, _ = send_get(_address(cluster.router_urls[0]), MODELS[0], 10)
        assert (status, replica != victim_id) == (200, True)
        state = (entry(cluster, 0, victim_id) or {"state": "gone"})["state"]
        assert state == "down", state
    deadline_s = HEARTBEAT_TIMEOUT_S + sleep_s + 3.0
    try:
        wait_for(lambda: waiting.result is not None, deadline_s, "the waiting request to end")
    except TimeoutError as error:
        raise AssertionError(
            f"still waiting {time.monotonic() - cut_at:.1f} s after the cut; {victim_id} is "
            f"{(entry(cluster, 0, victim_id) or {'state': 'gone'})['state']} on router 0"
        ) from error
    finally:
        host.restore()
    assert waiting.result is not None
    status, replica, _ = waiting.result
    assert (status, replica != victim_id) == (200, True), waiting.result
