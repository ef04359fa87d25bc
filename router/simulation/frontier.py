"""The loads-versus-tail frontier of the policy's patience (`popular_model_patience`).

A point is one run on one workload: loads / Belady (x), p99 in ms (y), and the throughput that
came with them. A `Frontier` holds the sweep over `PATIENCE_SWEEP`, the point of the policy
with its default settings, and Ray Serve's point. The simulator (`runner.sweep_patience`) and
the live bench (`scripts/bench.py --frontier`) each fill one, print its `table` and draw it
with `router.simulation.plots.write_frontier`, so both show the same trade-off the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final

__all__ = ["PATIENCE_SWEEP", "Frontier", "FrontierPoint"]

PATIENCE_SWEEP: Final[tuple[float, ...]] = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)  # load times


@dataclass(frozen=True, kw_only=True, slots=True)
class FrontierPoint:
    """One run's position on the frontier; None where the run has no such figure."""

    label: str
    loads: int | None
    loads_over_belady: float | None
    throughput_rps: float | None
    p99_ms: float | None
    worst_model_p99_ms: float | None = None
    patience: float | None = None  # for a sweep point; None: the policy's default

    @property
    def drawable(self) -> bool:
        return self.loads_over_belady is not None and self.p99_ms is not None


@dataclass(kw_only=True, slots=True)
class Frontier:
    sweep: list[FrontierPoint] = field(default_factory=list)
    default: FrontierPoint | None = None
    ray: FrontierPoint | None = None

    def points(self) -> list[FrontierPoint]:
        """Every point: the sweep in patience order, then the default, then Ray's."""
        return [*self.sweep, *(p for p in (self.default, self.ray) if p is not None)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        header = (
            f"  {'point':<28}{'patience':>9}{'loads':>8}{'x Belady':>9}{'req/s':>9}"
            f"{'p99 ms':>9}{'worst p99 ms':>13}"
        )
        lines = ["loads vs p99 frontier (popular_model_patience in load times):", header]
        for point in self.points():
            patience = "default" if point.patience is None else f"{point.patience:g}"
            if point is self.ray:
                patience = "-"
            lines.append(
                f"  {point.label:<28}{patience:>9}{_text(point.loads, 0):>8}"
                f"{_text(point.loads_over_belady, 2):>9}{_text(point.throughput_rps, 1):>9}"
                f"{_text(point.p99_ms, 1):>9}{_text(point.worst_model_p99_ms, 1):>13}"
            )
        return "\n".join(lines)


def _text(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
