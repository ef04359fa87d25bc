"""The launcher's replicas and config generations, and the reconcile that moves one to the other.

Invariants:
- Generation n is the file `config-<n>.yaml` in the runtime directory, written once; it is
  deleted only when no replica, the router or the target uses it.
- One reconcile runs at a time. `apply` cancels the running one and plans afresh from the
  replicas that exist; a drain already begun runs to its end, and a draining replica keeps its
  id until its process has exited.
- A reconcile step starts replicas, waits until the routers show them healthy (every router
  that answers), then drains: capacity never drops below the smaller of the old and the new
  count.
- Every replica reports to every router, by each router's own address (`router_urls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import ClusterConfig
from common.status import RouterStatusDocument
from router.launch._control import RuntimeDir
from router.launch._plan import Plan, ReplicaRecord, plan_reconcile, replica_number
from router.launch._supervisor import ExitInfo, Supervised, log
from router.launch._text import healthy_everywhere

__all__ = ["Generation", "ReplicaSet", "ReplicaSlot"]

DRAIN_MARGIN_S = 5.0  # on top of graceful_shutdown_timeout_s before a replica is killed
POLL_INTERVAL_S = 0.25
_LISTENING = re.compile(r"modelplex replica (\S+) listening on (\S+)")

StatusFetcher = Callable[[], Awaitable[list[RouterStatusDocument | None]]]
"""Every router's status, None for one that did not answer."""


@dataclass(frozen=True)
class Generation:
    """One applied config; its file is `config-<number>.yaml` in the runtime directory."""

    number: int
    config: ClusterConfig


@dataclass
class ReplicaSlot:
    """A replica the launcher runs, with the generation it was started with."""

    replica_id: str
    generation: Generation
    process: Supervised
    draining: bool = False
    url: str = ""  # from the running process's listening line; "" until it printed one


class ReplicaSet:
    """Every replica of one launcher, and the target generation they are reconciled to."""

    def __init__(
        self,
        *,
        runtime: RuntimeDir,
        env: Mapping[str, str],
        cwd: str,
        fetch_statuses: StatusFetcher,
        on_exit: Callable[[str, ExitInfo], None],
    ) -> None:
        self.runtime = runtime
        self.router_urls: list[str] = []  # each router's own address
        self.target: Generation | None = None
        self.converged = 0  # the last generation a reconcile finished
        self.pinned: set[int] = set()  # generations in use outside the replicas (the router's)
        self.progress = ""
        self._env = dict(env)
        self._cwd = cwd
        self._fetch_statuses = fetch_statuses
        self._on_exit = on_exit
        self._slots: dict[str, ReplicaSlot] = {}
        self._generations: dict[int, Generation] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def new_generation(self, config: ClusterConfig) -> Generation:
        number = max(self._generations, default=0) + 1
        self.runtime.write_config(number, config)
        generation = Generation(number, config)
        self._generations[number] = generation
        return generation

    def config_file(self, number: int) -> Path:
        return self.runtime.config_path(number)

    @property
    def reconcile_failed(self) -> bool:
        """Whether the last reconcile ended with an error instead of converging."""
        task = self._task
        return task is not None and task.done() and not task.cancelled() and bool(task.exception())

    def slots(self) -> list[ReplicaSlot]:
        return list(self._slots.values())

    # -- apply -------------------------------------------------------------------------------

    async def apply(self, config: ClusterConfig, notes: list[str]) -> dict[str, Any]:
        """Make `config` the target; the result names the generation, the plan and `notes`."""
        async with self._lock:
            target = self.target
            if target is not None and config.deployment == target.config.deployment:
                notes = ["no deployment change", *notes]
                if self.converged < target.number:
                    notes.append(f"generation {target.number} is still being applied")
                log(f"{config.source}: {'; '.join(notes)}")
                return self._result(target, self._plan(target), notes)
            generation = self.new_generation(config)
            plan = await self._retarget(generation, notes)
            return self._result(generation, plan, notes)

    async def adopt(self, generation: Generation) -> Plan:
        """Make an already written generation the target (the first one, at start-up)."""
        async with self._lock:
            return await self._retarget(generation, [])

    async def _retarget(self, generation: Generation, notes: list[str]) -> Plan:
        await self.cancel()
        self.target = generation
        plan = self._plan(generation)
        task = asyncio.create_task(self._reconcile(generation, plan), name="reconcile")
        task.add_done_callback(_log_crash)
        self._task = task
        source = f" from {generation.config.source}" if generation.number > 1 else ""
        self._set_progress(f"applying generation {generation.number}{source}: {plan.describe()}")
        for note in notes:
            log(note)
        return plan

    async def cancel(self) -> None:
        """Stop the running reconcile where it is (drains already begun go on)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def describe(self) -> list[dict[str, Any]]:
        """Every replica as JSON-ready data, for the launcher's `GET /state`."""
        return [
            {
                "replica_id": slot.replica_id,
                "generation": slot.generation.number,
                **slot.process.describe(),
                **({"phase": "draining"} if slot.draining else {}),
            }
            for slot in self._slots.values()
        ]

    def _result(self, generation: Generation, plan: Plan, notes: list[str]) -> dict[str, Any]:
        return {
            "generation": generation.number,
            "plan": {"start": plan.start, "drain": plan.drain, "summary": plan.describe()},
            "notes": notes,
            "converged": self.converged >= generation.number,
        }

    # -- reconcile ---------------------------------------------------------------------------

    def _records(self) -> list[ReplicaRecord]:
        return [
            ReplicaRecord(
                replica_id=s.replica_id, spec=s.generation.config.deployment, draining=s.draining
            )
            for s in self._slots.values()
        ]

    def _plan(self, generation: Generation) -> Plan:
        deployment = generation.config.deployment
        return plan_reconcile(self._records(), deployment, deployment.num_replicas)

    async def _reconcile(self, generation: Generation, plan: Plan) -> None:
        while plan:
            for replica_id in plan.start:
                self._start(replica_id, generation)
            await self._wait_healthy(plan.start)
            if plan.drain:
                self._set_progress(f"draining {', '.join(plan.drain)}")
                drains = [self._drain(replica_id) for replica_id in plan.drain]
                await asyncio.shield(asyncio.gather(*drains, return_exceptions=True))
            plan = self._plan(generation)
        self.converged = generation.number
        names = ", ".join(sorted(self._slots, key=replica_number)) or "no replicas"
        self._set_progress(f"generation {generation.number} is running: {names}")
        self._forget_unused_generations()

    def _start(self, replica_id: str, generation: Generation) -> None:
        deployment = generation.config.deployment
        argv = [
            sys.executable,
            "-m",
            "replica",
            "--config",
            str(self.config_file(generation.number)),
        ]
        argv += ["--replica-id", replica_id]
        for url in self.router_urls:
            argv += ["--router", url]
        process = Supervised(
            replica_id,
            argv,
            env=self._env,
            cwd=self._cwd,
            stop_timeout_s=deployment.graceful_shutdown_timeout_s + DRAIN_MARGIN_S,
            on_line=functools.partial(self._on_replica_line, replica_id),
            on_exit=functools.partial(self._on_exit, replica_id),
        )
        self._slots[replica_id] = ReplicaSlot(replica_id, generation, process)
        process.start()

    def _on_replica_line(self, replica_id: str, stream: str, line: str) -> None:
        match = _LISTENING.match(line) if stream == "stdout" else None
        slot = self._slots.get(replica_id)
        if match and slot is not None and match.group(1) == replica_id:
            slot.url = match.group(2)

    def _drain(self, replica_id: str) -> asyncio.Task[int | None]:
        slot = self._slots[replica_id]
        slot.draining = True
        stopping = slot.process.stop()

        def forget(_: object) -> None:
            if self._slots.get(replica_id) is slot:
                del self._slots[replica_id]

        stopping.add_done_callback(forget)
        return stopping

    async def _wait_healthy(self, replica_ids: Sequence[str]) -> None:
        while True:
            healthy = healthy_everywhere(await self._fetch_statuses())
            waiting = [
                r
                for r in replica_ids
                if (slot := self._slots.get(r)) is not None
                and not (slot.url and healthy.get(r) == slot.url)  # this process, not a ghost
            ]
            if not waiting:
                return
            failing = [
                f"{r} exited with code {ended.code}"
                for r in waiting
                if (ended := self._slots[r].process.last_exit) is not None
            ]
            ready = len(replica_ids) - len(waiting)
            self._set_progress(
                f"waiting for {', '.join(waiting)} to become healthy "
                f"({ready}/{len(replica_ids)} ready{''.join(f'; {f}' for f in failing)})"
            )
            await asyncio.sleep(POLL_INTERVAL_S)

    def _set_progress(self, text: str) -> None:
        if text != self.progress:
            self.progress = text
            log(text)

    def _forget_unused_generations(self) -> None:
        keep = {slot.generation.number for slot in self._slots.values()} | self.pinned
        if self.target is not None:
            keep.add(self.target.number)
        for number in [n for n in self._generations if n not in keep]:
            del self._generations[number]
            with contextlib.suppress(OSError):
                self.config_file(number).unlink()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log(f"the reconcile failed: {task.exception()!r}")
