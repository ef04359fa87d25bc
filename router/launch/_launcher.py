"""`modelplex up`: run the routers and their replicas, keep them running, reconcile to config edits.

Glue around the other rooms of `router.launch`: `_plan` decides what to start and drain,
`_replica_set` runs the replicas and the reconcile, `_router_set` the routers (`router.count`
of them, sharing one port), `_supervisor` runs each child process
(restarting it as `_backoff` says), `_control` holds the runtime directory and the control
port that `modelplex apply` talks to, `_text` words what is printed.

Invariants:
- The config is validated here, once; router and replicas read the file of the generation
  they were started with (`config-<n>.yaml`), which never changes under them.
- Every child inherits a fresh cluster secret through the environment, never on disk.
- Start-up order is routers, then replicas (each reporting to every router's own address);
  shutdown drains the replicas first and stops the routers last, so no request fails; after
  `run` returns, no child is left.
- `router.count` is fixed for the launcher's life: an apply that changes it is refused (the
  replicas know their routers from their start), as `RestartRequired`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from common.auth import (
    SECRET_ENV,
    SECRET_FILE_ENV,
    authorization_value,
    generate_secret,
    load_secret,
)
from common.config import ClusterConfig, ConfigError, load_config
from common.serving import STOP_SIGNALS
from common.status import RouterStatusDocument
from common.tls import Side, client_context
from router.launch._backoff import CONFIG_ERROR_EXIT_CODE
from router.launch._control import ControlServer, LauncherInfo, LauncherRunning, RuntimeDir
from router.launch._plan import changed_keys
from router.launch._replica_set import Generation, ReplicaSet
from router.launch._router_set import RouterSet
from router.launch._supervisor import ExitInfo, Supervised, log
from router.launch._text import banner, status_document

__all__ = ["Launcher", "RestartRequired", "child_environment", "run_launcher"]

ROUTER_START_TIMEOUT_S = 30.0
ROUTER_STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.25
WATCH_INTERVAL_S = 1.0
LAUNCHER_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)  # a closed terminal stops the cluster too
"""Not `common.serving.until_signal`: the handlers stay for the whole run, start-up and
shutdown included, because a second signal during the drain means "kill every child now"."""


class RestartRequired(ConfigError):
    """A valid config that the running cluster cannot take without a restart of `modelplex up`."""


def run_launcher(
    config_path: Path,
    config: ClusterConfig,
    *,
    startup_timeout_s: float,
    bundled: bool = False,
    routers_override: int | None = None,
) -> int:
    """Run the cluster in the foreground until SIGINT/SIGTERM/SIGHUP; the process exit code.
    `bundled`: the config is the example shipped with modelplex (changes the hints shown);
    `routers_override`: `--routers N`, already applied to `config`. The cluster secret is
    `$MODELPLEX_SECRET` (or `$MODELPLEX_SECRET_FILE`) when set, so replicas on other hosts can
    join with it; else a fresh one."""
    try:
        secret = load_secret() or generate_secret()
    except ValueError as err:
        log(f"the cluster secret: {err}")
        return 2
    launcher = Launcher(
        config_path,
        config,
        startup_timeout_s=startup_timeout_s,
        bundled=bundled,
        routers_override=routers_override,
        secret=secret,
    )
    return asyncio.run(launcher.run())


def child_environment(secret: str, *import_first: Path) -> dict[str, str]:
    """The environment of router and replicas: the secret, and `import_first` (the config's
    directory, so `import_path` modules next to the config import) first on the import path."""
    env = dict(os.environ)
    env.pop(SECRET_FILE_ENV, None)
    env[SECRET_ENV] = secret
    paths = [*map(str, import_first), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env["PYTHONUNBUFFERED"] = "1"  # log lines (and the listening line) arrive as written
    return env


class Launcher:
    """One cluster: its routers, its replicas, and the config file they follow."""

    def __init__(
        self,
        config_path: Path,
        config: ClusterConfig,
        *,
        startup_timeout_s: float,
        bundled: bool = False,
        routers_override: int | None = None,
        secret: str | None = None,
    ) -> None:
        """`routers_override`: `modelplex up --routers N`, already in `config`; it holds
        against the `router.count` of edited configs too. `secret`: the cluster's (None: a
        fresh one)."""
        self.config_path = config_path.resolve()
        self._routers_override = routers_override
        self._bundled = bundled
        self._initial = config
        self._startup_timeout_s = startup_timeout_s
        self._env = child_environment(secret or generate_secret(), self.config_path.parent)
        self._http: aiohttp.ClientSession | None = None
        self._control: ControlServer | None = None
        self._replicas: ReplicaSet | None = None
        self._routers: RouterSet | None = None
        self._router_generation: Generation | None = None
        self._starting_up = True
        self._fatal = False
        self._stop = asyncio.Event()
        self._kill_now = asyncio.Event()
        self._signals = 0

    async def run(self) -> int:
        """Start everything, serve until a signal, stop everything; the exit code."""
        loop = asyncio.get_running_loop()
        for signum in LAUNCHER_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal)
        try:
            runtime = RuntimeDir.claim(self._initial.router.port)
        except (LauncherRunning, OSError) as err:
            log(f"{err}")
            return 1
        connector = aiohttp.TCPConnector(ssl=client_context(self._initial.tls, Side.ROUTER) or True)
        self._http = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=2.0)
        )
        self._replicas = ReplicaSet(
            runtime=runtime,
            env=self._env,
            cwd=str(self.config_path.parent),
            fetch_statuses=self._router_statuses,
            on_exit=self._on_replica_exit,
        )
        try:
            return await self._serve(runtime, self._replicas)
        finally:
            await self._shutdown(runtime)
            for signum in LAUNCHER_SIGNALS:
                loop.remove_signal_handler(signum)

    @property
    def router_url(self) -> str:
        """Where clients go: the port every router listens on ("" until the first does)."""
        return "" if self._routers is None else self._routers.url

    async def _serve(self, runtime: RuntimeDir, replicas: ReplicaSet) -> int:
        first = replicas.new_generation(self._initial)
        replicas.pinned.add(first.number)
        self._router_generation = first
        routers = self._routers = RouterSet(
            count=first.config.router.count,
            config_file=replicas.config_file(first.number),
            env=self._env,
            cwd=str(self.config_path.parent),
            stop_timeout_s=ROUTER_STOP_TIMEOUT_S,
        )
        started = await routers.start(
            stop=self._stop, timeout_s=ROUTER_START_TIMEOUT_S, report=_report_exit
        )
        if not started:
            return 0 if self._stop.is_set() else 1
        port = int(self.router_url.rpartition(":")[2])
        runtime.settle(port)
        routers.settle(replicas.config_file(first.number))
        replicas.router_urls = list(routers.urls)
        self._control = ControlServer(
            apply=self.apply, state=self.state, secret=lambda: self._env[SECRET_ENV]
        )
        await self._control.start()
        runtime.write_info(
            LauncherInfo(
                pid=os.getpid(),
                port=port,
                router_url=self.router_url,
                control_url=self._control.url,
                token=self._control.token,
                config_path=str(self.config_path),
                router_urls=list(routers.urls),
            )
        )
        await replicas.adopt(first)
        if not await self._await_startup(replicas, first):
            return 0 if self._stop.is_set() else 1
        self._starting_up = False
        text = banner(
            self.router_url,
            self.config_path,
            first.config,
            pid=os.getpid(),
            bundled=self._bundled,
            router_urls=routers.urls,
        )
        print(text, flush=True)
        watcher = asyncio.create_task(self._watch_config(), name="watch config")
        try:
            await self._stop.wait()
        finally:
            watcher.cancel()
        return 0

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            log("stopping: draining the replicas, then the routers (Ctrl-C again to kill now)")
            self._stop.set()
        else:
            log("killing every child now")
            self._kill_now.set()

    async def _shutdown(self, runtime: RuntimeDir) -> None:
        self._stop.set()
        if self._replicas is not None:
            await self._replicas.cancel()
            slots = self._replicas.slots()
            if slots:
                longest = max(slot.process.stop_timeout_s for slot in slots)
                log(f"draining {len(slots)} replica(s), waiting up to {longest:g} s")
                await self._stop_all([slot.process for slot in slots])
        if self._routers is not None and self._routers.processes:
            log(f"stopping {len(self._routers.processes)} router(s)")
            await self._stop_all(self._routers.processes)
        if self._control is not None:
            await self._control.close()
        if self._http is not None:
            await self._http.close()
        runtime.remove()
        log("stopped")

    async def _stop_all(self, processes: Sequence[Supervised]) -> None:
        stopped = asyncio.gather(*(p.stop() for p in processes), return_exceptions=True)
        killer = asyncio.create_task(self._kill_now.wait())
        waiters: list[asyncio.Future[Any]] = [stopped, killer]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not stopped.done():
            for process in processes:
                process.kill()
            await stopped
        killer.cancel()

    # -- the routers -------------------------------------------------------------------------

    async def _router_statuses(self) -> list[RouterStatusDocument | None]:
        """Every router's `/-/status`, read on its own address; None for one that does not
        answer (down, restarting)."""
        assert self._routers is not None
        return await self._routers.each(self._router_status)

    async def _router_status(self, url: str) -> RouterStatusDocument | None:
        assert self._http is not None
        try:
            auth = {"Authorization": authorization_value(self._env[SECRET_ENV])}
            async with self._http.get(f"{url}/-/status", headers=auth) as response:
                if response.status != 200:
                    return None
                data = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return status_document(data)

    # -- replicas ----------------------------------------------------------------------------

    def _on_replica_exit(self, replica_id: str, info: ExitInfo) -> None:
        if self._starting_up and info.code == CONFIG_ERROR_EXIT_CODE and not self._fatal:
            self._fatal = True
            _report_exit(replica_id, info)

    async def _await_startup(self, replicas: ReplicaSet, generation: Generation) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout_s
        while replicas.converged < generation.number:
            if self._stop.is_set() or self._fatal or replicas.reconcile_failed:
                return False
            if loop.time() > deadline:
                log(f"the cluster did not become healthy within {self._startup_timeout_s:g} s")
                for slot in replicas.slots():
                    if slot.process.last_exit is not None:
                        _report_exit(slot.replica_id, slot.process.last_exit)
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), POLL_INTERVAL_S)
        return True

    # -- apply -------------------------------------------------------------------------------

    async def apply(self, config: ClusterConfig) -> dict[str, Any]:
        """Reconcile to `config`'s deployment; router changes are reported, not applied, and
        a change of `router.count` is refused (`RestartRequired`)."""
        assert self._replicas is not None
        assert self._router_generation is not None
        running = self._router_generation.config.router.count
        notes = []
        if self._routers_override is not None:
            if config.router.count != running:
                notes.append(
                    f"router.count: {config.router.count!r} is overridden by `modelplex up "
                    f"--routers {running}`"
                )
            config = dataclasses.replace(
                config, router=dataclasses.replace(config.router, count=running)
            )
        if config.router.count != running:
            raise RestartRequired(
                "router.count",
                f"{running} -> {config.router.count} needs a restart of `modelplex up` (replicas "
                "learn their routers when they start); the cluster keeps running as it was",
            )
        return await self._replicas.apply(config, [*notes, *self._notes(config)])

    def _notes(self, config: ClusterConfig) -> list[str]:
        assert self._router_generation is not None
        running = self._router_generation.config
        notes = []
        router_changes = changed_keys(running.router, config.router, section="router")
        if router_changes:
            notes.append(
                f"the router section changed ({'; '.join(router_changes)}): that needs a "
                "restart of `modelplex up`; the router keeps running as it was"
            )
        if config.tls != running.tls:
            notes.append(
                "the tls section changed: that needs a restart of `modelplex up`; the router "
                "keeps the TLS it started with (replicas started for a deployment change would "
                "use the new one)"
            )
        for key in ("heartbeat_interval_s", "heartbeat_timeout_s"):
            before, after = getattr(running.deployment, key), getattr(config.deployment, key)
            if before != after:
                notes.append(
                    f"deployment.{key}: new replicas use {after!r}; the router keeps {before!r} "
                    "until `modelplex up` restarts"
                )
        return notes

    def state(self) -> dict[str, Any]:
        """What the launcher runs and how far it got: `GET /state` on the control port."""
        assert self._replicas is not None
        target = self._replicas.target.number if self._replicas.target is not None else 0
        routers = [] if self._routers is None else self._routers.describe()
        return {
            "pid": os.getpid(),
            "router_url": self.router_url,
            "config_path": str(self.config_path),
            "target_generation": target,
            "converged_generation": self._replicas.converged,
            "converged": self._replicas.converged >= target,
            "progress": self._replicas.progress,
            "router": routers[0] if routers else None,  # the first, as before there were more
            "router_urls": [] if self._routers is None else list(self._routers.urls),
            "routers": routers,
            "replicas": self._replicas.describe(),
        }

    async def _watch_config(self) -> None:
        """Apply the config file whenever it is saved; an invalid edit is logged and ignored."""
        last = _stamp(self.config_path)
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            stamp = _stamp(self.config_path)
            if stamp == last:
                continue
            last = stamp
            if stamp is None:
                log(f"{self.config_path} is gone; the cluster keeps running as it is")
                continue
            try:
                config = load_config(self.config_path)
            except ConfigError as err:
                message = str(err).removeprefix(f"{self.config_path}: ")
                log(f"{self.config_path}: {message} (ignored: the cluster keeps running as it was)")
                continue
            try:
                await self.apply(config)
            except ConfigError as err:
                log(f"{self.config_path}: {err}")


def _report_exit(name: str, info: ExitInfo) -> None:
    hint = " (a config or import error)" if info.code == CONFIG_ERROR_EXIT_CODE else ""
    tail = "".join(f"\n    {line}" for line in info.stderr_tail[-15:])
    log(f"{name} exited with code {info.code}{hint}; its last stderr lines:{tail or ' none'}")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino
