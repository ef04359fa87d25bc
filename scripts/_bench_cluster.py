"""The benchmark's processes: a real modelplex cluster, nginx, and the load generator.

`BenchCluster` starts `python -m router` and N `python -m replica` processes of
`examples.synthetic:SyntheticModels` on ephemeral loopback ports, with a config and a cluster
secret in a temporary directory, as a user would run them (the approach of
`tests/integration/cluster_harness.py`, copied rather than imported). With
`max_concurrent_loads` the config limits each replica's loads, and the synthetic hardware runs
no more at once either (`load_parallelism`; 1 is like a Ray Serve replica, whose loads run one
at a time). It reads the replicas' load counters from their `/-/metrics` and stops every
process it started. `Nginx` runs Debian's nginx as a plain keep-alive reverse proxy in front
of one replica. `run_loadgen` runs `_loadgen.py` in its own process and samples the CPU time
of the given processes meanwhile.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"listening on (http://\S+)")
LOAD_COUNTER = re.compile(
    r"^serve_multiplexed_models_load_counter(?:_total)?\{[^}]*\}\s+(\S+)$", re.M
)
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `condition` until it is truthy; RuntimeError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc; 0.0 when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def get_json(url: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.load(response)


def get_text(url: str, timeout_s: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text: str = response.read().decode()
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Process:
    """A child process whose output is collected line by line in the background."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def url(self, timeout_s: float = 60.0) -> str:
        def find() -> str | None:
            for line in self.lines:
                match = LISTENING.search(line)
                if match:
                    return match.group(1)
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n" + "\n".join(self.lines[-30:]))
            return None

        url: str = wait_for(find, timeout_s, f"{self.name} to listen")
        return url

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


class BenchCluster:
    """A router and N replicas of the synthetic deployment; a context manager."""

    def __init__(
        self,
        *,
        replicas: int,
        capacity: int,
        max_ongoing: int,
        load_s: float,
        infer_s: float,
        patience: float | None = None,
        max_concurrent_loads: int | None = None,
    ) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="modelplex-bench-"))
        self.secret = "bench-" + os.urandom(12).hex()
        router: dict[str, Any] = {"host": "127.0.0.1", "port": 0}
        if patience is not None:
            router["popular_model_patience"] = patience
        init_kwargs: dict[str, Any] = {"load_s": load_s, "infer_s": infer_s}
        deployment: dict[str, Any] = {
            "import_path": "examples.synthetic:SyntheticModels",
            "init_kwargs": init_kwargs,
            "num_replicas": replicas,
            "max_num_models_per_replica": capacity,
            "max_ongoing_requests": max_ongoing,
        }
        if max_concurrent_loads is not None:
            deployment["max_concurrent_loads"] = max_concurrent_loads
            init_kwargs["load_parallelism"] = max_concurrent_loads
        config = {"router": router, "deployment": deployment}
        self.config_path = self.tmp / "cluster.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.num_replicas = replicas
        self.router: Process | None = None
        self.replicas: dict[str, Process] = {}
        self.url = ""

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MODELPLEX_SECRET"] = self.secret
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return env

    def __enter__(self) -> BenchCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        argv = [sys.executable, "-m", "router", "--config", str(self.config_path)]
        self.router = Process("router", [*argv, "--log-level", "WARNING"], self._env(), self.tmp)
        self.url = self.router.url()
        for i in range(1, self.num_replicas + 1):
            replica_id = f"replica-{i}"
            argv = [sys.executable, "-m", "replica", "--config", str(self.config_path)]
            argv += ["--replica-id", replica_id, "--router", self.url, "--port", "0"]
            self.replicas[replica_id] = Process(replica_id, argv, self._env(), self.tmp)
        try:
            wait_for(
                lambda: len(self.healthy()) == self.num_replicas,
                60.0,
                f"{self.num_replicas} healthy replicas",
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.logs()}") from None

    def logs(self) -> str:
        """The last lines each process printed, for an error message."""
        processes = [self.router, *self.replicas.values()]
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.lines[-20:]) for p in processes if p is not None
        )

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = get_json(self.url + "/-/status")
        return document

    def healthy(self) -> list[dict[str, Any]]:
        return [r for r in self.status()["replicas"] if r["state"] == "healthy"]

    def replica_urls(self) -> dict[str, str]:
        return {r["replica_id"]: r["url"] for r in self.status()["replicas"]}

    def load_counts(self) -> dict[str, int]:
        """Per replica, the sum of its `serve_multiplexed_models_load_counter` series."""
        counts: dict[str, int] = {}
        for replica_id, url in self.replica_urls().items():
            text = get_text(url + "/-/metrics")
            counts[replica_id] = int(sum(float(v) for v in LOAD_COUNTER.findall(text)))
        return counts

    def pids(self) -> dict[str, int]:
        named = {"router": self.router.pid} if self.router else {}
        return named | {name: p.pid for name, p in self.replicas.items()}

    def close(self) -> None:
        for process in self.replicas.values():
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        for process in self.replicas.values():
            process.stop()
        if self.router is not None:
            self.router.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


_NGINX_CONF = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    underscores_in_headers on;
    keepalive_requests 1000000;
    upstream replica {{ server {upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location = /-/nginx-ok {{ return 200 "ok\\n"; }}
        location / {{
            proxy_pass http://replica;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def ensure_nginx() -> str:
    """The nginx binary, installing Debian's package first when it is missing."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if found:
        return found
    print("bench: nginx not found; running apt-get install -y nginx", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], check=True)
    return shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """nginx as a keep-alive reverse proxy to `upstream` ("host:port"); a context manager.

    `url` proxies everything to the upstream; `url + "/-/nginx-ok"` is answered by nginx
    itself (`return 200`), the ceiling of what the load generator can drive.
    """

    def __init__(self, upstream: str) -> None:
        self.binary = ensure_nginx()
        self.tmp = Path(tempfile.mkdtemp(prefix="modelplex-bench-nginx-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = self.tmp / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(tmp=self.tmp, upstream=upstream, port=self.port))
        argv = [self.binary, "-c", str(conf), "-p", str(self.tmp), "-g", "daemon off;"]
        self.process = Process("nginx", argv, dict(os.environ), self.tmp)

    def __enter__(self) -> Nginx:
        def up() -> bool:
            if self.process.popen.poll() is not None:
                log = (
                    (self.tmp / "error.log").read_text()
                    if (self.tmp / "error.log").exists()
                    else ""
                )
                raise RuntimeError("nginx exited:\n" + "\n".join(self.process.lines) + log)
            try:
                return get_text(self.url + "/-/nginx-ok", 1.0) == "ok\n"
            except OSError:
                return False

        try:
            wait_for(up, 15.0, "nginx to listen")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def pids(self) -> dict[str, int]:
        """The master and its worker (the worker does the proxying)."""
        pids = {"nginx": self.process.pid}
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            for i, child in enumerate(children.read_text().split()):
                pids[f"nginx-worker{i or ''}"] = int(child)
        except OSError:
            pass
        return pids

    def close(self) -> None:
        self.process.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_loadgen(spec: dict[str, Any], watch: dict[str, int] | None = None) -> dict[str, Any]:
    """Run `_loadgen.py` on `spec` in its own process; add `cpu_util` (CPU seconds per wall
    second, 1.0 = one core) of the `watch` processes and of the load generator."""
    watch = watch or {}
    before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_loadgen.py"))],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=False,
    )
    wall_s = time.monotonic() - started
    if completed.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(completed.stdout)
    util = {name: (cpu_seconds(pid) - before[name]) / wall_s for name, pid in watch.items()}
    util["loadgen"] = result["client_cpu_s"] / max(result["wall_s"], 1e-9)
    result["cpu_util"] = {name: round(value, 2) for name, value in util.items()}
    return result
