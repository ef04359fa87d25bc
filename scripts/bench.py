"""`scripts/bench`: benchmark modelplex on a real cluster, print a table, write JSON.

Each scenario starts its own cluster (router + N replicas of
`examples.synthetic:SyntheticModels`, on ephemeral loopback ports) and drives it with the
closed-loop load generator in `_loadgen.py`, run as a separate process. Workload scenarios
send a seeded request sequence (the simulator's `router.simulation.workloads`, so the same
seed gives the same sequence as `scripts/simulate`) and compare the loads the replicas made
with the Belady bound of that sequence. The overhead scenario measures the router against a
direct connection to the replica and, with `--nginx`, against nginx as a reverse proxy.

With `--frontier`, each workload scenario is run again at every popular_model_patience of the
sweep (0, 0.5, 1, 2, 3, 5, 10 load times; a live run each, ~30 s): the table of loads / Belady
against p99 and throughput, beside the default run and Ray Serve's reference, is printed and
written to the JSON, and `--plot DIR` draws it.

This is a benchmark, not a test: targets print PASS or MISS, and the exit status is 0 either way.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from _bench_cluster import ROOT, Nginx, bench_cluster, run_loadgen
from _bench_report import (
    format_overhead,
    format_summary,
    format_workload,
    frontier_point,
    reference_point,
    summarize_overhead,
    summarize_workload,
)
from _bench_scenarios import (
    SCENARIO_ALL,
    SCENARIOS,
    RunConfig,
    scenario_config,
    targets,
)

from router.launch import LocalCluster
from router.simulation.frontier import PATIENCE_SWEEP, Frontier
from router.simulation.workloads import Popularity, WorkloadSpec, generate

_HEADER = "serve_multiplexed_model_id"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    names = [*SCENARIOS, "all"]
    parser.add_argument("--scenario", default="custom", choices=names, help="a preset (custom)")
    flags: list[tuple[str, type, str]] = [
        ("--replicas", int, "replica processes (4)"),
        ("--capacity", int, "model slots per replica (3)"),
        ("--max-ongoing", int, "max_ongoing_requests per replica (8)"),
        ("--load-s", float, "seconds per model load (0.1)"),
        ("--infer-s", float, "seconds per request once loaded (0.002)"),
        ("--models", int, "distinct models (12)"),
        ("--zipf-s", float, "Zipf exponent (1.1)"),
        ("--requests", int, "requests in the sequence (3000)"),
        ("--concurrency", int, "client connections, closed loop (16)"),
        ("--seed", int, "workload seed (0; 1 for the workload presets)"),
        ("--duration-s", float, "overhead: measured seconds per phase (5)"),
        ("--warmup-s", float, "overhead: warm-up seconds per phase (1)"),
        ("--patience", float, "router.popular_model_patience, in load times (the default)"),
        ("--max-concurrent-loads", int, "per-replica loads at once (as many as slots)"),
        ("--routers", int, "router processes sharing one port (1)"),
    ]
    for flag, kind, text in flags:
        parser.add_argument(flag, type=kind, help=text)
    parser.add_argument("--popularity", choices=["uniform", "zipf"], help="(uniform)")
    parser.add_argument(
        "--spread",
        choices=["alternate", "shared"],
        help="several routers: deal the client connections out to the routers' own URLs in\n"
        "turn (alternate, the default), or send all to the port they share (shared)",
    )
    parser.add_argument(
        "--placement-lease",
        metavar="REDIS_URL",
        help="several routers: router.placement_lease_url (e.g. redis://127.0.0.1:6379/0)",
    )
    parser.add_argument("--nginx", action="store_true", help="overhead: compare with nginx")
    parser.add_argument("--json", type=Path, help="bench-results/bench-<timestamp>.json")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNGs here")
    parser.add_argument(
        "--frontier",
        action="store_true",
        help="workload scenarios: also run the patience sweep (7 more runs, ~30 s each) and\n"
        "report loads / Belady against p99; drawn with --plot",
    )
    return parser.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"scenario", "kind"}
    return {k: v for k, v in vars(args).items() if k in fields and v is not None}


def _sequence(config: RunConfig) -> list[str]:
    spec = WorkloadSpec(
        requests=config.requests,
        models=config.models,
        popularity=Popularity(config.popularity),
        zipf_s=config.zipf_s,
        seed=config.seed,
    )
    return generate(spec).model_ids


def _target(url: str | list[str]) -> dict[str, Any]:
    """The load generator's target: one URL, or several that its connections take in turn."""
    urls = [url] if isinstance(url, str) else url
    parts = [urlsplit(u) for u in urls]
    spec = {"host": parts[0].hostname, "port": parts[0].port, "header": _HEADER}
    if len(urls) > 1:
        spec["targets"] = [[p.hostname, p.port] for p in parts]
    return spec


def _router_target(cluster: LocalCluster, config: RunConfig) -> str | list[str]:
    """Where the load goes to reach the routers: every router's own URL in turn, or the port
    they share (the only one with a single router)."""
    if config.routers > 1 and config.spread == "alternate":
        return cluster.router_urls
    return cluster.url


def run_workload(config: RunConfig) -> dict[str, Any]:
    sequence = _sequence(config)
    with bench_cluster(config) as cluster:
        spec = _target(_router_target(cluster, config)) | {
            "mode": "sequence",
            "models": sequence,
            "concurrency": config.concurrency,
        }
        raw = run_loadgen(spec, watch=cluster.pids())
        loads = cluster.load_counts()
        router_counters = cluster.status()["router"]["counters"]
    summary = summarize_workload(config, sequence, raw, loads)
    summary["router_counters"] = router_counters
    return {"summary": summary, "raw": raw}


def run_frontier(config: RunConfig, measured: dict[str, Any]) -> Frontier:
    """The patience sweep on `config`'s workload, the default point (`measured`, the run just
    made, unless it set a patience) and Ray Serve's reference point."""
    frontier = Frontier()
    for patience in PATIENCE_SWEEP:
        print(f"bench: {config.scenario}, patience {patience:g} ...", file=sys.stderr, flush=True)
        summary = run_workload(dataclasses.replace(config, patience=patience))["summary"]
        frontier.sweep.append(frontier_point("patience sweep", summary, patience))
    if config.patience is not None:
        print(f"bench: {config.scenario}, default patience ...", file=sys.stderr, flush=True)
        measured = run_workload(dataclasses.replace(config, patience=None))["summary"]
    frontier.default = frontier_point("default", measured, None)
    frontier.ray = reference_point(config)
    return frontier


def run_overhead(config: RunConfig, *, nginx: bool) -> dict[str, Any]:
    """Closed-loop phases of `duration_s` each, one after another on the same replica: at
    `concurrency` (throughput) and at 1 (latency), directly, through the router and, with
    `nginx`, through nginx; plus nginx answering by itself, the load generator's ceiling."""
    timing = {"mode": "duration", "warmup_s": config.warmup_s, "duration_s": config.duration_s}
    phases: dict[str, dict[str, Any]] = {}
    urls: dict[str, tuple[str | list[str], str]]
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(bench_cluster(config))
        replica_url = next(iter(cluster.replica_urls().values()))
        watch = cluster.pids()
        urls = {"direct": (replica_url, "/"), "router": (_router_target(cluster, config), "/")}
        if nginx:
            proxy = stack.enter_context(Nginx(urlsplit(replica_url).netloc))
            urls["nginx"] = (proxy.url, "/")
            watch |= proxy.pids()
        _send_one(cluster.url)  # the model is loaded before anything is measured
        plan = [(name, config.concurrency) for name in urls]
        if nginx:
            urls["nginx_return200"] = (proxy.url, "/-/nginx-ok")
            plan.append(("nginx_return200", config.concurrency))
        plan += [(name, 1) for name in ("direct", "router", "nginx") if name in urls]
        for name, concurrency in plan:
            url, path = urls[name]
            spec = _target(url) | timing | {"path": path, "models": ["m0"]}
            spec["concurrency"] = concurrency
            phases[f"{name}_c{concurrency}"] = run_loadgen(spec, watch=watch)
    return {"summary": summarize_overhead(phases, config.concurrency), "raw": phases}


def _send_one(url: str) -> None:
    import urllib.request

    request = urllib.request.Request(url + "/", headers={_HEADER: "m0"})
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def _default_json() -> Path:
    return ROOT / "bench-results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the `with` blocks: every child is stopped


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    names = list(SCENARIO_ALL) if args.scenario == "all" else [args.scenario]
    overrides = _overrides(args)
    runs: list[dict[str, Any]] = []
    frontiers: dict[str, Frontier] = {}
    for name in names:
        config = scenario_config(name, overrides)
        load_before = os.getloadavg()[0]
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)
        if load_before > 0.5:
            print(
                f"bench: the machine is busy (load average {load_before:.2f}) before {name}; "
                "its numbers will be noisy",
                file=sys.stderr,
            )
        if config.kind == "overhead":
            result = run_overhead(config, nginx=args.nginx)
        else:
            result = run_workload(config)
        found = targets(config, result["summary"])
        fmt = format_overhead if config.kind == "overhead" else format_workload
        print(fmt(config, result["summary"], found) + "\n", flush=True)
        run: dict[str, Any] = {
            "scenario": name,
            "kind": config.kind,
            "config": dataclasses.asdict(config),
            "summary": result["summary"],
            "targets": [t.as_dict() for t in found],
            "load_average_before": load_before,
            "raw": result["raw"],
        }
        if args.frontier and config.kind == "workload":
            frontiers[name] = run_frontier(config, result["summary"])
            print(f"== {name}: {frontiers[name].table()}\n", flush=True)
            run["frontier"] = frontiers[name].to_dict()
        runs.append(run)
    if len(runs) > 1:
        print(format_summary(runs) + "\n")
    path = args.json or _default_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": [{k: v for k, v in run.items() if k != "raw"} for run in runs],
    }
    path.write_text(json.dumps(_finite(document), indent=2, allow_nan=False) + "\n")
    print(f"bench: results written to {path}")
    if args.plot:
        from _bench_plot import plot_runs

        for png in plot_runs(runs, args.plot, frontiers=frontiers):
            print(f"bench: plot written to {png}")
    return 0


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None, so that the JSON is standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
