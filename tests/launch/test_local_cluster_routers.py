"""`LocalCluster(routers=N)` before it starts anything: the config it writes, and where its
replicas report (every router's direct address). Its running routers are exercised by
`tests/integration/test_several_routers.py`."""

from pathlib import Path

from common.config import load_config
from router.launch import LocalCluster, ReplicaPlacement


def test_several_routers_are_written_as_router_count(tmp_path: Path) -> None:
    assert load_config(LocalCluster(tmp_path, routers=3).config_path).router.count == 3
    assert load_config(LocalCluster(tmp_path).config_path).router.count == 1


def test_a_replica_reports_to_every_router() -> None:
    urls = ["http://127.0.0.1:4001", "http://127.0.0.1:4002"]
    argv = ReplicaPlacement().argv(["python", "-m", "replica"], urls)
    assert argv == [
        *("python", "-m", "replica"),
        *("--router", urls[0], "--router", urls[1]),
        *("--port", "0"),
    ]


def test_a_placement_reaches_every_router_at_its_own_host_on_their_ports() -> None:
    urls = ["http://127.0.0.1:4001", "http://127.0.0.1:4002"]
    argv = ReplicaPlacement(router_host="10.0.0.1").argv(["replica"], urls)
    assert argv[1:5] == ["--router", "http://10.0.0.1:4001", "--router", "http://10.0.0.1:4002"]
