"""A cluster with TLS from its config: the router and the replicas listen with https, the router
reaches the replicas over TLS, the state channel is wss, and with `client_auth` nobody without a
certificate from the cluster's CA opens the state channel or reaches a replica."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from certs import Pki, make_pki

from common.auth import authorization_value
from common.wire import CHANNEL_PATH
from router.launch import LocalCluster

MODEL = "serve_multiplexed_model_id"
QUICK = {
    "max_num_models_per_replica": 2,
    "heartbeat_interval_s": 0.2,
    "heartbeat_timeout_s": 2.0,
    "graceful_shutdown_timeout_s": 5.0,
}


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "certs")


def tls_section(*, client_auth: bool) -> dict[str, Any]:
    """Paths relative to the cluster's directory, where `cluster()` copies the certificates."""
    node = {"cert_file": "certs/node.pem", "key_file": "certs/node.key"}
    return {
        "public": {**node, "ca_file": "certs/ca.pem"},
        "internal": {**node, "ca_file": "certs/ca.pem", "client_auth": client_auth},
    }


@pytest.fixture
def cluster_with(tmp_path: Path, pki: Pki) -> Iterator[Any]:
    clusters: list[LocalCluster] = []

    def start(*, client_auth: bool) -> LocalCluster:
        workdir = tmp_path / f"cluster-{len(clusters)}"
        shutil.copytree(pki.ca.parent, workdir / "certs")
        cluster = LocalCluster(
            workdir, num_replicas=2, deployment=QUICK, tls=tls_section(client_auth=client_auth)
        )
        clusters.append(cluster)
        return cluster.start()

    yield start
    for cluster in clusters:
        cluster.close()


def trusting(pki: Pki) -> ssl.SSLContext:
    """A client of the cluster with its CA and no certificate of its own."""
    return ssl.create_default_context(cafile=str(pki.ca))


async def served_models(url: str, context: ssl.SSLContext, models: list[str]) -> list[int]:
    async with aiohttp.ClientSession() as session:
        statuses = []
        for model in models:
            async with session.get(url + "/", headers={MODEL: model}, ssl=context) as answer:
                await answer.read()
                statuses.append(answer.status)
        return statuses


async def test_a_tls_cluster_serves_over_https_only(cluster_with: Any, pki: Pki) -> None:
    cluster: LocalCluster = cluster_with(client_auth=False)
    assert cluster.url.startswith("https://127.0.0.1:")
    replica_urls = cluster.replica_urls()
    assert len(replica_urls) == 2
    assert all(url.startswith("https://127.0.0.1:") for url in replica_urls.values())

    models = ["m1", "m2", "m3", "m1", "m2"]
    assert await served_models(cluster.url, trusting(pki), models) == [200] * len(models)
    assert sum(cluster.load_counts().values()) >= 3  # the replicas' metrics, read over https

    plain = "http://" + cluster.url.removeprefix("https://")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(plain + "/-/healthz") as answer:
                await answer.read()
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # not the cluster's CA
            async with session.get(cluster.url + "/-/healthz") as answer:
                await answer.read()
    assert len(cluster.healthy()) == 2


async def test_with_client_auth_only_certified_peers_reach_the_channel_and_replicas(
    cluster_with: Any, pki: Pki
) -> None:
    cluster: LocalCluster = cluster_with(client_auth=True)
    anonymous = trusting(pki)
    certified = trusting(pki)
    certified.load_cert_chain(pki.client_cert, pki.client_key)
    secret = {"Authorization": authorization_value(cluster.secret)}
    replica_url = next(iter(cluster.replica_urls().values()))

    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(cluster.url + CHANNEL_PATH, headers=secret, ssl=anonymous)
        assert refused.value.status == 403
        async with session.ws_connect(
            cluster.url + CHANNEL_PATH, headers=secret, ssl=certified
        ) as channel:
            assert not channel.closed  # the certificate, not the secret, made the difference

        with pytest.raises(aiohttp.ClientError):
            async with session.get(replica_url + "/-/healthz", ssl=anonymous) as answer:
                await answer.read()
        async with session.get(replica_url + "/-/healthz", ssl=certified) as answer:
            assert answer.status == 200

    # Clients of the router need no certificate, and the cluster still serves.
    models = ["m1", "m2", "m3", "m4"]
    assert await served_models(cluster.url, anonymous, models) == [200] * len(models)
    assert len(cluster.healthy()) == 2
