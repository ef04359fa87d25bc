"""The benchmark's pictures (`--plot DIR`): a latency CDF per scenario and, for workload runs,
model loads over time (cumulative cold answers against the request index) and, after
`--frontier`, the loads-versus-p99 frontier (drawn by the simulator's
`router.simulation.plots.write_frontier`). matplotlib is optional (`pip install -e '.[plot]'`);
without it `plot_runs` says so and draws nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from router.simulation.frontier import Frontier

__all__ = ["plot_runs"]


def plot_runs(
    runs: list[dict[str, Any]],
    directory: Path,
    *,
    frontiers: Mapping[str, Frontier] | None = None,
) -> list[Path]:
    """Write the PNGs for `runs` (each with its `scenario` and `raw` records) into `directory`,
    and one per frontier of `frontiers` (by scenario)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: --plot needs matplotlib: .venv/bin/pip install -e '.[plot]'; no plots drawn")
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for run in runs:
        name, raw = run["scenario"], run["raw"]
        figure, axes = plt.subplots(figsize=(7, 4.5))
        if run["kind"] == "workload":
            latencies = sorted(us / 1000 for us in raw["latency_us"])
            fractions = [(i + 1) / len(latencies) for i in range(len(latencies))]
            axes.plot(latencies, fractions, label=name)
        else:
            for phase, result in raw.items():
                points = result.get("cdf_ms") or []
                axes.plot(points, [i / 200 for i in range(len(points))], label=phase)
        axes.set_xscale("log")
        axes.set_xlabel("latency (ms, log scale)")
        axes.set_ylabel("fraction of requests")
        axes.set_title(f"{name}: latency CDF")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(loc="lower right", fontsize="small")
        written.append(_save(figure, directory / f"{name}-latency-cdf.png"))
        plt.close(figure)
        if run["kind"] != "workload":
            continue
        figure, axes = plt.subplots(figsize=(7, 4.5))
        cumulative = list(itertools.accumulate(raw["cold"]))
        axes.plot(range(1, len(cumulative) + 1), cumulative, label="cold answers (cumulative)")
        summary = run["summary"]
        axes.axhline(summary["belady_loads"], linestyle="--", color="gray", label="Belady bound")
        axes.axhline(summary["loads"], linestyle=":", color="red", label="model loads (metrics)")
        axes.set_xlabel("request index")
        axes.set_ylabel("loads")
        axes.set_title(f"{name}: model loads over the run")
        axes.grid(True, alpha=0.3)
        axes.legend(loc="upper left", fontsize="small")
        written.append(_save(figure, directory / f"{name}-loads.png"))
        plt.close(figure)
    if frontiers:
        from router.simulation.plots import write_frontier

        for name, frontier in frontiers.items():
            title = f"{name}: model loads vs p99 (live cluster)"
            written.append(
                write_frontier(directory / f"{name}-frontier.png", frontier, title=title)
            )
    return written


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path
