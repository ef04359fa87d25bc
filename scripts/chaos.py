"""The chaos benchmark: steady load through a `modelplex up` cluster while faults are injected.

    scripts/chaos [--duration 60] [--replicas 3] [--seed 1] [--fault-every 10] [--json FILE]

Starts the launcher (`python -m router.launch up`) of `examples.synthetic:SyntheticModels` in a
temporary directory on a free port, runs closed-loop clients (`_chaos_load`) for a warm-up and
then `--duration` seconds while `_chaos_faults` injects replica kills, replica stops, router
restarts, fail-load requests and scale-down/up applies in turn, samples the router (RSS, fds,
`/-/status` counters) every second, and prints the figures (`_chaos_report`). Exit status 0
whenever the run completed, whatever failed in it; 1 when the cluster could not be started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from _chaos_cluster import ClusterSpec, LauncherProcess, LaunchFailed, ProcessSample, process_sample
from _chaos_faults import FAULT_KINDS, Fault, FaultContext, link_cut_note, run_schedule
from _chaos_load import Load, Mix
from _chaos_report import format_table, records, summarize

SAMPLE_INTERVAL_S = 1.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/chaos",
        description="Load a modelplex cluster under `modelplex up` while injecting faults; "
        "prints what succeeded and what failed, by kind.",
    )
    arg = parser.add_argument
    arg("--duration", type=float, default=60.0, metavar="S", help="measured seconds (60)")
    arg("--warmup", type=float, default=3.0, metavar="S", help="unmeasured load first (3)")
    arg("--replicas", type=int, default=3, help="replicas (3)")
    arg("--seed", type=int, default=1, help="seed of the request mix and the victims (1)")
    arg("--fault-every", type=float, default=10.0, metavar="S", help="seconds between faults")
    arg(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"the faults to cycle through, in order (default: {','.join(FAULT_KINDS)})",
    )
    arg("--stop-s", type=float, default=3.0, metavar="S", help="SIGSTOP length (3)")
    arg("--fail-load-s", type=float, default=2.0, metavar="S", help="fail-load burst length (2)")
    arg("--concurrency", type=int, default=24, help="concurrent keep-alive clients (24)")
    arg("--deadline", type=float, default=10.0, metavar="S", help="client deadline per request")
    arg("--think-ms", type=float, default=10.0, help="mean pause between a client's requests")
    arg("--failure-pause-ms", type=float, default=100.0, help="a client's pause after a failure")
    arg("--models", type=int, default=8, help="model ids in the mix (8)")
    arg("--capacity", type=int, default=3, help="models per replica (3)")
    arg("--load-s", type=float, default=0.1, help="synthetic load time (0.1)")
    arg("--infer-s", type=float, default=0.005, help="synthetic inference time (0.005)")
    arg("--port", type=int, default=0, help="the router's port (0: a free one)")
    arg("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    arg("--records", type=Path, metavar="FILE", help="write every request as a JSON line")
    arg("--keep", action="store_true", help="keep the run's directory (config, launcher log)")
    return parser


class RouterSampler:
    """Every second: the router's RSS and fds, and its counters per lifetime (`started_at`)."""

    def __init__(self, launcher: LauncherProcess) -> None:
        self.launcher = launcher
        self.samples: list[ProcessSample] = []
        self.lifetimes: dict[float, dict[str, int]] = {}

    async def sample(self) -> None:
        pid = await self.launcher.router_pid()
        found = process_sample(pid) if pid is not None else None
        if found is not None:
            self.samples.append(found)
        status = await self.launcher.router_status()
        router = (status or {}).get("router") or {}
        if "started_at" in router:
            seen = self.lifetimes.setdefault(float(router["started_at"]), {})
            for key, value in (router.get("counters") or {}).items():
                seen[key] = max(seen.get(key, 0), int(value))

    async def run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(SAMPLE_INTERVAL_S)


def _print_fault(measured_from: float) -> Any:
    def show(fault: Fault) -> None:
        at = fault.instant - measured_from
        print(f"  [{at:6.1f} s] {fault.kind} {fault.target}: {fault.detail}", flush=True)

    return show


async def run(args: argparse.Namespace) -> dict[str, Any]:
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown:
        raise SystemExit(f"scripts/chaos: unknown faults {unknown}; known: {FAULT_KINDS}")
    spec = ClusterSpec(
        replicas=args.replicas,
        port=args.port,
        capacity=args.capacity,
        load_s=args.load_s,
        infer_s=args.infer_s,
    )
    launcher = LauncherProcess(spec, keep=args.keep)
    notes = [link_cut_note()]
    print(f"note: {notes[0]}", flush=True)
    load: Load | None = None
    ctx: FaultContext | None = None
    try:
        await launcher.start()
        print(f"modelplex up serves {launcher.url} with {args.replicas} replicas ({launcher.dir})")
        mix = Mix(models=tuple(f"model-{i}" for i in range(args.models)))
        load = Load(
            launcher.url,
            mix,
            concurrency=args.concurrency,
            deadline_s=args.deadline,
            think_s=args.think_ms / 1000,
            failure_pause_s=args.failure_pause_ms / 1000,
            seed=args.seed,
        )
        load.start()
        await asyncio.sleep(args.warmup)
        sampler = RouterSampler(launcher)
        measured_from = time.monotonic()
        end = measured_from + args.duration
        sampling = asyncio.create_task(sampler.run())
        ctx = FaultContext(
            launcher=launcher,
            load=load,
            rng=random.Random(args.seed),
            num_replicas=args.replicas,
            stop_s=args.stop_s,
            fail_load_s=args.fail_load_s,
            on_fault=_print_fault(measured_from),
        )
        print(f"measuring {args.duration:g} s, a fault every {args.fault_every:g} s:", flush=True)
        schedule = asyncio.create_task(
            run_schedule(ctx, kinds, every_s=args.fault_every, start=measured_from, end=end)
        )
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        duration_s = time.monotonic() - measured_from
        await load.stop()
        drain_s = time.monotonic() - measured_from - duration_s
        faults = await schedule
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        await sampler.sample()
        config = {
            key: getattr(args, key)
            for key in (
                "replicas",
                "seed",
                "fault_every",
                "stop_s",
                "concurrency",
                "deadline",
                "think_ms",
                "failure_pause_ms",
            )
        } | {"faults": kinds, "models": args.models, "capacity": args.capacity}
        config |= {"warmup_s": args.warmup, "load_s": args.load_s, "infer_s": args.infer_s}
        notes.append(
            f"the clients stopped sending after {duration_s:.1f} s; the requests in flight "
            f"then took {drain_s:.1f} s more to end"
        )
        if args.records is not None:
            lines = records(load.outcomes, measured_from=measured_from)
            args.records.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return summarize(
            load.outcomes,
            faults,
            measured_from=measured_from,
            duration_s=duration_s,
            lifetimes=sampler.lifetimes,
            samples=sampler.samples,
            notes=notes,
            config=config,
        )
    finally:
        if ctx is not None:
            for pid in list(ctx.stopped):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        if load is not None:
            await load.stop()
        await launcher.stop()


def main() -> int:
    args = _parser().parse_args()
    try:
        doc = asyncio.run(run(args))
    except LaunchFailed as error:
        print(f"scripts/chaos: {error}", file=sys.stderr)
        return 1
    print()
    print(format_table(doc))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
