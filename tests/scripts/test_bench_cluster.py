"""`scripts/_bench_cluster.py`: the config `bench_cluster` writes for the cluster it starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("loads", [None, 1])
def test_the_load_limit_goes_to_the_config_and_to_the_synthetic_hardware(
    monkeypatch: pytest.MonkeyPatch, loads: int | None
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from _bench_cluster import bench_cluster
    from _bench_scenarios import RunConfig

    run = RunConfig(
        replicas=2, capacity=3, max_ongoing=8, load_s=0.1, infer_s=0.0, max_concurrent_loads=loads
    )
    cluster = bench_cluster(run)
    try:
        deployment = load_config(cluster.config_path).deployment
    finally:
        cluster.close()
    assert deployment.max_concurrent_loads == loads
    assert deployment.init_kwargs.get("load_parallelism") == loads
