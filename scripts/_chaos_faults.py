"""The chaos benchmark's faults: what each one does to the cluster, and the schedule.

Each fault acts on the running `modelplex up` (through `LauncherProcess`) or on the load, then
waits for the cluster to recover (bounded by `recovery_timeout_s`) and returns a `Fault`: its
kind, when it was injected (`instant`: the moment of the signal, the first `apply`, the first
fail-load request) and when it ended (`ended`: recovered, or gave up waiting), and what it saw.

- kill_replica:   SIGKILL a random running replica; ends when the launcher has restarted it
                  and the router routes to it again.
- stop_replica:   SIGSTOP a random running replica for `stop_s`, then SIGCONT (always, even
                  if the run is interrupted); ends when the router routes to it again.
- restart_router: SIGKILL the router; the launcher restarts it on the same port and the
                  replicas reconnect; ends when every replica that was healthy is again.
- fail_load:      for `fail_load_s`, a share of the clients' requests ask for `fail-load-*`
                  ids, whose load always fails (expected failures).
- scale:          `modelplex apply` with one replica fewer, then with the count restored.

`run_schedule` injects the kinds in turn every `every_s` seconds (the next one starts at once
if the previous took longer), starting `every_s` after the start, none later than 1 s before
the end; a fault under way at the end (a long SIGSTOP) runs to its end while the clients stop
sending. `link_cut_note` says why the optional namespace link cut is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from _chaos_cluster import LauncherProcess
from _chaos_load import Load

FAULT_KINDS = ("kill_replica", "stop_replica", "restart_router", "fail_load", "scale")
_POLL_S = 0.1


@dataclass(kw_only=True)
class Fault:
    kind: str
    instant: float
    """`time.monotonic()` of the injection."""
    ended: float
    wall_time: str
    target: str = ""
    detail: str = ""
    skipped: bool = False


@dataclass(kw_only=True)
class FaultContext:
    launcher: LauncherProcess
    load: Load
    rng: random.Random
    num_replicas: int
    stop_s: float = 3.0
    fail_load_s: float = 2.0
    fail_load_share: float = 0.2
    recovery_timeout_s: float = 30.0
    on_fault: Callable[[Fault], None] = lambda fault: None
    stopped: set[int] = field(default_factory=set)
    """Pids under SIGSTOP right now, so an interrupted run can SIGCONT them."""


def wall_time() -> str:
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


async def _wait_until(condition: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(_POLL_S)
    return False


async def _pick_replica(ctx: FaultContext) -> tuple[str, int] | None:
    pids = await ctx.launcher.replica_pids()
    if not pids:
        return None
    replica_id = ctx.rng.choice(sorted(pids))
    return replica_id, pids[replica_id]


async def _routable_again(ctx: FaultContext, replica_id: str, old_pid: int | None) -> bool:
    if old_pid is not None:
        pid = (await ctx.launcher.replica_pids()).get(replica_id)
        if pid is None or pid == old_pid:
            return False
    return replica_id in await ctx.launcher.healthy_replicas()


def _skipped(kind: str, why: str) -> Fault:
    """A fault that could not be injected now, logged as such."""
    now = time.monotonic()
    return Fault(kind=kind, instant=now, ended=now, wall_time=wall_time(), detail=why, skipped=True)


async def kill_replica(ctx: FaultContext) -> Fault:
    picked = await _pick_replica(ctx)
    if picked is None:
        return _skipped("kill_replica", "no running replica to kill")
    replica_id, pid = picked
    stamp, instant = wall_time(), time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    back = await _wait_until(lambda: _routable_again(ctx, replica_id, pid), ctx.recovery_timeout_s)
    ended = time.monotonic()
    new_pid = (await ctx.launcher.replica_pids()).get(replica_id)
    detail = (
        f"pid {pid} killed; restarted as pid {new_pid}, "
        f"routed to again after {ended - instant:.1f} s"
        if back
        else f"pid {pid} killed; not routed to again within {ctx.recovery_timeout_s:g} s"
    )
    return Fault(
        kind="kill_replica",
        instant=instant,
        ended=ended,
        wall_time=stamp,
        target=replica_id,
        detail=detail,
    )


async def stop_replica(ctx: FaultContext) -> Fault:
    picked = await _pick_replica(ctx)
    if picked is None:
        return _skipped("stop_replica", "no running replica to stop")
    replica_id, pid = picked
    stamp, instant = wall_time(), time.monotonic()
    try:
        os.kill(pid, signal.SIGSTOP)
        ctx.stopped.add(pid)
        await asyncio.sleep(ctx.stop_s)
    except ProcessLookupError:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        ctx.stopped.discard(pid)
    resumed = time.monotonic()
    back = await _wait_until(lambda: _routable_again(ctx, replica_id, None), ctx.recovery_timeout_s)
    ended = time.monotonic()
    after = f"routed to {ended - resumed:.1f} s after SIGCONT" if back else "not routed to again"
    detail = f"pid {pid} stopped for {ctx.stop_s:g} s; {after}"
    return Fault(
        kind="stop_replica",
        instant=instant,
        ended=ended,
        wall_time=stamp,
        target=replica_id,
        detail=detail,
    )


async def restart_router(ctx: FaultContext) -> Fault:
    pid = await ctx.launcher.router_pid()
    healthy = await ctx.launcher.healthy_replicas()
    if pid is None:
        return _skipped("restart_router", "the launcher reported no router pid")
    stamp, instant = wall_time(), time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)

    async def answering() -> bool:
        new_pid = await ctx.launcher.router_pid()
        return new_pid not in (None, pid) and await ctx.launcher.router_status() is not None

    async def replicas_back() -> bool:
        return healthy <= await ctx.launcher.healthy_replicas()

    up = await _wait_until(answering, ctx.recovery_timeout_s)
    answered = time.monotonic()
    back = up and await _wait_until(replicas_back, ctx.recovery_timeout_s)
    ended = time.monotonic()
    new_pid = await ctx.launcher.router_pid()
    if not up:
        detail = f"pid {pid} killed; no router answered within {ctx.recovery_timeout_s:g} s"
    else:
        detail = f"pid {pid} killed; pid {new_pid} answered after {answered - instant:.1f} s, " + (
            f"{len(healthy)} replicas routable after {ended - instant:.1f} s"
            if back
            else f"not all {len(healthy)} replicas routable within {ctx.recovery_timeout_s:g} s"
        )
    return Fault(
        kind="restart_router",
        instant=instant,
        ended=ended,
        wall_time=stamp,
        target="router",
        detail=detail,
    )


async def fail_load(ctx: FaultContext) -> Fault:
    stamp, instant = wall_time(), time.monotonic()
    ctx.load.fail_load_share = ctx.fail_load_share
    try:
        await asyncio.sleep(ctx.fail_load_s)
    finally:
        ctx.load.fail_load_share = 0.0
    detail = f"{ctx.fail_load_share:.0%} of requests for fail-load-* ids for {ctx.fail_load_s:g} s"
    return Fault(
        kind="fail_load",
        instant=instant,
        ended=time.monotonic(),
        wall_time=stamp,
        target="fail-load-*",
        detail=detail,
    )


async def scale(ctx: FaultContext) -> Fault:
    n = ctx.num_replicas
    if n < 2:
        return _skipped("scale", "one replica: nothing to scale down")
    stamp, instant = wall_time(), time.monotonic()
    steps = []
    for count in (n - 1, n):
        began = time.monotonic()
        code, output = await ctx.launcher.apply(count, timeout_s=ctx.recovery_timeout_s * 2)
        verdict = "converged" if code == 0 else f"exit {code}: {output.strip().splitlines()[-1:]}"
        steps.append(f"apply num_replicas={count}: {verdict} in {time.monotonic() - began:.1f} s")
    return Fault(
        kind="scale",
        instant=instant,
        ended=time.monotonic(),
        wall_time=stamp,
        target=f"{n} -> {n - 1} -> {n}",
        detail="; ".join(steps),
    )


ACTIONS: dict[str, Callable[[FaultContext], Awaitable[Fault]]] = {
    "kill_replica": kill_replica,
    "stop_replica": stop_replica,
    "restart_router": restart_router,
    "fail_load": fail_load,
    "scale": scale,
}


async def run_schedule(
    ctx: FaultContext, kinds: Sequence[str], *, every_s: float, start: float, end: float
) -> list[Fault]:
    """Inject `kinds` in turn, one every `every_s` seconds between `start` and `end`."""
    faults: list[Fault] = []
    next_at = start + every_s
    turn = 0
    while next_at <= end - 1.0:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        fault = await ACTIONS[kinds[turn % len(kinds)]](ctx)
        turn += 1
        faults.append(fault)
        ctx.on_fault(fault)
        next_at = max(next_at + every_s, time.monotonic())
    return faults


def link_cut_note() -> str:
    """Why the optional fault "cut a namespace host's link" is not injected."""
    works = False
    if os.geteuid() == 0:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            probe = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=5)
            works = probe.returncode == 0
    if not works:
        return "cut_link skipped: `ip netns` is not available here (needs root and iproute2)"
    return (
        "cut_link skipped: `ip netns` works here, but `modelplex up` starts every replica in "
        "the host's network namespace, so no replica sits behind a link that could be cut"
    )
