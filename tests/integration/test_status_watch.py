"""`modelplex status --watch` against a running cluster, and a closed pipe ending quietly."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

from router.launch import LocalCluster

MODEL = "serve_multiplexed_model_id"


def test_watch_redraws_with_rates_until_ctrl_c(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=2)
    environment = {**os.environ, "MODELPLEX_SECRET": cluster.secret}
    watch = subprocess.Popen(
        [sys.executable, "-m", "router.launch", "status", "--watch", "0.2", "--url", cluster.url],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            request = urllib.request.Request(cluster.url + "/", headers={MODEL: "m1"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
    finally:
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert "Traceback" not in err
    assert out.count("\x1b[H\x1b[2J") >= 3  # redrawn in place, again and again
    assert "replica-1" in out
    assert "req/s" in out
    assert "hit ratio" in out


def test_a_closed_pipe_ends_status_quietly(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=1)
    done = subprocess.run(
        f"{sys.executable} -m router.launch status --url {cluster.url} | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
