"""The benchmark's numbers: summaries of raw load-generator records, and the printed tables.

`summarize_workload` turns one sequence run (per-request start, latency, status, replica, cold
flag, plus the replicas' load counters) into the reported figures: the three axes a placement
is judged on — model loads against the Belady bound of the sequence, throughput, and the
latency tail (p50, p99, p99.9 and the worst model's p99, from `router.simulation.tails`, the
simulator's definitions) — and the rest. `summarize_overhead` does the same for the
side-by-side overhead phases. The `format_*` functions render them for a terminal.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from _bench_scenarios import (
    OVERHEAD_REFERENCE,
    RAY_REFERENCE,
    Reference,
    RunConfig,
    Target,
    reference_applies,
)

from router.simulation.belady import belady_misses
from router.simulation.frontier import FrontierPoint
from router.simulation.tails import MIN_MODEL_REQUESTS, percentile, tails

__all__ = [
    "format_overhead",
    "format_summary",
    "format_workload",
    "frontier_point",
    "reference_point",
    "summarize_overhead",
    "summarize_workload",
]


def _latency_block(latencies_ms: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    return {
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "p999": percentile(ordered, 0.999),
        "max": ordered[-1] if ordered else math.nan,
    }


def summarize_workload(
    config: RunConfig, sequence: list[str], raw: dict[str, Any], loads: dict[str, int]
) -> dict[str, Any]:
    """The reported figures of one workload run.

    Throughput counts the requests answered with success (2xx) per wall second of the run;
    the latencies are those of every answered request (an error answer's too), from the
    request written to the last byte of its answer, queueing in the router included.
    """
    start_ms = [us / 1000 for us in raw["start_us"]]
    latency_ms = [us / 1000 for us in raw["latency_us"]]
    end_ms = [s + lat for s, lat in zip(start_ms, latency_ms, strict=True)]
    status, cold = raw["status"], raw["cold"]
    answered = [i for i, code in enumerate(status) if code != 0]
    succeeded = sum(1 for i in answered if 200 <= status[i] < 300)
    first_served: dict[str, float] = {}
    for i in answered:
        model = sequence[i]
        first_served[model] = min(first_served.get(model, math.inf), end_ms[i])
    warm_at = max(first_served.values(), default=math.inf)
    last_cold = max((end_ms[i] for i in answered if cold[i]), default=0.0)
    after_warm = [latency_ms[i] for i in answered if start_ms[i] >= warm_at]
    after_last = [latency_ms[i] for i in answered if start_ms[i] >= last_cold]
    total_loads = sum(loads.values())
    belady = belady_misses(sequence, config.replicas * config.capacity)
    elapsed_s = max(raw["elapsed_s"], 1e-9)
    answered_ms = [latency_ms[i] for i in answered]
    tail = tails(answered_ms, [sequence[i] for i in answered])
    worst = tail.worst_model
    return {
        "requests": len(sequence),
        "answered": len(answered),
        "succeeded": succeeded,
        "elapsed_s": elapsed_s,
        "throughput_rps": succeeded / elapsed_s,
        "p50_ms": tail.p50,
        "p99_ms": tail.p99,
        "p999_ms": tail.p999,
        "worst_model_p99_ms": None if worst is None else worst.p99,
        "worst_model": None if worst is None else worst.model,
        "worst_model_requests": 0 if worst is None else worst.requests,
        "min_model_requests": tail.min_model_requests,
        "latency_ms": _latency_block(answered_ms),
        "p99_after_warmup_ms": percentile(sorted(after_warm), 0.99),
        "requests_after_warmup": len(after_warm),
        "p99_after_last_load_ms": percentile(sorted(after_last), 0.99),
        "requests_after_last_load": len(after_last),
        "loads": total_loads,
        "loads_per_replica": loads,
        "cold_answers": sum(cold),
        "distinct_models": len(set(sequence)),
        "belady_loads": belady,
        "loads_over_belady": total_loads / belady if belady else math.nan,
        "requests_per_replica": dict(sorted(Counter(raw["replica"][i] for i in answered).items())),
        "errors_by_status": _errors(status),
        "cpu_util": raw.get("cpu_util", {}),
    }


def frontier_point(label: str, summary: dict[str, Any], patience: float | None) -> FrontierPoint:
    """A workload run's place on the loads-versus-p99 frontier."""
    return FrontierPoint(
        label=label,
        loads=summary["loads"],
        loads_over_belady=_finite_or_none(summary["loads_over_belady"]),
        throughput_rps=summary["throughput_rps"],
        p99_ms=_finite_or_none(summary["p99_ms"]),
        worst_model_p99_ms=summary["worst_model_p99_ms"],
        patience=patience,
    )


def reference_point(config: RunConfig) -> FrontierPoint | None:
    """Ray Serve's figures for the scenario as a frontier point, if it has them."""
    reference = RAY_REFERENCE.get(config.scenario)
    if reference is None:
        return None
    suffix = " (reference)" if reference_applies(config) else " (preset's settings)"
    return FrontierPoint(
        label=reference.who + suffix,
        loads=reference.loads,
        loads_over_belady=reference.loads_over_belady,
        throughput_rps=reference.throughput_rps,
        p99_ms=reference.p99_ms,
    )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _errors(status: Sequence[int] | dict[str, int]) -> dict[str, int]:
    counts = (
        Counter({int(k): v for k, v in status.items()})
        if isinstance(status, dict)
        else Counter(status)
    )
    return {
        ("connection" if code == 0 else str(code)): n for code, n in counts.items() if code != 200
    }


def summarize_overhead(phases: dict[str, dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Per phase throughput, latency and CPU use, and the router's cost against the others."""
    out: dict[str, Any] = {"phases": {}}
    for name, raw in phases.items():
        out["phases"][name] = {
            "throughput_rps": raw["throughput_rps"],
            "latency_ms": raw["latency_ms"],
            "errors_by_status": _errors(raw["status"]),
            "cpu_util": raw["cpu_util"],
        }

    def rps(name: str) -> float:
        return float(phases[name]["throughput_rps"]) if name in phases else math.nan

    def p50(name: str) -> float:
        return float(phases[name]["latency_ms"]["p50"]) if name in phases else math.nan

    out["router_added_median_ms"] = p50("router_c1") - p50("direct_c1")
    out["nginx_added_median_ms"] = p50("nginx_c1") - p50("direct_c1")
    out["router_over_nginx_rps"] = rps(f"router_c{concurrency}") / rps(f"nginx_c{concurrency}")
    out["router_over_direct_rps"] = rps(f"router_c{concurrency}") / rps(f"direct_c{concurrency}")
    out["client_ceiling_rps"] = rps(f"nginx_return200_c{concurrency}")
    return out


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _target_lines(found: list[Target]) -> list[str]:
    return [
        f"  target  {t.name:<28} {_fmt(t.measured, 2):>10}  (target {t.as_dict()['target']})"
        f"  {t.verdict}"
        for t in found
    ]


def _axes_header() -> str:
    return (
        f"  {'':<24}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
        f"{'worst p99 ms':>13} {'(model)':<10}{'loads':>7}{'x Belady':>9}"
    )


def _axes_row(
    label: str,
    *,
    throughput_rps: float | None,
    p50_ms: float | None,
    p99_ms: float | None,
    p999_ms: float | None,
    worst_ms: float | None,
    worst_model: str | None,
    loads: int | None,
    loads_over_belady: float | None,
) -> str:
    named = "" if worst_model is None else f"({worst_model})"
    return (
        f"  {label:<24}{_fmt(throughput_rps):>8}{_fmt(p50_ms):>9}{_fmt(p99_ms):>9}"
        f"{_fmt(p999_ms):>10}{_fmt(worst_ms):>13} {named:<10}{_fmt(loads):>7}"
        f"{_fmt(loads_over_belady, 2):>9}"
    )


def _reference_row(reference: Reference, *, applies: bool) -> str:
    label = f"{reference.who}{'' if applies else ' *'}"
    return _axes_row(
        label,
        throughput_rps=reference.throughput_rps,
        p50_ms=None,
        p99_ms=reference.p99_ms,
        p999_ms=None,
        worst_ms=None,
        worst_model=None,
        loads=reference.loads,
        loads_over_belady=reference.loads_over_belady,
    )


def format_workload(config: RunConfig, summary: dict[str, Any], found: list[Target]) -> str:
    lat = summary["latency_ms"]
    shape = (
        f"{config.replicas} replicas x {config.capacity} slots, {config.models} models "
        f"{config.popularity}{f' s={config.zipf_s:g}' if config.popularity == 'zipf' else ''}, "
        f"{config.requests} requests, load {config.load_s * 1000:g} ms, "
        f"infer {config.infer_s * 1000:g} ms, c={config.concurrency}, seed {config.seed}"
    )
    per_replica = ", ".join(f"{k}={v}" for k, v in summary["requests_per_replica"].items())
    lines = [f"== {config.scenario}: {shape}", _axes_header()]
    reference = RAY_REFERENCE.get(config.scenario)
    applies = reference_applies(config)
    if reference is not None:
        lines.append(_reference_row(reference, applies=applies))
    lines.append(
        _axes_row(
            "modelplex",
            throughput_rps=summary["throughput_rps"],
            p50_ms=summary["p50_ms"],
            p99_ms=summary["p99_ms"],
            p999_ms=summary["p999_ms"],
            worst_ms=summary["worst_model_p99_ms"],
            worst_model=summary["worst_model"],
            loads=summary["loads"],
            loads_over_belady=summary["loads_over_belady"],
        )
    )
    lines.append(
        "  req/s: answered with 2xx per wall second; latencies end to end, router queueing "
        "included; worst p99:"
    )
    lines.append(
        "  the largest per-model p99 among models with "
        f">= {summary.get('min_model_requests', MIN_MODEL_REQUESTS)} answered requests"
    )
    if reference is not None and not applies:
        lines.append("  * measured with the preset's settings, which this run changed")
    lines += [
        f"  throughput            {_fmt(summary['throughput_rps'])} req/s "
        f"({summary['succeeded']} of {summary['requests']} answered with 2xx in "
        f"{summary['elapsed_s']:.2f} s)",
        f"  latency ms            p90 {_fmt(lat['p90'], 2)}  max {_fmt(lat['max'], 2)}",
        f"  p99 after warm-up     {_fmt(summary['p99_after_warmup_ms'], 2)} ms "
        f"({summary['requests_after_warmup']} requests sent after every model was served once)",
        f"  p99 after last load   {_fmt(summary['p99_after_last_load_ms'], 2)} ms "
        f"({summary['requests_after_last_load']} requests)",
        f"  model loads           {summary['loads']} (cold answers {summary['cold_answers']}, "
        f"distinct models {summary['distinct_models']})",
        f"  Belady bound          {summary['belady_loads']} loads",
        f"  requests per replica  {per_replica}",
        f"  errors by status      {summary['errors_by_status'] or 'none'}",
        f"  cpu (cores)           {_cpu(summary['cpu_util'])}",
    ]
    return "\n".join(lines + _target_lines(found))


def _cpu(util: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in util.items()) or "n/a"


def format_overhead(config: RunConfig, summary: dict[str, Any], found: list[Target]) -> str:
    lines = [
        f"== {config.scenario}: 1 replica, 1 model, load 0, infer 0; "
        f"{config.duration_s:g} s per phase after {config.warmup_s:g} s warm-up",
        f"  {'phase':<22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  errors  cpu (cores)",
    ]
    for name, phase in summary["phases"].items():
        lat = phase["latency_ms"]
        lines.append(
            f"  {name:<22} {_fmt(phase['throughput_rps'], 0):>9} {_fmt(lat['p50'], 3):>8} "
            f"{_fmt(lat['p99'], 3):>8}  {phase['errors_by_status'] or '-'}  "
            f"{_cpu(phase['cpu_util'])}"
        )
    lines += [
        f"  router added median   {_fmt(summary['router_added_median_ms'], 3)} ms "
        f"(nginx added {_fmt(summary['nginx_added_median_ms'], 3)} ms)",
        f"  router / nginx req/s  {_fmt(summary['router_over_nginx_rps'], 2)}  "
        f"(router / direct {_fmt(summary['router_over_direct_rps'], 2)}; client ceiling "
        f"{_fmt(summary['client_ceiling_rps'], 0)} req/s against nginx `return 200`)",
        f"  reference             {OVERHEAD_REFERENCE}",
    ]
    return "\n".join(lines + _target_lines(found))


def format_summary(runs: list[dict[str, Any]]) -> str:
    """One line per scenario and target, for the end of a multi-scenario run."""
    lines = ["== summary", f"  {'scenario':<12} {'target':<28} {'measured':>10}  {'goal':<12} word"]
    for run in runs:
        for t in run["targets"]:
            lines.append(
                f"  {run['scenario']:<12} {t['name']:<28} {_fmt(t['measured'], 2):>10}  "
                f"{t['target']:<12} {t['verdict']}"
            )
        if not run["targets"]:
            lines.append(f"  {run['scenario']:<12} (no targets)")
    return "\n".join(lines)
