"""Replicas as separate hosts: each in its own network namespace, reached by the router (in the
root namespace) over a veth link. One host's link is cut while traffic flows, then restored.

What the router guarantees today, and so what is asserted:
- a host whose link is cut leaves routing once its reports stop for heartbeat_timeout_s (or
  sooner, if a new connection to it is refused); the test allows a generous margin beyond that
  and records the time it observed (printed, and as a junit property);
- every request succeeds. The ones the router had sent the cut host (in flight at the cut, or
  sent on a pooled keep-alive connection before it left routing) get no answer; when it leaves
  routing the router ends them and, as they are GETs, retries them on another replica, so they
  are only slower (the slowest is recorded). request_timeout_s is set far above the heartbeat
  timeout, so a 504 here means a request waited on the cut host, not a slow machine;
- the restored host rejoins as the same process (pid, incarnation) with the models it held.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.auth import authorization_value, data_path_token
from common.headers import CREDENTIAL_HEADER
from router.launch import LocalCluster, ReplicaPlacement, wait_for

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


@dataclass(frozen=True)
class Outcome:
    """One request through the router: when it was issued and ended (monotonic s), and how."""

    model: str
    issued_at: float
    ended_at: float
    status: int  # 0: no HTTP answer at all
    replica: str
    detail: str


class SteadyTraffic:
    """`WORKERS` threads, each sending GETs through the router one after another, cycling
    through `MODELS`; every outcome is recorded."""

    def __init__(self, router_url: str, *, timeout_s: float) -> None:
        parsed = urllib.parse.urlsplit(router_url)
        self._address = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self._timeout_s = timeout_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._threads = [
            threading.Thread(target=self._run, args=(number,), daemon=True)
            for number in range(WORKERS)
        ]

    def __enter__(self) -> SteadyTraffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=self._timeout_s + 10)

    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def _run(self, number: int) -> None:
        sent = number
        while not self._stopping.is_set():
            model = MODELS[sent % len(MODELS)]
            sent += 1
            outcome = self._request(model)
            with self._lock:
                self._outcomes.append(outcome)

    def _request(self, model: str) -> Outcome:
        issued_at = time.monotonic()
        connection = http.client.HTTPConnection(*self._address, timeout=self._timeout_s)
        try:
            connection.request("GET", "/predict", headers={MODEL: model})
            response = connection.getresponse()
            body = response.read()
            status, replica = response.status, response.getheader("x-modelplex-replica", "")
            detail = "" if status == 200 else body.decode(errors="replace")
        except OSError as error:
            status, replica, detail = 0, "", repr(error)
        finally:
            connection.close()
        return Outcome(model, issued_at, time.monotonic(), status, replica, detail)


def replica_entry(cluster: LocalCluster, replica_id: str) -> dict[str, Any]:
    for replica in cluster.status()["replicas"]:
        if replica["replica_id"] == replica_id:
            return dict(replica)
    raise AssertionError(f"{replica_id} is not in the router's /-/status")


def ask_replica(url: str, model: str, secret: str) -> tuple[dict[str, Any], bool]:
    """Send a request for `model` straight to a replica, as its router does (a replica beyond
    loopback serves its routers only): its JSON answer, and whether the answer says the model
    was loaded for it (`x-modelplex-cold`)."""
    credential = authorization_value(data_path_token(secret))
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=10)
    try:
        connection.request("GET", "/predict", headers={MODEL: model, CREDENTIAL_HEADER: credential})
        response = connection.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, body
        return body, response.getheader("x-modelplex-cold") is not None
    finally:
        connection.close()


@pytest.fixture
def cluster(hosts: list[Host], tmp_path: Path) -> Iterator[LocalCluster]:
    """Three replicas, one per host; the router binds every address of the root namespace,
    so each host reaches it at its own gateway."""
    placements = {
        f"replica-{number}": ReplicaPlacement(
            command_prefix=host.exec_prefix, host=host.address, router_host=host.gateway
        )
        for number, host in enumerate(hosts, start=1)
    }
    with LocalCluster(
        tmp_path,
        num_replicas=len(hosts),
        init_kwargs={"load_s": 0.05, "infer_s": 0.02},
        deployment=DEPLOYMENT,
        router={"request_timeout_s": REQUEST_TIMEOUT_S},
        router_host="0.0.0.0",
        placements=placements,
    ) as started:
        yield started


GAVE_UP = ("closed the state channel", "cannot reach router")
"""What the replica logs when its own state channel gives up on the router."""


@pytest.mark.parametrize(
    "long_cut",
    [
        pytest.param(False, id="until-out-of-routing"),
        pytest.param(True, id="until-the-replica-reconnects"),
    ],
)
def test_a_cut_host_leaves_routing_and_rejoins_with_its_models(
    hosts: list[Host],
    cluster: LocalCluster,
    long_cut: bool,
    record_property: Callable[[str, object], None],
) -> None:
    """`long_cut`: keep the link down until the replica's own channel gives up (its WebSocket
    heartbeat), so it rejoins over a new connection, not the old one resumed."""

    def observed(name: str, seconds: float) -> None:
        print(f"{victim_id}: {name} {seconds:.2f} s")
        record_property(name, round(seconds, 3))

    for number, host in enumerate(hosts, start=1):
        url = replica_entry(cluster, f"replica-{number}")["url"]
        assert urllib.parse.urlsplit(url).hostname == host.address

    with SteadyTraffic(cluster.url, timeout_s=REQUEST_TIMEOUT_S + 5) as traffic:
        wait_for(
            lambda: {o.model for o in traffic.outcomes() if o.status == 200} == set(MODELS),
            LIVENESS_S,
            "every model to be served once",
        )
        victim = max(cluster.status()["replicas"], key=lambda r: len(r["models"]))
        victim_id, incarnation = victim["replica_id"], victim["incarnation"]
        held = {m["model_id"] for m in victim["models"]}
        model = min(held)
        first_answer, _ = ask_replica(victim["url"], model, cluster.secret)
        process = cluster.replicas[victim_id]
        assert first_answer["pid"] == process.pid
        host = hosts[int(victim_id.removeprefix("replica-")) - 1]

        cut_at = time.monotonic()
        host.cut()
        wait_for(
            lambda: replica_entry(cluster, victim_id)["state"] != "healthy",
            HEARTBEAT_TIMEOUT_S + MARGIN_S,
            f"{victim_id} to leave routing after its link was cut",
        )
        out_at = time.monotonic()
        observed("out_of_routing_after_cut_s", out_at - cut_at)
        wait_for(
            lambda: sum(1 for o in traffic.outcomes() if o.issued_at > out_at) >= 50,
            LIVENESS_S,
            "traffic to go on without the cut host",
        )
        if long_cut:
            wait_for(
                lambda: any(words in line for line in process.lines for words in GAVE_UP),
                LIVENESS_S,
                f"{victim_id}'s state channel to give up",
            )
            observed("channel_gave_up_after_cut_s", time.monotonic() - cut_at)

        restored_at = time.monotonic()
        host.restore()
        wait_for(
            lambda: replica_entry(cluster, victim_id)["state"] == "healthy",
            LIVENESS_S,
            f"{victim_id} to rejoin after its link was restored",
        )
        back_at = time.monotonic()
        observed("rejoined_after_restore_s", back_at - restored_at)
        rejoined = replica_entry(cluster, victim_id)
        wait_for(
            lambda: sum(1 for o in traffic.outcomes() if o.issued_at > back_at) >= 50,
            LIVENESS_S,
            "traffic after the host rejoined",
        )

    outcomes = traffic.outcomes()
    failed = [o for o in outcomes if o.status != 200]
    for o in failed:
        print(
            f"failed: {o.model} issued {o.issued_at - cut_at:+.2f} s from the cut, ended "
            f"{o.ended_at - o.issued_at:.2f} s later: {o.status} {o.detail[:100]}"
        )
    across = [
        o.ended_at - o.issued_at for o in outcomes if o.issued_at < out_at and o.ended_at > cut_at
    ]
    observed("slowest_request_across_the_cut_s", max(across, default=0.0))
    served = sum(1 for o in outcomes if o.issued_at > back_at and o.replica == victim_id)
    print(f"{len(outcomes)} requests, {len(failed)} failed; {victim_id} served {served} again")
    assert not failed, failed

    assert process.alive()
    assert rejoined["incarnation"] == incarnation
    assert held <= {m["model_id"] for m in rejoined["models"]}, (held, rejoined["models"])
    answer, cold = ask_replica(rejoined["url"], model, cluster.secret)
    assert not cold, answer
    assert (answer["pid"], answer["loaded_at"]) == (process.pid, first_answer["loaded_at"])
