"""A local cluster for tests and benchmarks: a router and N replicas as real processes.

`LocalCluster` writes a config (the router on 127.0.0.1 unless told otherwise, every port
ephemeral) into a working directory, starts `python -m router` and N `python -m replica` as a
user runs them, with a fresh cluster secret in their environment (the launcher's
`child_environment`), waits until the router shows every replica healthy, reads the router's
`/-/status` and the replicas' load counters, and stops every process it started. It is
synchronous (a thread per child collects its output), so a test or a script drives it without an
event loop; `wait_for` is its one poll with a deadline.

Unlike `modelplex up`, nothing is restarted: a test that kills a replica sees it stay down.

With `tls` (the config's `tls` section) the router and the replicas listen with TLS as that
section says, and the cluster reads status and metrics over https with the config's contexts.

A `ReplicaPlacement` puts one replica elsewhere: behind a command prefix (another network
namespace, say), bound to and advertising its own address, reaching the router at the address it
sees; with `router_host` the router binds an address those replicas can reach.

Invariants:
- `start()` returns with every replica healthy, or raises `ClusterFailed` carrying the last
  lines of each process after stopping them all.
- After `close()` no process it started is left, and a working directory it created is gone.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml

from common.addresses import reachable_url
from common.auth import authorization_value, generate_secret
from common.config import parse_config
from common.status import ReplicaStatusDocument, RouterStatusDocument
from common.tls import Side, client_context
from router.launch._launcher import child_environment

__all__ = ["ChildProcess", "ClusterFailed", "LocalCluster", "ReplicaPlacement", "wait_for"]

SYNTHETIC_IMPORT_PATH = "examples.synthetic:SyntheticModels"
POLL_INTERVAL_S = 0.02
STOP_TIMEOUT_S = 15.0
TAIL_LINES = 30
LISTENING = re.compile(r"listening on (https?://\S+)")
LOAD_COUNTER = re.compile(
    r"^serve_multiplexed_models_load_counter(?:_total)?\{[^}]*\}\s+(\S+)$", re.MULTILINE
)
_IMPORT_ROOT = Path(__file__).resolve().parents[2]  # children import modelplex from here too

_T = TypeVar("_T")


class ClusterFailed(RuntimeError):
    """A process of the cluster exited, or the cluster did not become ready in time."""


def wait_for(condition: Callable[[], _T], timeout_s: float, what: str) -> _T:
    """Poll `condition` until it returns something truthy, and return that; `TimeoutError`
    naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def _get(
    url: str,
    timeout_s: float = 10.0,
    *,
    secret: str | None = None,
    context: ssl.SSLContext | None = None,
) -> bytes:
    """GET `url`; with `secret`, as an operator with the cluster secret; `context` for https."""
    headers = {"Authorization": authorization_value(secret)} if secret else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
        body: bytes = response.read()
    return body


@dataclass(frozen=True, kw_only=True)
class ReplicaPlacement:
    """Where one replica runs and how it is reached; the defaults run it on this machine as
    the config says (bound to `deployment.host`, reporting to the router's URL)."""

    command_prefix: tuple[str, ...] = ()  # run under it, e.g. ("ip", "netns", "exec", "ns1")
    host: str | None = None  # --host: the address it binds; None: the config's deployment.host
    port: int = 0  # --port: 0 = any free port
    advertise_url: str | None = None  # --advertise-url; None: the replica derives it
    router_host: str | None = None  # where it reaches the router (same port); None: router URL

    def argv(self, replica_argv: Sequence[str], router_url: str) -> list[str]:
        """`replica_argv` (`python -m replica --config ... --replica-id ...`) with this
        placement's prefix and flags, reporting to `router_url` or its `router_host`."""
        router = router_url
        if self.router_host is not None:
            parsed = urllib.parse.urlsplit(router_url)
            host = f"[{self.router_host}]" if ":" in self.router_host else self.router_host
            router = parsed._replace(netloc=f"{host}:{parsed.port}").geturl()
        argv = [*self.command_prefix, *replica_argv, "--router", router, "--port", str(self.port)]
        if self.host is not None:
            argv += ["--host", self.host]
        if self.advertise_url is not None:
            argv += ["--advertise-url", self.advertise_url]
        return argv


class ChildProcess:
    """A child process in its own session whose output (stdout and stderr interleaved) a
    background thread collects in `lines`."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path):
        self.name = name
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            list(argv),
            env=dict(env),
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
        """The URL of the first `listening on http://...` line; `ClusterFailed` if the process
        exits first."""

        def find() -> str:
            for line in self.lines:
                match = LISTENING.search(line)
                if match:
                    return match.group(1)
            if not self.alive():
                raise ClusterFailed(f"{self.name} exited:\n{self.output(TAIL_LINES)}")
            return ""

        return wait_for(find, timeout_s, f"{self.name} to listen")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def wait(self, timeout_s: float = 30.0) -> int:
        """The exit code, once the process has exited."""
        return self.popen.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`; idempotent."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def output(self, last: int | None = None) -> str:
        """What the process printed, or its `last` lines."""
        return "\n".join(self.lines if last is None else self.lines[-last:])


class LocalCluster:
    """A router and `num_replicas` replicas of `import_path` on this machine; a context manager.

    `deployment` and `router` hold further keys of the config's sections (the config's defaults
    otherwise), `tls` its `tls` section (relative paths are from `workdir`); `workdir` holds the
    config and is the children's working directory (None: a temporary directory, removed by
    `close()`). `router_host` is the address the router binds
    (a wildcard is reached on loopback); `placements` puts replicas, by id, elsewhere.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        num_replicas: int = 2,
        import_path: str = SYNTHETIC_IMPORT_PATH,
        init_kwargs: Mapping[str, Any] | None = None,
        deployment: Mapping[str, Any] | None = None,
        router: Mapping[str, Any] | None = None,
        router_log_level: str | None = None,
        ready_timeout_s: float = 60.0,
        router_host: str = "127.0.0.1",
        placements: Mapping[str, ReplicaPlacement] | None = None,
        tls: Mapping[str, Any] | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="modelplex-")) if workdir is None else workdir
        self.num_replicas = num_replicas
        self.secret = generate_secret()
        self.config_path = self.workdir / "cluster.yaml"
        config = {
            "router": {**(router or {}), "host": router_host, "port": 0},
            "deployment": {
                **(deployment or {}),
                "import_path": import_path,
                "init_kwargs": dict(init_kwargs or {}),
                "num_replicas": num_replicas,
            },
        }
        if tls is not None:
            config["tls"] = dict(tls)
        tls_config = parse_config(config, base_dir=str(self.workdir)).tls  # ConfigError early
        # What this cluster's reads use, and a test may too: None for plain HTTP.
        self.router_tls = client_context(tls_config, Side.ROUTER)
        self.replica_tls = client_context(tls_config, Side.REPLICA)
        self.config_path.write_text(yaml.safe_dump(config))
        self.router: ChildProcess | None = None
        self.replicas: dict[str, ChildProcess] = {}
        self.url = ""
        self._router_log_level = router_log_level
        self._ready_timeout_s = ready_timeout_s
        self._placements = dict(placements or {})
        self._env = child_environment(self.secret, self.workdir, _IMPORT_ROOT)

    def start_router(self, port: int | None = None) -> ChildProcess:
        """Start the router (again, after it died: on `port`, the one it had), as `start`
        does; it becomes `self.router`, which `close` stops."""
        argv = [sys.executable, "-m", "router", "--config", str(self.config_path)]
        if port is not None:
            argv += ["--port", str(port)]
        if self._router_log_level is not None:
            argv += ["--log-level", self._router_log_level]
        self.router = ChildProcess("router", argv, env=self._env, cwd=self.workdir)
        return self.router

    def start(self) -> LocalCluster:
        """Start the router, then the replicas; return once all of them are healthy."""
        try:
            self.url = reachable_url(self.start_router().url(self._ready_timeout_s))
            for number in range(1, self.num_replicas + 1):
                self.start_replica(f"replica-{number}")
            self.wait_healthy(self.num_replicas, self._ready_timeout_s)
        except (ClusterFailed, TimeoutError) as err:
            self.close()
            raise ClusterFailed(f"{err}\n{self.logs(TAIL_LINES)}") from err
        except BaseException:
            self.close()
            raise
        return self

    def start_replica(
        self, replica_id: str, *, placement: ReplicaPlacement | None = None
    ) -> ChildProcess:
        """Start one more replica process (it joins the router; nothing waits for it), placed
        by `placement`, else by the cluster's placement for `replica_id`, else on loopback."""
        placement = placement or self._placements.get(replica_id) or ReplicaPlacement()
        replica_argv = [sys.executable, "-m", "replica", "--config", str(self.config_path)]
        argv = placement.argv([*replica_argv, "--replica-id", replica_id], self.url)
        process = ChildProcess(replica_id, argv, env=self._env, cwd=self.workdir)
        self.replicas[replica_id] = process
        return process

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- reading the cluster -------------------------------------------------------------------

    def status(self) -> RouterStatusDocument:
        """The router's `/-/status`."""
        document: RouterStatusDocument = json.loads(
            _get(self.url + "/-/status", secret=self.secret, context=self.router_tls)
        )
        return document

    def healthy(self) -> list[ReplicaStatusDocument]:
        return [r for r in self.status()["replicas"] if r["state"] == "healthy"]

    def wait_healthy(self, count: int, timeout_s: float = 60.0) -> None:
        """Wait until the router shows exactly `count` healthy replicas."""
        wait_for(lambda: len(self.healthy()) == count, timeout_s, f"{count} healthy replicas")

    def replica_urls(self) -> dict[str, str]:
        return {r["replica_id"]: r["url"] for r in self.status()["replicas"]}

    def replica_models(self, replica_id: str) -> list[str]:
        """The models the router shows on `replica_id`, least recently used first."""
        for replica in self.status()["replicas"]:
            if replica["replica_id"] == replica_id:
                return [m["model_id"] for m in replica["models"]]
        return []

    def load_counts(self) -> dict[str, int]:
        """Per replica, the sum of its `serve_multiplexed_models_load_counter` series, read from
        its `/-/metrics`."""
        counts: dict[str, int] = {}
        for replica_id, url in self.replica_urls().items():
            text = _get(url + "/-/metrics", secret=self.secret, context=self.replica_tls).decode()
            counts[replica_id] = int(sum(float(v) for v in LOAD_COUNTER.findall(text)))
        return counts

    def pids(self) -> dict[str, int]:
        """Process ids by name: "router", "replica-1", ..."""
        named = {"router": self.router.pid} if self.router is not None else {}
        return named | {name: p.pid for name, p in self.replicas.items()}

    def logs(self, last: int | None = None) -> str:
        """What each process printed (or its `last` lines), for an error message."""
        processes = [p for p in [self.router, *self.replicas.values()] if p is not None]
        return "\n".join(f"--- {p.name}\n{p.output(last)}" for p in processes)

    # -- stopping ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the replicas (all signalled at once, so they drain in parallel), then the
        router; remove the working directory if this cluster made it. Idempotent."""
        for process in self.replicas.values():
            process.signal(signal.SIGTERM)
        for process in self.replicas.values():
            process.stop()
        if self.router is not None:
            self.router.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
