"""The control plane is locked: a replica listening beyond loopback serves its routers only,
its state needs the cluster secret, and a report without the secret changes nothing."""

from collections.abc import Callable

import aiohttp

from common.auth import authorization_value
from router.launch import LocalCluster

MODEL = "serve_multiplexed_model_id"


async def test_a_replica_beyond_loopback_answers_401_to_a_direct_request(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=1, host="0.0.0.0")
    replica_url = cluster.status()["replicas"][0]["url"]
    async with aiohttp.ClientSession() as session:
        async with session.get(cluster.url + "/", headers={MODEL: "m1"}) as r:
            assert r.status == 200  # through the router: served
        evict = {MODEL: "m2", "x-modelplex-evict": "m1"}
        async with session.get(replica_url + "/", headers=evict) as r:
            assert r.status == 401  # straight to the replica: refused, nothing loaded
            assert (await r.json())["error"]["code"] == "unauthorized"
        async with session.get(replica_url + "/-/state") as r:
            assert r.status == 401
        auth = {"Authorization": authorization_value(cluster.secret)}
        async with session.get(replica_url + "/-/state", headers=auth) as r:
            assert r.status == 200
            assert [m["model_id"] for m in (await r.json())["models"]] == ["m1"]
        async with session.get(replica_url + "/-/healthz") as r:
            assert r.status == 200  # probes need no secret
