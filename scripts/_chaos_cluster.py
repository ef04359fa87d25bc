"""The chaos benchmark's cluster: `modelplex up` in a subprocess, as a user runs it.

`LauncherProcess` writes the config of `examples.synthetic:SyntheticModels` into its own
temporary directory, starts `python -m router.launch up CONFIG` with `XDG_RUNTIME_DIR` pointing
into that directory (so its runtime directory, and the `modelplex apply` run against it, are
private to this run), waits for the launcher's "modelplex is serving ... on URL" banner, and
reads the launcher's `launcher.json` to ask its control port for `GET /state` (the router's and
the replicas' pids). `apply` runs `python -m router.launch apply --port PORT FILE`.
`process_sample` reads a process's VmRSS and open file descriptors from /proc.

The launcher is started in a session of its own; its children die with it (they get SIGTERM
when it dies). `stop` sends it SIGTERM (drain, then exit) and, after a grace period, SIGKILLs
that session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from common.auth import authorization_value

ROOT = Path(__file__).resolve().parents[1]
_STATUS_TIMEOUT = aiohttp.ClientTimeout(total=1.0)
_BANNER = re.compile(r"modelplex is serving \S+ on (\S+) with")


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    replicas: int
    port: int = 0
    capacity: int = 3
    max_ongoing: int = 8
    load_s: float = 0.1
    infer_s: float = 0.005

    def config(self, num_replicas: int) -> dict[str, Any]:
        return {
            "router": {"host": "127.0.0.1", "port": self.port},
            "deployment": {
                "import_path": "examples.synthetic:SyntheticModels",
                "init_kwargs": {"load_s": self.load_s, "infer_s": self.infer_s},
                "num_replicas": num_replicas,
                "max_num_models_per_replica": self.capacity,
                "max_ongoing_requests": self.max_ongoing,
                "graceful_shutdown_timeout_s": 10,
            },
        }


@dataclass(frozen=True, slots=True)
class ProcessSample:
    pid: int
    rss_kb: int
    fds: int


def process_sample(pid: int) -> ProcessSample | None:
    """VmRSS (kB) and the number of open fds of a live process; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return ProcessSample(pid=pid, rss_kb=int(line.split()[1]), fds=fds)
    return None


class LaunchFailed(RuntimeError):
    """The launcher did not come up; the message holds its last output lines."""


class LauncherProcess:
    """`modelplex up` of one chaos run, in a temporary directory of its own."""

    def __init__(self, spec: ClusterSpec, *, keep: bool = False) -> None:
        self.spec = spec
        self.dir = Path(tempfile.mkdtemp(prefix="modelplex-chaos-"))
        self.keep = keep
        self.config_path = self.dir / "cluster.yaml"
        self.log_path = self.dir / "launcher.log"
        self.url = ""
        self.port = 0
        self._runtime = self.dir / "run"
        self._runtime.mkdir(mode=0o700)
        self._env = dict(os.environ)
        self._env["XDG_RUNTIME_DIR"] = str(self._runtime)
        self._env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), self._env.get("PYTHONPATH")])
        )
        self._process: asyncio.subprocess.Process | None = None
        self._log: Any = None
        self._http: aiohttp.ClientSession | None = None
        self._control: tuple[str, str] | None = None

    async def start(self, *, timeout_s: float = 120.0) -> None:
        """Start the launcher and return once it printed that the cluster is serving."""
        self.config_path.write_text(yaml.safe_dump(self.spec.config(self.spec.replicas)))
        self._log = self.log_path.open("wb")
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "router.launch",
            "up",
            str(self.config_path),
            "--startup-timeout",
            str(timeout_s),
            cwd=self.dir,
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3.0))
        deadline = time.monotonic() + timeout_s + 10
        while not self.url:
            match = _BANNER.search(self.log_path.read_text(errors="replace"))
            if match:
                self.url = match.group(1)
                self.port = int(self.url.rpartition(":")[2])
            elif self._process.returncode is not None:
                raise LaunchFailed(f"the launcher exited:\n{self.log_tail()}")
            elif time.monotonic() > deadline:
                raise LaunchFailed(
                    f"the launcher did not start in {timeout_s:g} s:\n{self.log_tail()}"
                )
            else:
                await asyncio.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def state(self) -> dict[str, Any] | None:
        """The launcher's `GET /state`, or None when it does not answer."""
        assert self._http is not None
        try:
            if self._control is None:
                info = json.loads(
                    (self._runtime / "modelplex" / str(self.port) / "launcher.json").read_text()
                )
                self._control = (info["control_url"], info["token"])
            url, token = self._control
            headers = {"Authorization": authorization_value(token)}
            async with self._http.get(f"{url}/state", headers=headers) as response:
                data = await response.json()
        except (OSError, ValueError, KeyError, aiohttp.ClientError, TimeoutError):
            return None
        return data if isinstance(data, dict) else None

    async def router_pid(self) -> int | None:
        state = await self.state()
        router = (state or {}).get("router") or {}
        pid = router.get("pid")
        return pid if isinstance(pid, int) else None

    async def replica_pids(self) -> dict[str, int]:
        """Replica id -> pid of the replicas that run and do not drain."""
        state = await self.state()
        return {
            r["replica_id"]: r["pid"]
            for r in (state or {}).get("replicas") or []
            if r.get("phase") == "running" and isinstance(r.get("pid"), int)
        }

    async def router_status(self) -> dict[str, Any] | None:
        """The router's `/-/status`, or None while it does not answer."""
        assert self._http is not None
        try:
            async with self._http.get(f"{self.url}/-/status", timeout=_STATUS_TIMEOUT) as response:
                data = await response.json()
        except (ValueError, aiohttp.ClientError, TimeoutError):
            return None
        return data if isinstance(data, dict) else None

    async def healthy_replicas(self) -> set[str]:
        status = await self.router_status()
        return {
            r["replica_id"] for r in (status or {}).get("replicas") or [] if r["state"] == "healthy"
        }

    async def apply(self, num_replicas: int, *, timeout_s: float = 120.0) -> tuple[int, str]:
        """`modelplex apply` of the config with `num_replicas`: (exit code, its output)."""
        path = self.dir / f"cluster-{num_replicas}.yaml"
        path.write_text(yaml.safe_dump(self.spec.config(num_replicas)))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "router.launch",
            "apply",
            "--port",
            str(self.port),
            "--timeout",
            str(timeout_s),
            str(path),
            cwd=self.dir,
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        return process.returncode or 0, output.decode(errors="replace")

    async def stop(self, *, grace_s: float = 30.0) -> None:
        """SIGTERM the launcher (it drains and stops its children); SIGKILL its session after
        `grace_s`. Removes the temporary directory unless `keep`."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._http is not None:
            await self._http.close()
        if self._log is not None:
            self._log.close()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
