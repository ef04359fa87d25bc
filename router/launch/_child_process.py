"""A child process of a test or benchmark cluster, its output collected, and the one poll
with a deadline (`wait_for`) that `LocalCluster` and its users wait with."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = ["LISTENING", "TAIL_LINES", "ChildProcess", "ClusterFailed", "wait_for"]

POLL_INTERVAL_S = 0.02
STOP_TIMEOUT_S = 15.0
TAIL_LINES = 30
LISTENING = re.compile(r"listening on (https?://\S+)")

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
        return self.printed(LISTENING, timeout_s, "to listen")

    def printed(self, pattern: re.Pattern[str], timeout_s: float, what: str) -> str:
        """The first group of the first line matching `pattern`, once printed; `ClusterFailed`
        if the process exits first."""

        def find() -> str:
            for line in self.lines:
                match = pattern.search(line)
                if match:
                    return match.group(1)
            if not self.alive():
                raise ClusterFailed(f"{self.name} exited:\n{self.output(TAIL_LINES)}")
            return ""

        return wait_for(find, timeout_s, f"{self.name} {what}")

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
