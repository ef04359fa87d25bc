"""PNG charts of the sweeps: loads against cluster capacity (with the Belady curve) per
policy, p99 latency against offered load per policy, and the loads-versus-p99 frontier of the
policy's patience (`write_frontier`, drawn for the simulator and the live bench alike).

matplotlib is optional (`pip install -e '.[plot]'`); `plotting_available` says whether it can
be imported, and `write_charts` and `write_frontier` raise `PlotUnavailable` with the install
hint if not.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from router.simulation.frontier import Frontier, FrontierPoint

__all__ = ["PlotUnavailable", "plotting_available", "write_charts", "write_frontier"]


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plotting_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_charts(
    directory: Path, *, capacity: dict[str, Any] | None, load: dict[str, Any] | None
) -> list[Path]:
    """Write the charts for the sweeps given; return the files written."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if capacity is not None:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        slots = capacity["cluster_slots"]
        for name, loads in capacity["loads"].items():
            axes.plot(slots, loads, marker="o", label=name)
        axes.plot(slots, capacity["belady"], linestyle="--", color="black", label="Belady bound")
        axes.set_xlabel("cluster capacity (replicas x slots)")
        axes.set_ylabel("model loads")
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        written.append(
            _finish(
                plt, figure, axes, "Loads vs cluster capacity", directory / "loads_vs_capacity.png"
            )
        )
    if load is not None:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for name, p99 in load["p99_ms"].items():
            axes.plot(load["offered"], p99, marker="o", label=name)
        axes.set_xlabel(f"offered load: {load['axis']}")
        axes.set_ylabel("p99 latency (ms)")
        axes.set_yscale("log")
        written.append(
            _finish(plt, figure, axes, "p99 latency vs offered load", directory / "p99_vs_load.png")
        )
    return written


def write_frontier(path: Path, frontier: Frontier, *, title: str) -> Path:
    """Draw `frontier`: x loads / Belady, y p99 (log), each point labelled with its
    throughput; the patience sweep as one series, the default and Ray's as marked points."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(7.5, 5))
    sweep = [p for p in frontier.sweep if p.drawable]
    if sweep:
        axes.plot(
            [p.loads_over_belady for p in sweep],
            [p.p99_ms for p in sweep],
            marker="o",
            color="tab:blue",
            label="patience sweep",
        )
        for i, point in enumerate(sweep):  # above and below in turn: neighbours stay legible
            _annotate(axes, point, f"P={point.patience:g}: ", below=i % 2 == 1)
    marked: list[tuple[FrontierPoint | None, str, str, str]] = [
        (frontier.default, "*", "tab:green", "default: "),
        (frontier.ray, "X", "tab:red", ""),
    ]
    for mark, marker, colour, prefix in marked:
        if mark is None or not mark.drawable:
            continue
        axes.scatter(
            [mark.loads_over_belady],
            [mark.p99_ms],
            marker=marker,
            s=160,
            color=colour,
            label=mark.label,
            zorder=3,
        )
        _annotate(axes, mark, prefix, below=True, colour=colour)
    axes.set_xlabel("model loads / Belady bound")
    axes.set_ylabel("p99 latency (ms, log scale)")
    axes.set_yscale("log")
    plain = _ticker().FuncFormatter(lambda value, _: f"{value:g}")
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_formatter(plain)
    axes.tick_params(axis="y", which="minor", labelsize="x-small")
    return _finish(plt, figure, axes, title, path, legend_size="small")


def _finish(
    plt: Any, figure: Any, axes: Any, title: str, path: Path, *, legend_size: str = "medium"
) -> Path:
    """Title, grid and legend on `axes`; write `figure` to `path` and close it."""
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=legend_size)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _annotate(
    axes: Any, point: FrontierPoint, prefix: str, *, below: bool, colour: str = "black"
) -> None:
    throughput = "?" if point.throughput_rps is None else f"{point.throughput_rps:.0f}"
    axes.annotate(
        f"{prefix}{throughput} req/s",
        (point.loads_over_belady, point.p99_ms),
        textcoords="offset points",
        xytext=(7, -11 if below else 5),
        fontsize="x-small",
        color=colour,
    )


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend, or `PlotUnavailable`."""
    if not plotting_available():
        raise PlotUnavailable(
            "--plot needs matplotlib: pip install -e '.[plot]' (or pip install 'matplotlib>=3.8')"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ticker() -> Any:
    import matplotlib.ticker

    return matplotlib.ticker
