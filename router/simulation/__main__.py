"""`scripts/simulate`: compare placement policies on simulated replicas, with synthetic time.

The router's real `ClusterView` and `ModelplexPolicy` (policy "modelplex"; "affinity" is
policy v1, `AffinityPolicy`, on request) run against simulated replicas that keep
`replica/_cache.py`'s rules, next to the baselines of `router.simulation.baselines`; every
policy sees the same request sequence (same seed). It
prints a table (loads, loads / Belady bound, answered requests per simulated second, p50 /
p99 / p99.9 latency end to end, the worst model's p99 and which model, p99 of the second half,
hit ratio, per-replica imbalance, most copies of one model, refused + timed-out requests,
decisions per wall second inside choose + dispatch, simulated requests per wall second) and
writes the same as JSON.

The acceptance checks of issue 4, one command each:

    scripts/simulate --preset zipf0.8 --json zipf0.8.json
    scripts/simulate --preset zipf1.1 --json zipf1.1.json
    scripts/simulate --preset uniform-fit
    scripts/simulate --preset hot-model
    scripts/simulate --preset scale --json scale.json      # minutes; --policies to narrow

Other examples:

    scripts/simulate --preset zipf1.1 --plot charts/    # + loads-vs-capacity, p99-vs-load and
                                                        #   loads-vs-p99 frontier PNGs
    scripts/simulate --popularity zipf --zipf-s 1.1 --shift-every 10000 --bursts
    scripts/simulate --rate 1200 --load-dist lognormal --infer-dist exp --policies modelplex,ray

A flag given with a preset overrides the preset's value. Set PYTHONHASHSEED to compare runs
across processes (`scripts/simulate` sets it to 0 unless it is set): the view's holder index
is a set, whose order may break ties.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from router.simulation.engine import EngineConfig
from router.simulation.plots import (
    PlotUnavailable,
    plotting_available,
    write_charts,
    write_frontier,
)
from router.simulation.presets import PRESETS
from router.simulation.runner import (
    EXTRA_POLICIES,
    POLICY_NAMES,
    Scenario,
    run,
    sweep_capacity,
    sweep_load,
    sweep_patience,
)
from router.simulation.workloads import Arrival, Dist, DistKind, Popularity, WorkloadSpec

_DEFAULTS: dict[str, Any] = {
    "replicas": 8,
    "capacity": 4,
    "max_ongoing": 8,
    "max_concurrent_loads": None,
    "load_s": 1.0,
    "load_dist": "const",
    "infer_s": 0.02,
    "infer_dist": "const",
    "dist_sigma": 0.5,
    "concurrency": 32,
    "rate": None,
    "popularity": "zipf",
    "zipf_s": 1.1,
    "models": 1000,
    "shift_every": 0,
    "bursts": False,
    "burst_every": 5000,
    "burst_length": 500,
    "burst_share": 0.5,
    "requests": 50_000,
    "seed": 0,
    "policies": ",".join(POLICY_NAMES),
    "report_delay_ms": 2.0,
    "routers": 1,
    "heartbeat_s": 1.0,
    "max_queued": 1000,
    "queue_timeout_s": 30.0,
    "retry_after_s": 1.0,
    "ray_matching_timeout_s": 1.0,
    "ray_model_ids_delay_ms": 100.0,
    "measure_memory": False,
    "sweep_capacities": None,
    "sweep_load_factors": "0.25,0.5,1,2,4",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/simulate",
        description="Discrete-event simulation of modelplex placement against baselines.",
        epilog="Presets: " + ", ".join(PRESETS) + ". Defaults: " + _defaults_text(),
    )
    add = p.add_argument
    add("--preset", choices=sorted(PRESETS))
    add("--replicas", type=int)
    add("--capacity", type=int, help="model slots per replica")
    add("--max-ongoing", type=int, help="max_ongoing_requests per replica")
    add("--max-concurrent-loads", type=int, help="loads a replica runs at once (as many as slots)")
    add("--load-s", type=float, help="mean model load time, seconds")
    add("--load-dist", choices=[k.value for k in DistKind])
    add("--infer-s", type=float, help="mean inference time, seconds")
    add("--infer-dist", choices=[k.value for k in DistKind])
    add("--dist-sigma", type=float, help="lognormal shape for both distributions")
    add("--concurrency", type=int, help="closed loop: clients with one request each")
    add("--rate", type=float, help="open loop: Poisson arrivals per second (replaces closed)")
    add("--popularity", choices=[k.value for k in Popularity])
    add("--zipf-s", type=float)
    add("--models", type=int)
    add("--shift-every", type=int, help="re-permute popularity ranks every N requests")
    add("--bursts", action="store_true", default=None, help="on/off bursts of a cold model")
    add("--burst-every", type=int, help="requests from one burst to the next")
    add("--burst-length", type=int, help="requests a burst lasts")
    add("--burst-share", type=float, help="share of the requests in a burst for its model")
    add("--requests", type=int)
    add("--seed", type=int)
    add(
        "--policies",
        help=f"comma-separated, of {','.join(POLICY_NAMES + EXTRA_POLICIES)} (affinity: policy v1)",
    )
    add("--report-delay-ms", type=float, help="cache change to snapshot applied in the view")
    add("--routers", type=int, help="routers, each with its own view; requests alternate")
    add("--heartbeat-s", type=float)
    add("--max-queued", type=int, help="the router's queue bound")
    add("--queue-timeout-s", type=float)
    add("--retry-after-s", type=float, help="closed loop: a client's pause after a 503")
    add("--ray-matching-timeout-s", type=float, help="Ray's multiplexed matching timeout")
    add("--ray-model-ids-delay-ms", type=float, help="report to Ray's router knowing model ids")
    add("--measure-memory", action="store_true", default=None, help="size of the view")
    add("--json", type=Path, help="write the report as JSON here")
    add(
        "--plot",
        type=Path,
        help="run the sweeps (capacity, offered load, patience frontier) and write PNG charts "
        "into this directory",
    )
    add("--sweep-capacities", help="per-replica capacities for --plot (default c/4..4c)")
    add("--sweep-load-factors", help="offered-load multipliers for --plot")
    return p


def _defaults_text() -> str:
    return ", ".join(f"{k.replace('_', '-')}={v}" for k, v in _DEFAULTS.items() if v is not None)


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    preset = PRESETS.get(args.preset, {}) if args.preset else {}
    options = dict(_DEFAULTS)
    options.update(preset)
    for key in _DEFAULTS:
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    return options


def scenario_from(options: dict[str, Any]) -> Scenario:
    sigma = options["dist_sigma"]
    rate = options["rate"]
    engine = EngineConfig(
        replicas=options["replicas"],
        capacity=options["capacity"],
        max_ongoing_requests=options["max_ongoing"],
        max_concurrent_loads=options["max_concurrent_loads"],
        load=Dist(DistKind(options["load_dist"]), options["load_s"], sigma),
        concurrency=options["concurrency"],
        report_delay_s=options["report_delay_ms"] / 1000,
        heartbeat_interval_s=options["heartbeat_s"],
        max_queued=options["max_queued"],
        queue_timeout_s=options["queue_timeout_s"],
        retry_after_s=options["retry_after_s"],
        seed=options["seed"],
        routers=options["routers"],
    )
    workload = WorkloadSpec(
        requests=options["requests"],
        models=options["models"],
        popularity=Popularity(options["popularity"]),
        zipf_s=options["zipf_s"],
        shift_every=options["shift_every"],
        bursts=options["bursts"],
        burst_every=options["burst_every"],
        burst_length=options["burst_length"],
        burst_share=options["burst_share"],
        arrival=Arrival.CLOSED if rate is None else Arrival.POISSON,
        rate=rate or 0.0,
        infer=Dist(DistKind(options["infer_dist"]), options["infer_s"], sigma),
        seed=options["seed"],
    )
    return Scenario(
        engine=engine,
        workload=workload,
        policies=tuple(p.strip() for p in options["policies"].split(",") if p.strip()),
        ray_matching_timeout_s=options["ray_matching_timeout_s"],
        ray_model_ids_delay_s=options["ray_model_ids_delay_ms"] / 1000,
        measure_memory=options["measure_memory"],
    )


def _workload_title(scenario: Scenario) -> str:
    engine, workload = scenario.engine, scenario.workload
    shape = workload.popularity.value
    if workload.popularity.value == "zipf":
        shape += f" {workload.zipf_s:g}"
    return (
        f"{workload.models} models {shape}, {engine.replicas} x {engine.capacity} slots, "
        f"seed {engine.seed}"
    )


def _progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.plot is not None and not plotting_available():
        print(
            "error: --plot needs matplotlib, which is not installed; "
            "install it with: pip install -e '.[plot]'",
            file=sys.stderr,
        )
        return 2
    options = _resolve(args)
    try:
        scenario = scenario_from(options)
        report = run(scenario, progress=_progress)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.plot is not None:
        capacity = scenario.engine.capacity
        wanted = options["sweep_capacities"]
        capacities = (
            [int(c) for c in wanted.split(",")]
            if wanted
            else sorted(
                {max(1, capacity // 4), max(1, capacity // 2), capacity, 2 * capacity, 4 * capacity}
            )
        )
        factors = [float(f) for f in options["sweep_load_factors"].split(",")]
        report.sweeps["capacity"] = sweep_capacity(scenario, capacities, progress=_progress)
        report.sweeps["load"] = sweep_load(scenario, factors, progress=_progress)
        frontier = sweep_patience(scenario, known=report.policies, progress=_progress)
        report.sweeps["frontier"] = frontier.to_dict()
        try:
            for path in write_charts(
                args.plot, capacity=report.sweeps["capacity"], load=report.sweeps["load"]
            ):
                _progress(f"wrote {path}")
            path = write_frontier(
                args.plot / "loads_vs_p99_frontier.png",
                frontier,
                title=f"Loads vs p99: {_workload_title(scenario)}",
            )
            _progress(f"wrote {path}")
        except PlotUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(report.table() + "\n\n" + frontier.table())
    else:
        print(report.table())
    if args.json is not None:
        args.json.write_text(report.to_json() + "\n")
        _progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
