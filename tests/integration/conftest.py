"""Fixtures that start real clusters (`router.launch.LocalCluster`); every process is stopped
when the test ends."""

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from router.launch import LocalCluster, ReplicaPlacement
from router.launch._local_cluster import SYNTHETIC_IMPORT_PATH

from _netns import Host, Hosts

QUICK_DEPLOYMENT = {
    "max_num_models_per_replica": 2,
    "max_ongoing_requests": 8,
    "heartbeat_interval_s": 0.2,
    "heartbeat_timeout_s": 2.0,
    "graceful_shutdown_timeout_s": 10.0,
}
"""Small caches and fast heartbeats, so that a test sees a change within a fraction of a second."""


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """`start_cluster(num_replicas=2, init_kwargs=None, router=None, placements=None,
    **deployment_keys)`: a started cluster of the synthetic deployment; `placements` puts
    replicas, by id, elsewhere (`ReplicaPlacement`)."""
    clusters: list[LocalCluster] = []

    def start(
        *,
        num_replicas: int = 2,
        init_kwargs: dict[str, Any] | None = None,
        router: dict[str, Any] | None = None,
        placements: Mapping[str, ReplicaPlacement] | None = None,
        import_path: str = SYNTHETIC_IMPORT_PATH,
        **deployment: Any,
    ) -> LocalCluster:
        workdir = tmp_path / f"cluster-{len(clusters)}"
        workdir.mkdir()
        cluster = LocalCluster(
            workdir,
            num_replicas=num_replicas,
            import_path=import_path,
            init_kwargs=init_kwargs,
            deployment={**QUICK_DEPLOYMENT, **deployment},
            router=router,
            placements=placements,
        )
        clusters.append(cluster)
        return cluster.start()

    yield start
    for cluster in clusters:
        cluster.close()


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    """Three separate hosts (network namespaces) for the multi-host tests; root only."""
    with Hosts(3) as made:
        yield made.hosts
