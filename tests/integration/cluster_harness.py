"""Real router and replica processes on ephemeral loopback ports, for integration tests.

Nothing is mocked: each process is `python -m router` / `python -m replica` as a user runs
it, with a generated config and cluster secret. Waiting is by polling with deadlines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on (http://\S+)")


def wait_for(condition: Callable[[], Any], timeout_s: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(0.02)


class Process:
    """A child process whose output is collected line by line in the background."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def url(self, timeout_s: float = 30.0) -> str:
        def find() -> str | None:
            for line in self.lines:
                match = LISTENING.search(line)
                if match:
                    return match.group(1)
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n" + "\n".join(self.lines[-30:]))
            return None

        url: str = wait_for(find, timeout_s, f"{self.name} to listen")
        return url

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def wait(self, timeout_s: float = 30.0) -> int:
        return self.popen.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def output(self) -> str:
        return "\n".join(self.lines)


class Cluster:
    """A router and N replicas of a deployment, started as separate processes."""

    def __init__(
        self,
        workdir: Path,
        *,
        import_path: str = "examples.synthetic:SyntheticModels",
        init_kwargs: dict[str, Any] | None = None,
        num_replicas: int = 2,
        max_num_models_per_replica: int | None = 2,
        max_ongoing_requests: int = 8,
        router: dict[str, Any] | None = None,
        deployment: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.secret = "test-secret-" + os.urandom(8).hex()
        config: dict[str, Any] = {
            "router": {"host": "127.0.0.1", "port": 0, **(router or {})},
            "deployment": {
                "import_path": import_path,
                "init_kwargs": init_kwargs or {},
                "num_replicas": num_replicas,
                "max_ongoing_requests": max_ongoing_requests,
                "heartbeat_interval_s": 0.2,
                "heartbeat_timeout_s": 2.0,
                "graceful_shutdown_timeout_s": 10.0,
                **(deployment or {}),
            },
        }
        if max_num_models_per_replica is not None:
            config["deployment"]["max_num_models_per_replica"] = max_num_models_per_replica
        self.config_path = workdir / "cluster.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.num_replicas = num_replicas
        self.router: Process | None = None
        self.replicas: dict[str, Process] = {}
        self.url = ""

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MODELPLEX_SECRET"] = self.secret
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return env

    def start(self) -> Cluster:
        self.router = Process(
            "router",
            [sys.executable, "-m", "router", "--config", str(self.config_path)],
            self.env(),
            self.workdir,
        )
        self.url = self.router.url()
        for i in range(1, self.num_replicas + 1):
            self.start_replica(f"replica-{i}")
        self.wait_healthy(self.num_replicas)
        return self

    def start_replica(self, replica_id: str) -> Process:
        argv = [sys.executable, "-m", "replica", "--config", str(self.config_path)]
        argv += ["--replica-id", replica_id, "--router", self.url, "--port", "0"]
        process = Process(replica_id, argv, self.env(), self.workdir)
        self.replicas[replica_id] = process
        return process

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/-/status", timeout=10) as response:
            document: dict[str, Any] = json.load(response)
        return document

    def healthy(self) -> list[dict[str, Any]]:
        return [r for r in self.status()["replicas"] if r["state"] == "healthy"]

    def wait_healthy(self, count: int, timeout_s: float = 60.0) -> None:
        wait_for(lambda: len(self.healthy()) == count, timeout_s, f"{count} healthy replicas")

    def replica_models(self, replica_id: str) -> list[str]:
        for replica in self.status()["replicas"]:
            if replica["replica_id"] == replica_id:
                return [m["model_id"] for m in replica["models"]]
        return []

    def close(self) -> None:
        for process in self.replicas.values():
            process.signal(signal.SIGTERM)
        for process in self.replicas.values():
            process.stop()
        if self.router is not None:
            self.router.stop()

    def logs(self) -> str:
        parts = [f"--- {p.name}\n{p.output()}" for p in [self.router, *self.replicas.values()] if p]
        return "\n".join(parts)
