"""A local cluster for tests and benchmarks: one or more routers and N replicas as real processes.

`LocalCluster` writes a config (the router on 127.0.0.1 unless told otherwise, every port
ephemeral) into a working directory, starts `python -m router` and N `python -m replica` as a
user runs them, with a fresh cluster secret in their environment (the launcher's
`child_environment`), waits until the router shows every replica healthy, reads the router's
`/-/status` and the replicas' load counters, and stops every process it started. It is
synchronous (a thread per child collects its output), so a test or a script drives it without an
event loop; `wait_for` is its one poll with a deadline.

Unlike `modelplex up`, nothing is restarted: a test that kills a replica sees it stay down.

With `routers` > 1 it starts that many routers as `modelplex up` does (`router.count`): the
first on an ephemeral port, the others on the same port (SO_REUSEPORT), each with a direct
address of its own; `url` is the shared port, `router_urls` the direct addresses, which every
replica reports to. `kill_router(i)` and `restart_router(i)` (on the same ports) stand for a
router's crash and the launcher's restart.

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
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from common.addresses import reachable_url
from common.auth import authorization_value, generate_secret
from common.config import parse_config
from common.status import ReplicaStatusDocument, RouterStatusDocument
from common.tls import Side, client_context
from router.launch._child_process import TAIL_LINES, ChildProcess, ClusterFailed, wait_for
from router.launch._launcher import child_environment
from router.launch._router_set import DIRECT_ADDRESS

__all__ = ["LocalCluster", "ReplicaPlacement"]

SYNTHETIC_IMPORT_PATH = "examples.synthetic:SyntheticModels"
LOAD_COUNTER = re.compile(
    r"^serve_multiplexed_models_load_counter(?:_total)?\{[^}]*\}\s+(\S+)$", re.MULTILINE
)
_IMPORT_ROOT = Path(__file__).resolve().parents[2]  # children import modelplex from here too


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
    router_host: str | None = None  # where it reaches the routers (same ports); None: their URLs

    def argv(self, replica_argv: Sequence[str], router_urls: str | Sequence[str]) -> list[str]:
        """`replica_argv` (`python -m replica --config ... --replica-id ...`) with this
        placement's prefix and flags, reporting to every one of `router_urls` (or the same
        ports on its `router_host`)."""
        urls = [router_urls] if isinstance(router_urls, str) else list(router_urls)
        reports: list[str] = []
        for url in urls:
            if self.router_host is not None:
                parsed = urllib.parse.urlsplit(url)
                host = f"[{self.router_host}]" if ":" in self.router_host else self.router_host
                url = parsed._replace(netloc=f"{host}:{parsed.port}").geturl()
            reports += ["--router", url]
        argv = [*self.command_prefix, *replica_argv, *reports, "--port", str(self.port)]
        if self.host is not None:
            argv += ["--host", self.host]
        if self.advertise_url is not None:
            argv += ["--advertise-url", self.advertise_url]
        return argv


class LocalCluster:
    """`routers` routers and `num_replicas` replicas of `import_path` on this machine; a
    context manager.

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
        routers: int = 1,
    ) -> None:
        if routers < 1:
            raise ValueError(f"routers must be >= 1, got {routers}")
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="modelplex-")) if workdir is None else workdir
        self.num_replicas = num_replicas
        self.secret = generate_secret()
        self.config_path = self.workdir / "cluster.yaml"
        config = {
            "router": {
                **(router or {}),
                "host": router_host,
                "port": 0,
                **({"count": routers} if routers > 1 else {}),
            },
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
        self.router_processes: list[ChildProcess | None] = [None] * routers
        self.replicas: dict[str, ChildProcess] = {}
        self.url = ""  # where clients go: the port every router shares
        self.router_urls: list[str] = []  # each router's direct address, the replicas' --router
        self._router_log_level = router_log_level
        self._ready_timeout_s = ready_timeout_s
        self._placements = dict(placements or {})
        self._env = child_environment(self.secret, self.workdir, _IMPORT_ROOT)

    @property
    def router(self) -> ChildProcess | None:
        """The first router's process (the only one unless `routers` > 1)."""
        return self.router_processes[0]

    def start_router(
        self, port: int | None = None, *, index: int = 0, direct_port: int | None = None
    ) -> ChildProcess:
        """Start router `index` (again, after it died: on `port`, the one it had, and on
        `direct_port`, its own), as `start` does; `close` stops it."""
        argv = [sys.executable, "-m", "router", "--config", str(self.config_path)]
        if port is not None:
            argv += ["--port", str(port)]
        if direct_port is not None:
            argv += ["--direct-port", str(direct_port)]
        if self._router_log_level is not None:
            argv += ["--log-level", self._router_log_level]
        name = "router" if index == 0 else f"router-{index + 1}"
        process = ChildProcess(name, argv, env=self._env, cwd=self.workdir)
        self.router_processes[index] = process
        return process

    def _router_direct_url(self, process: ChildProcess) -> str:
        """The direct address `process` printed; the URL it listens on when it is the only
        router (it opens no other)."""
        if len(self.router_processes) == 1:
            return reachable_url(process.url(self._ready_timeout_s))
        found = process.printed(DIRECT_ADDRESS, self._ready_timeout_s, "to print its address")
        return reachable_url(found)

    def start(self) -> LocalCluster:
        """Start the routers, then the replicas; return once all of them are healthy (on
        every router)."""
        try:
            first = self.start_router()
            self.url = reachable_url(first.url(self._ready_timeout_s))
            shared = urllib.parse.urlsplit(self.url).port
            others = [self.start_router(shared, index=i) for i in range(1, self.num_routers)]
            self.router_urls = [self._router_direct_url(p) for p in [first, *others]]
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

    @property
    def num_routers(self) -> int:
        return len(self.router_processes)

    def kill_router(self, index: int) -> None:
        """SIGKILL router `index` and wait until it is gone (a crash)."""
        process = self.router_processes[index]
        if process is None:
            raise ValueError(f"router {index} was never started")
        process.popen.send_signal(signal.SIGKILL)
        process.wait()
        process.stop()

    def restart_router(self, index: int) -> ChildProcess:
        """Start router `index` again on the shared port and its own, as the launcher restarts
        a router; return once it listens (its replicas reconnect within half a second)."""
        shared = urllib.parse.urlsplit(self.url).port
        direct = urllib.parse.urlsplit(self.router_urls[index]).port
        own = direct if self.num_routers > 1 else None
        process = self.start_router(shared, index=index, direct_port=own)
        if self._router_direct_url(process) != self.router_urls[index]:
            raise ClusterFailed(f"{process.name} came back elsewhere:\n{process.output()}")
        return process

    def start_replica(
        self, replica_id: str, *, placement: ReplicaPlacement | None = None
    ) -> ChildProcess:
        """Start one more replica process (it joins every router; nothing waits for it), placed
        by `placement`, else by the cluster's placement for `replica_id`, else on loopback."""
        placement = placement or self._placements.get(replica_id) or ReplicaPlacement()
        replica_argv = [sys.executable, "-m", "replica", "--config", str(self.config_path)]
        argv = placement.argv([*replica_argv, "--replica-id", replica_id], self.router_urls)
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

    def status(self, router: int = 0) -> RouterStatusDocument:
        """Router `router`'s `/-/status`, read on its direct address."""
        url = self.router_urls[router] if self.router_urls else self.url
        document: RouterStatusDocument = json.loads(
            _get(url + "/-/status", secret=self.secret, context=self.router_tls)
        )
        return document

    def statuses(self) -> list[RouterStatusDocument]:
        """Every router's `/-/status`, in router order."""
        return [self.status(i) for i in range(self.num_routers)]

    def healthy(self, router: int = 0) -> list[ReplicaStatusDocument]:
        return [r for r in self.status(router)["replicas"] if r["state"] == "healthy"]

    def wait_healthy(self, count: int, timeout_s: float = 60.0) -> None:
        """Wait until every router shows exactly `count` healthy replicas."""
        wait_for(
            lambda: all(len(self.healthy(i)) == count for i in range(self.num_routers)),
            timeout_s,
            f"{count} healthy replicas on {self.num_routers} router(s)",
        )

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
        """Process ids by name: "router" (then "router-2", ...), "replica-1", ..."""
        named = {p.name: p.pid for p in self.router_processes if p is not None}
        return named | {name: p.pid for name, p in self.replicas.items()}

    def logs(self, last: int | None = None) -> str:
        """What each process printed (or its `last` lines), for an error message."""
        routers = [p for p in self.router_processes if p is not None]
        processes = [*routers, *self.replicas.values()]
        return "\n".join(f"--- {p.name}\n{p.output(last)}" for p in processes)

    # -- stopping ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the replicas (all signalled at once, so they drain in parallel), then the
        routers; remove the working directory if this cluster made it. Idempotent."""
        for process in self.replicas.values():
            process.signal(signal.SIGTERM)
        for process in self.replicas.values():
            process.stop()
        routers = [p for p in self.router_processes if p is not None]
        for process in routers:
            process.signal(signal.SIGTERM)
        for process in routers:
            process.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
