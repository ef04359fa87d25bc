"""`router.launch.LocalCluster` before it starts anything, and its poll `wait_for`.

The clusters it starts are exercised by `tests/integration/`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from common.config import load_config
from router.launch import LocalCluster, wait_for


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
