"""Fixtures that start real clusters; every process is stopped when the test ends."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_harness import Cluster


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    clusters: list[Cluster] = []

    def start(**options: Any) -> Cluster:
        workdir = tmp_path / f"cluster-{len(clusters)}"
        workdir.mkdir()
        cluster = Cluster(workdir, **options)
        clusters.append(cluster)
        try:
            return cluster.start()
        except BaseException:
            print(cluster.logs())
            raise

    yield start
    for cluster in clusters:
        cluster.close()
