"""The benchmark's processes: a modelplex cluster, nginx, and the load generator.

`bench_cluster` configures a `router.launch.LocalCluster` (`routers` routers and N replicas of
`examples.synthetic:SyntheticModels` on ephemeral loopback ports, as a user runs them, the same
helper the integration tests use) for one run. With `max_concurrent_loads` the config limits each
replica's loads, and the synthetic hardware runs no more at once either (`load_parallelism`; 1 is
like a Ray Serve replica, whose loads run one at a time). `Nginx` runs Debian's nginx as a plain
keep-alive reverse proxy in front of one replica. `run_loadgen` runs `_loadgen.py` in its own
process and samples the CPU time of the given processes meanwhile.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from _bench_scenarios import RunConfig

from router.launch import ChildProcess, LocalCluster, wait_for

ROOT = Path(__file__).resolve().parents[1]
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc; 0.0 when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def get_text(url: str, timeout_s: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text: str = response.read().decode()
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def bench_cluster(config: RunConfig) -> LocalCluster:
    """A cluster of the synthetic deployment for one run (not started: use it in a `with`).
    `max_concurrent_loads` limits each replica's loads in the config and, as
    `load_parallelism`, on the synthetic hardware too."""
    router: dict[str, Any] = {}
    if config.patience is not None:
        router["popular_model_patience"] = config.patience
    if config.placement_lease is not None:
        router["placement_lease_url"] = config.placement_lease
    init_kwargs: dict[str, Any] = {"load_s": config.load_s, "infer_s": config.infer_s}
    deployment: dict[str, Any] = {
        "max_num_models_per_replica": config.capacity,
        "max_ongoing_requests": config.max_ongoing,
    }
    if config.max_concurrent_loads is not None:
        deployment["max_concurrent_loads"] = config.max_concurrent_loads
        init_kwargs["load_parallelism"] = config.max_concurrent_loads
    return LocalCluster(
        num_replicas=config.replicas,
        init_kwargs=init_kwargs,
        deployment=deployment,
        router=router,
        router_log_level="WARNING",
        routers=config.routers,
    )


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
        self.process = ChildProcess("nginx", argv, env=os.environ, cwd=self.tmp)

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
