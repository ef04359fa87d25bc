"""`modelplex up`: run a router and its replicas, keep them running, reconcile to config edits.

Glue around the other rooms of `router.launch`: `_plan` decides what to start and drain,
`_replica_set` runs the replicas and the reconcile, `_supervisor` runs each child process
(restarting it as `_backoff` says), `_control` holds the runtime directory and the control
port that `modelplex apply` talks to, `_text` words what is printed.

Invariants:
- The config is validated here, once; router and replicas read the file of the generation
  they were started with (`config-<n>.yaml`), which never changes under them.
- Every child inherits a fresh cluster secret through the environment, never on disk.
- Start-up order is router, then replicas; shutdown drains the replicas first and stops the
  router last, so no request fails; after `run` returns, no child is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from common.addresses import reachable_url
from common.auth import SECRET_ENV, SECRET_FILE_ENV, authorization_value, generate_secret
from common.config import ClusterConfig, ConfigError, load_config
from common.serving import STOP_SIGNALS
from common.status import RouterStatusDocument
from common.tls import Side, client_context
from router.launch._backoff import CONFIG_ERROR_EXIT_CODE
from router.launch._control import ControlServer, LauncherInfo, LauncherRunning, RuntimeDir
from router.launch._plan import changed_keys
from router.launch._replica_set import Generation, ReplicaSet
from router.launch._supervisor import ExitInfo, Supervised, log
from router.launch._text import banner, status_document

__all__ = ["Launcher", "child_environment", "run_launcher"]

ROUTER_START_TIMEOUT_S = 30.0
ROUTER_STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.25
WATCH_INTERVAL_S = 1.0
LAUNCHER_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)  # a closed terminal stops the cluster too
"""Not `common.serving.until_signal`: the handlers stay for the whole run, start-up and
shutdown included, because a second signal during the drain means "kill every child now"."""
_LISTENING = re.compile(r"modelplex router listening on (\S+)")


def run_launcher(
    config_path: Path, config: ClusterConfig, *, startup_timeout_s: float, bundled: bool = False
) -> int:
    """Run the cluster in the foreground until SIGINT/SIGTERM/SIGHUP; the process exit code.
    `bundled`: the config is the example shipped with modelplex (changes the hints shown)."""
    launcher = Launcher(config_path, config, startup_timeout_s=startup_timeout_s, bundled=bundled)
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
    """One cluster: a router, its replicas, and the config file they follow."""

    def __init__(
        self,
        config_path: Path,
        config: ClusterConfig,
        *,
        startup_timeout_s: float,
        bundled: bool = False,
    ) -> None:
        self.config_path = config_path.resolve()
        self._bundled = bundled
        self.router_url = ""
        self._initial = config
        self._startup_timeout_s = startup_timeout_s
        self._env = child_environment(generate_secret(), self.config_path.parent)
        self._http: aiohttp.ClientSession | None = None
        self._control: ControlServer | None = None
        self._replicas: ReplicaSet | None = None
        self._router: Supervised | None = None
        self._router_generation: Generation | None = None
        self._router_listening = asyncio.Event()
        self._router_exited = asyncio.Event()
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
            fetch_status=self._router_status,
            on_exit=self._on_replica_exit,
        )
        try:
            return await self._serve(runtime, self._replicas)
        finally:
            await self._shutdown(runtime)
            for signum in LAUNCHER_SIGNALS:
                loop.remove_signal_handler(signum)

    async def _serve(self, runtime: RuntimeDir, replicas: ReplicaSet) -> int:
        first = replicas.new_generation(self._initial)
        replicas.pinned.add(first.number)
        if not await self._start_router(first):
            return 0 if self._stop.is_set() else 1
        port = int(self.router_url.rpartition(":")[2])
        runtime.settle(port)
        assert self._router is not None
        self._router.argv = self._router_argv()
        replicas.router_url = self.router_url
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
            )
        )
        await replicas.adopt(first)
        if not await self._await_startup(replicas, first):
            return 0 if self._stop.is_set() else 1
        self._starting_up = False
        text = banner(
            self.router_url, self.config_path, first.config, pid=os.getpid(), bundled=self._bundled
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
            log("stopping: draining the replicas, then the router (Ctrl-C again to kill now)")
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
        if self._router is not None:
            log("stopping the router")
            await self._stop_all([self._router])
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

    # -- the router --------------------------------------------------------------------------

    def _router_argv(self) -> list[str]:
        assert self._replicas is not None
        assert self._router_generation is not None
        config = self._replicas.config_file(self._router_generation.number)
        argv = [sys.executable, "-m", "router", "--config", str(config)]
        if self.router_url:  # a restart keeps the port, even one the system picked
            argv += ["--port", self.router_url.rpartition(":")[2]]
        return argv

    async def _start_router(self, generation: Generation) -> bool:
        self._router_generation = generation
        self._router = Supervised(
            "router",
            self._router_argv(),
            env=self._env,
            cwd=str(self.config_path.parent),
            stop_timeout_s=ROUTER_STOP_TIMEOUT_S,
            on_line=self._on_router_line,
            on_exit=self._on_router_exit,
        )
        self._router.start()
        events = (self._router_listening, self._router_exited, self._stop)
        waiters = [asyncio.create_task(event.wait()) for event in events]
        await asyncio.wait(waiters, timeout=ROUTER_START_TIMEOUT_S, return_when="FIRST_COMPLETED")
        for waiter in waiters:
            waiter.cancel()
        if self._router_listening.is_set() or self._stop.is_set():
            return self._router_listening.is_set()
        if self._router.last_exit is not None:
            _report_exit("the router", self._router.last_exit)
        else:
            log(f"the router did not start listening within {ROUTER_START_TIMEOUT_S:g} s")
        return False

    def _on_router_line(self, stream: str, line: str) -> None:
        match = _LISTENING.search(line) if stream == "stdout" else None
        if match and not self.router_url:
            self.router_url = reachable_url(match.group(1))
            self._router_listening.set()

    def _on_router_exit(self, info: ExitInfo) -> None:
        self._router_exited.set()

    async def _router_status(self) -> RouterStatusDocument | None:
        assert self._http is not None
        try:
            auth = {"Authorization": authorization_value(self._env[SECRET_ENV])}
            async with self._http.get(f"{self.router_url}/-/status", headers=auth) as response:
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
        """Reconcile to `config`'s deployment; router changes are reported, not applied."""
        assert self._replicas is not None
        return await self._replicas.apply(config, self._notes(config))

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
        return {
            "pid": os.getpid(),
            "router_url": self.router_url,
            "config_path": str(self.config_path),
            "target_generation": target,
            "converged_generation": self._replicas.converged,
            "converged": self._replicas.converged >= target,
            "progress": self._replicas.progress,
            "router": None if self._router is None else self._router.describe(),
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
            await self.apply(config)


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
