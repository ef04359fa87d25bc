"""The launcher's routers: `router.count` router processes on this host, kept running.

With one router nothing is shared: it listens on `router.port` as it always did. With several,
all listen on one port with SO_REUSEPORT (the kernel spreads client connections across them:
one URL for clients, several cores for the request path), and each also on a direct port of
its own, which its replicas report to and status calls use — a replica reaching the shared
port would reach whichever router the kernel picked.

Invariants:
- The first router binds the configured port (an ephemeral one for `router.port: 0`); the
  others start once it listens and bind that port by its number, since port 0 with
  SO_REUSEPORT would give each its own.
- A router is started once its address (the direct one, or the shared one when there is only
  one router) is known; restarts keep both ports, so replicas that know it by address find it
  again, and clients keep their URL.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from common.addresses import reachable_url
from router.launch._supervisor import ExitInfo, Supervised, log

__all__ = ["RouterSet"]

LISTENING = re.compile(r"modelplex router listening on (\S+)")
DIRECT_ADDRESS = re.compile(r"modelplex router direct address (\S+)")

ExitReporter = Callable[[str, ExitInfo], None]
_T = TypeVar("_T")


class RouterSet:
    """`count` supervised routers of one config file; `url` is the port they share, `urls`
    each one's own address (`[url]` with a single router)."""

    def __init__(
        self,
        *,
        count: int,
        config_file: Path,
        env: Mapping[str, str],
        cwd: str,
        stop_timeout_s: float,
    ) -> None:
        self.count = count
        self.config_file = config_file
        self.url = ""
        self.urls = [""] * count
        self._env = dict(env)
        self._cwd = cwd
        self._stop_timeout_s = stop_timeout_s
        self._processes: list[Supervised] = []
        self._known = [asyncio.Event() for _ in range(count)]  # its address is in `urls`
        self._exited = [asyncio.Event() for _ in range(count)]

    @property
    def processes(self) -> list[Supervised]:
        return list(self._processes)

    def name(self, index: int) -> str:
        return "router" if self.count == 1 else f"router-{index + 1}"

    def argv(self, index: int) -> list[str]:
        """Router `index`'s command: on the shared port and its own once they are known."""
        argv = [sys.executable, "-m", "router", "--config", str(self.config_file)]
        if self.url:
            argv += ["--port", str(urllib.parse.urlsplit(self.url).port)]
        if self.count > 1 and self.urls[index]:
            argv += ["--direct-port", str(urllib.parse.urlsplit(self.urls[index]).port)]
        return argv

    async def start(self, *, stop: asyncio.Event, timeout_s: float, report: ExitReporter) -> bool:
        """Start the first router, then the others on its port; True once every one has
        printed its address, False (having said why) if one exited first, the time ran out
        or `stop` was set."""
        if not await self._start([0], stop=stop, timeout_s=timeout_s, report=report):
            return False
        others = list(range(1, self.count))
        if not await self._start(others, stop=stop, timeout_s=timeout_s, report=report):
            return False
        self.settle(self.config_file)
        return True

    def settle(self, config_file: Path) -> None:
        """Restart every router from now on with `config_file` (where the config went once
        the runtime directory got its port's name) and on the ports it has, even picked ones."""
        self.config_file = config_file
        for index, process in enumerate(self._processes):
            process.argv = self.argv(index)

    async def _start(
        self, indexes: Sequence[int], *, stop: asyncio.Event, timeout_s: float, report: ExitReporter
    ) -> bool:
        for index in indexes:
            process = Supervised(
                self.name(index),
                self.argv(index),
                env=self._env,
                cwd=self._cwd,
                stop_timeout_s=self._stop_timeout_s,
                on_line=functools.partial(self._on_line, index),
                on_exit=functools.partial(self._on_exit, index),
            )
            self._processes.append(process)
            process.start()
        for index in indexes:
            events = (self._known[index], self._exited[index], stop)
            waiters = [asyncio.create_task(event.wait()) for event in events]
            await asyncio.wait(waiters, timeout=timeout_s, return_when="FIRST_COMPLETED")
            for waiter in waiters:
                waiter.cancel()
            if self._known[index].is_set():
                continue
            if stop.is_set():
                return False
            last_exit = self._processes[index].last_exit
            if last_exit is not None:
                report(f"the {self.name(index)}", last_exit)
            else:
                log(f"the {self.name(index)} did not start listening within {timeout_s:g} s")
            return False
        return True

    def _on_line(self, index: int, stream: str, line: str) -> None:
        if stream != "stdout" or self._known[index].is_set():
            return
        if match := LISTENING.search(line):
            if not self.url:
                self.url = reachable_url(match.group(1))
            if self.count == 1:
                self.urls[index] = self.url
                self._known[index].set()
        elif self.count > 1 and (match := DIRECT_ADDRESS.search(line)):
            self.urls[index] = reachable_url(match.group(1))
            self._known[index].set()

    def _on_exit(self, index: int, info: ExitInfo) -> None:
        self._exited[index].set()

    def describe(self) -> list[dict[str, object]]:
        """Every router as JSON-ready data, for the launcher's `GET /state`."""
        return [
            {"router": self.name(i), "url": self.urls[i], **process.describe()}
            for i, process in enumerate(self._processes)
        ]

    async def each(self, fetch: Callable[[str], Awaitable[_T]]) -> list[_T]:
        """`fetch(url)` of every router's own address, at once, in router order."""
        return list(await asyncio.gather(*(fetch(url) for url in self.urls)))
