"""Child processes of the launcher: started, watched, restarted with backoff, stopped in order.

Invariants:
- A child runs in its own session (a terminal's Ctrl-C reaches only the launcher) and, on
  Linux, receives SIGTERM when the launcher dies, even by SIGKILL: no orphan outlives it.
- Every line a child writes reaches the launcher's stderr as `[name] line`; the last stderr
  lines are kept for error reports.
- A child that exits while not being stopped is restarted after `restart_delay_s`; a stop
  sends SIGTERM (the graceful drain), waits `stop_timeout_s`, then SIGKILLs the child's whole
  process group. After a stop, no process of the group is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router.launch._backoff import restart_delay_s

__all__ = ["ChildPhase", "ExitInfo", "Supervised", "log"]

TAIL_LINES = 30
_PIPE_LIMIT = 1 << 20  # longest line kept whole
_PR_SET_PDEATHSIG = 1


def log(message: str) -> None:
    """One launcher message on stderr."""
    print(f"modelplex: {message}", file=sys.stderr, flush=True)


class ChildPhase(enum.Enum):
    RUNNING = "running"  # spawned and not exited; the owner judges readiness
    BACKOFF = "backoff"  # exited unexpectedly, waiting to restart
    STOPPING = "stopping"  # SIGTERM sent (or about to be), waiting for the exit
    STOPPED = "stopped"


@dataclass(frozen=True)
class ExitInfo:
    """How a child's last run ended."""

    code: int
    uptime_s: float
    stderr_tail: tuple[str, ...]
    restart_in_s: float | None  # None: not restarted (it was stopped)


def _exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` asking Linux to SIGTERM the child when the launcher dies."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class Supervised:
    """One named child process, kept running until `stop()`.

    `argv` may be replaced between runs (the next restart uses it). `on_line(name, stream,
    line)` sees every output line; `on_exit(info)` every exit.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        stop_timeout_s: float,
        on_line: Callable[[str, str], None] | None = None,
        on_exit: Callable[[ExitInfo], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.stop_timeout_s = stop_timeout_s
        self.phase = ChildPhase.STOPPED  # until start()
        self.restarts = 0
        self.last_exit: ExitInfo | None = None
        self.stderr_tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._on_line = on_line
        self._on_exit = on_exit
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[int | None] | None = None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def describe(self) -> dict[str, Any]:
        """The child's state as JSON-ready data, for the launcher's `GET /state`."""
        last = self.last_exit
        return {
            "phase": self.phase.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": None
            if last is None
            else {
                "code": last.code,
                "uptime_s": round(last.uptime_s, 3),
                "restart_in_s": last.restart_in_s,
                "stderr_tail": list(last.stderr_tail),
            },
        }

    def start(self) -> None:
        """Spawn the child and keep it running in a background task."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"supervise {self.name}")

    def stop(self) -> asyncio.Task[int | None]:
        """Stop for good: SIGTERM, then SIGKILL after `stop_timeout_s`. Idempotent; the task's
        result is the last exit code (None if it never ran). Cancelling a waiter of the task
        does not cancel the stop."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(), name=f"stop {self.name}")
        return self._stop_task

    def kill(self) -> None:
        """SIGKILL the child's process group now (a second Ctrl-C)."""
        self._stopping.set()
        self.phase = ChildPhase.STOPPING
        process = self._process
        if process is not None:
            _kill_group(process.pid)

    async def _stop(self) -> int | None:
        self._stopping.set()
        self.phase = ChildPhase.STOPPING
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.stop_timeout_s)
            except TimeoutError:
                log(f"{self.name} did not stop within {self.stop_timeout_s:g} s; killing it")
                self.kill()
                await asyncio.shield(self._task)
        self.phase = ChildPhase.STOPPED
        return None if self.last_exit is None else self.last_exit.code

    async def _supervise(self) -> None:
        delay: float | None = None
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                code = await self._run_once()
            except OSError as err:  # cannot even spawn: treat like a failed start
                log(f"cannot start {self.name}: {err}")
                code = 1
            uptime = time.monotonic() - started
            if self._stopping.is_set():
                self.last_exit = ExitInfo(code, uptime, tuple(self.stderr_tail), None)
                if self._on_exit is not None:
                    self._on_exit(self.last_exit)
                break
            delay = restart_delay_s(delay, uptime_s=uptime, exit_code=code)
            self.last_exit = ExitInfo(code, uptime, tuple(self.stderr_tail), delay)
            self.phase = ChildPhase.BACKOFF
            log(f"{self.name} exited with code {code} after {uptime:.1f} s; restart in {delay:g} s")
            if self._on_exit is not None:
                self._on_exit(self.last_exit)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if not self._stopping.is_set():
                self.restarts += 1
                log(f"restarting {self.name} (restart {self.restarts})")
        self.phase = ChildPhase.STOPPED

    async def _run_once(self) -> int:
        self.phase = ChildPhase.RUNNING
        self.stderr_tail.clear()
        process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
            limit=_PIPE_LIMIT,
        )
        self._process = process
        if self._stopping.is_set():  # stopped while spawning
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        assert process.stderr is not None
        pumps = [
            asyncio.create_task(self._pump(process.stdout, "stdout")),
            asyncio.create_task(self._pump(process.stderr, "stderr")),
        ]
        try:
            returncode = await process.wait()
        finally:
            _kill_group(process.pid)  # whatever the child left behind goes with it
            _, pending = await asyncio.wait(pumps, timeout=1.0)
            for pump in pending:
                pump.cancel()
        return _exit_code(returncode)

    async def _pump(self, stream: asyncio.StreamReader, kind: str) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:
                raw = b"<a line longer than 1 MiB, dropped>\n"
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if kind == "stderr":
                self.stderr_tail.append(line)
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"[{self.name}] {line}\n")
                sys.stderr.flush()
            if self._on_line is not None:
                self._on_line(kind, line)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
