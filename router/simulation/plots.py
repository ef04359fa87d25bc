"""PNG charts of the sweeps: loads against cluster capacity (with the Belady curve) per
policy, and p99 latency against offered load per policy.

matplotlib is optional (`pip install -e '.[plot]'`); `plotting_available` says whether it can
be imported, and `write_charts` raises `PlotUnavailable` with the install hint if not.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

__all__ = ["PlotUnavailable", "plotting_available", "write_charts"]


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plotting_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_charts(
    directory: Path, *, capacity: dict[str, Any] | None, load: dict[str, Any] | None
) -> list[Path]:
    """Write the charts for the sweeps given; return the files written."""
    if not plotting_available():
        raise PlotUnavailable(
            "--plot needs matplotlib: pip install -e '.[plot]' (or pip install 'matplotlib>=3.8')"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        axes.set_title("Loads vs cluster capacity")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        path = directory / "loads_vs_capacity.png"
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    if load is not None:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for name, p99 in load["p99_ms"].items():
            axes.plot(load["offered"], p99, marker="o", label=name)
        axes.set_xlabel(f"offered load: {load['axis']}")
        axes.set_ylabel("p99 latency (ms)")
        axes.set_yscale("log")
        axes.set_title("p99 latency vs offered load")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        path = directory / "p99_vs_load.png"
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written
