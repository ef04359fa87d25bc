"""A model whose load fails: tried on a few replicas, then refused at once with the loader's
message, shown in /-/status — while the other models are served as usual."""

import urllib.request
from collections.abc import Callable

import aiohttp

from router.launch import LocalCluster

MODEL = "serve_multiplexed_model_id"


def load_failures(cluster: LocalCluster) -> int:
    """The replicas' `modelplex_multiplexed_model_load_failures` counters, summed."""
    total = 0.0
    for url in cluster.replica_urls().values():
        with urllib.request.urlopen(url + "/-/metrics") as response:
            for line in response.read().decode().splitlines():
                if line.startswith("modelplex_multiplexed_model_load_failures"):
                    total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def test_a_failing_model_is_tried_on_a_few_replicas_then_refused_at_once(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(
        num_replicas=3, router={"max_load_failures": 2, "load_failure_cooldown_s": 60}
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(cluster.url + "/", headers={MODEL: "fail-load-x"}) as r:
            first = (r.status, await r.json(), r.headers.get("Retry-After"))
        assert first[0] == 503  # tried on two replicas (retried: a GET), then refused
        assert first[1]["error"]["code"] == "model_load_failed"
        assert "synthetic load failure for fail-load-x" in first[1]["error"]["message"]
        assert first[2] is not None
        assert load_failures(cluster) == 2
        for _ in range(20):  # no retry storm: refused at once, no load attempted
            async with session.get(cluster.url + "/", headers={MODEL: "fail-load-x"}) as r:
                assert r.status == 503
                assert (await r.json())["error"]["code"] == "model_load_failed"
        assert load_failures(cluster) == 2
        async with session.get(cluster.url + "/", headers={MODEL: "fine"}) as r:
            assert r.status == 200  # the rest of the cluster serves on
    records = cluster.status()["router"]["load_failures"]
    assert sorted(r["model_id"] for r in records) == ["fail-load-x", "fail-load-x"]
    assert len({r["replica_id"] for r in records}) == 2
    assert all("synthetic load failure" in r["message"] for r in records)


async def test_a_failed_load_that_cannot_be_retried_is_answered_with_the_loaders_error(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=2, router={"retry_on_replica_failure": False})
    async with (
        aiohttp.ClientSession() as session,
        session.post(cluster.url + "/", headers={MODEL: "fail-load-y"}, data=b"an order") as r,
    ):
        assert r.status == 500
        body = await r.json()
    assert body["error"]["code"] == "model_load_failed"
    assert "synthetic load failure for fail-load-y" in body["error"]["message"]
    assert load_failures(cluster) == 1  # not retried
