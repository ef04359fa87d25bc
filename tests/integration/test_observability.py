"""What an operator sees of a running cluster: Prometheus metrics that parse and move, one
access-log line per request, and request ids end to end."""

import json
import urllib.request
from collections.abc import Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from common.auth import authorization_value
from router.launch import LocalCluster, wait_for

MODEL = "serve_multiplexed_model_id"


def metrics(url: str, secret: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a `/-/metrics` page, parsed by prometheus-client's own parser."""
    request = urllib.request.Request(
        url + "/-/metrics", headers={"Authorization": authorization_value(secret)}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_move_and_every_request_is_logged_with_its_id(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=2, router={"access_log": "json"})
    before = metrics(cluster.url, cluster.secret)
    replica_url = cluster.status()["replicas"][0]["url"]
    replica_before = metrics(replica_url, cluster.secret)
    async with aiohttp.ClientSession() as session:
        headers = {MODEL: "m1", "x-request-id": "client-chosen-1"}
        async with session.get(cluster.url + "/", headers=headers) as r:
            assert r.status == 200
            assert r.headers["x-request-id"] == "client-chosen-1"  # passed through, returned
        for _ in range(3):
            async with session.get(cluster.url + "/", headers={MODEL: "m1"}) as r:
                assert r.status == 200
                assert len(r.headers["x-request-id"]) == 16  # made up for the client
        bad = {MODEL: "m1", "x-request-id": "no spaces allowed"}
        async with session.get(cluster.url + "/", headers=bad) as r:
            assert r.headers["x-request-id"] != "no spaces allowed"
        async with session.get(cluster.url + "/", headers={MODEL: "x" * 300}) as r:
            assert r.status == 400
    after = metrics(cluster.url, cluster.secret)
    grew = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert grew("modelplex_router_requests_total", code="200") == 5
    assert grew("modelplex_router_requests_total", code="400") == 1
    assert grew("modelplex_router_routed_requests_total", outcome="cold_load") == 1
    assert grew("modelplex_router_routed_requests_total", outcome="warm") == 4
    assert grew("modelplex_router_rejected_requests_total", reason="invalid_model_id") == 1
    assert grew("modelplex_router_request_duration_seconds_count") == 6
    assert grew("modelplex_router_added_seconds_count") == 6
    assert (
        sum(v for (name, _), v in after.items() if name == "modelplex_router_replica_loads_total")
        == 1
    )
    assert value(after, "modelplex_router_routable_replicas") == 2
    # The replica that loaded m1 counts it under Ray's name.
    loads = [
        value(
            metrics(url, cluster.secret), "serve_multiplexed_models_load_counter_total", replica=rid
        )
        for rid, url in cluster.replica_urls().items()
    ]
    assert sum(loads) == 1
    assert replica_before  # the replica's page parsed too

    def logged() -> list[dict[str, object]]:
        assert cluster.router is not None
        lines = [line.split("modelplex.access: ", 1)[-1] for line in cluster.router.lines]
        return [json.loads(line) for line in lines if line.startswith("{")]

    wait_for(lambda: len(logged()) >= 6, 10, "six access-log lines")
    first = next(entry for entry in logged() if entry["request_id"] == "client-chosen-1")
    assert (first["model"], first["status"], first["outcome"]) == ("m1", 200, "cold_load")
    assert str(first["replica"]).startswith("replica-")
    refused = next(entry for entry in logged() if entry["status"] == 400)
    assert (refused["outcome"], refused["reason"]) == ("rejected", "invalid_model_id")
