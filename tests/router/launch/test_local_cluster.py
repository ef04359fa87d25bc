"""`router.launch.LocalCluster` before it starts anything, where it places a replica
(`ReplicaPlacement`), and its poll `wait_for`.

The clusters it starts are exercised by `tests/integration/`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from common.config import load_config
from router.launch import LocalCluster, ReplicaPlacement, wait_for


def test_the_config_puts_the_router_on_an_ephemeral_loopback_port(tmp_path: Path) -> None:
    cluster = LocalCluster(
        tmp_path,
        num_replicas=3,
        init_kwargs={"load_s": 0.5},
        deployment={"max_ongoing_requests": 4},
        router={"host": "0.0.0.0", "port": 8000, "queue_timeout_s": 5.0},
    )
    config = load_config(cluster.config_path)
    assert (config.router.host, config.router.port) == ("127.0.0.1", 0)
    assert config.router.queue_timeout_s == 5.0
    assert config.deployment.import_path == "examples.synthetic:SyntheticModels"
    assert config.deployment.num_replicas == 3
    assert config.deployment.init_kwargs == {"load_s": 0.5}
    assert config.deployment.max_ongoing_requests == 4


def test_close_removes_only_a_working_directory_it_made(tmp_path: Path) -> None:
    given = LocalCluster(tmp_path)
    given.close()
    assert given.config_path.exists()
    made = LocalCluster()
    assert made.config_path.exists()
    made.close()
    assert not made.workdir.exists()


def test_wait_for_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_for(lambda: next(counter) >= 3 and "done", 5.0, "three polls") == "done"


def test_wait_for_names_what_it_waited_for() -> None:
    with pytest.raises(TimeoutError, match="waiting for the impossible"):
        wait_for(lambda: False, 0.05, "the impossible")


def test_a_default_placement_reports_to_the_router_url_on_any_port() -> None:
    argv = ReplicaPlacement().argv(["python", "-m", "replica"], "http://127.0.0.1:4321")
    assert argv == ["python", "-m", "replica", "--router", "http://127.0.0.1:4321", "--port", "0"]


def test_a_placement_prefixes_the_command_and_names_its_addresses() -> None:
    placement = ReplicaPlacement(
        command_prefix=("ip", "netns", "exec", "host-1"),
        host="10.213.0.2",
        port=8100,
        advertise_url="http://10.213.0.2:8100",
        router_host="10.213.0.1",
    )
    argv = placement.argv(["python", "-m", "replica"], "http://127.0.0.1:4321")
    assert argv == [
        *("ip", "netns", "exec", "host-1", "python", "-m", "replica"),
        *("--router", "http://10.213.0.1:4321", "--port", "8100"),
        *("--host", "10.213.0.2", "--advertise-url", "http://10.213.0.2:8100"),
    ]


def test_an_ipv6_router_host_is_bracketed() -> None:
    argv = ReplicaPlacement(router_host="fd00::1").argv([], "http://127.0.0.1:4321")
    assert argv[:2] == ["--router", "http://[fd00::1]:4321"]


def test_the_router_binds_the_host_it_is_given(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, router_host="0.0.0.0")
    assert load_config(cluster.config_path).router.host == "0.0.0.0"
