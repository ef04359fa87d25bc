"""A replica started by hand joins a cluster that `modelplex up` runs, as one on another host
does: the launcher takes the cluster secret from `$MODELPLEX_SECRET` when it is set (instead of
making its own), the replica brings the same secret, advertises its own URL and reports to
the router by URL; it is routed to like the launcher's own replicas. A replica with another
secret is refused and never routed to."""

import json
import os
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from common.auth import SECRET_ENV, SECRET_FILE_ENV, authorization_value, generate_secret
from router.launch import ChildProcess, wait_for

ROOT = Path(__file__).resolve().parents[2]


def environment(secret: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop(SECRET_FILE_ENV, None)
    env.pop(SECRET_ENV, None)
    if secret is not None:
        env[SECRET_ENV] = secret
    return env


def status(url: str, secret: str) -> dict[str, Any]:
    request = urllib.request.Request(
        url + "/-/status", headers={"Authorization": authorization_value(secret)}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        document: dict[str, Any] = json.load(answer)
    return document


def states(url: str, secret: str) -> dict[str, str]:
    return {r["replica_id"]: r["state"] for r in status(url, secret)["replicas"]}


def test_a_replica_started_by_hand_joins_with_the_clusters_secret(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "router": {"host": "127.0.0.1", "port": 0},
                "deployment": {
                    "import_path": "examples.synthetic:SyntheticModels",
                    "num_replicas": 1,
                    "heartbeat_interval_s": 0.2,
                    "heartbeat_timeout_s": 2.0,
                    "graceful_shutdown_timeout_s": 10.0,
                },
            }
        )
    )
    secret = generate_secret()
    up_argv = [sys.executable, "-m", "router.launch", "up", str(config)]
    up = ChildProcess("up", up_argv, env=environment(secret), cwd=tmp_path)
    joined: list[ChildProcess] = []
    try:
        url = up.url(timeout_s=60)
        wait_for(lambda: states(url, secret) == {"replica-1": "healthy"}, 60, "replica-1")

        def replica(replica_id: str, its_secret: str) -> ChildProcess:
            argv = [sys.executable, "-m", "replica", "--config", str(config)]
            argv += ["--replica-id", replica_id, "--port", "0", "--router", url]
            child = ChildProcess(replica_id, argv, env=environment(its_secret), cwd=tmp_path)
            joined.append(child)
            return child

        replica("by-hand", secret)
        stranger = replica("stranger", generate_secret())
        wait_for(lambda: states(url, secret).get("by-hand") == "healthy", 60, "by-hand healthy")
        wait_for(
            lambda: any("refused our secret" in line for line in stranger.lines),
            60,
            "the stranger refused",
        )
        assert "stranger" not in states(url, secret)
    finally:
        for child in joined:
            child.stop()
        up.signal(signal.SIGTERM)
        up.wait(60)
        up.stop()
