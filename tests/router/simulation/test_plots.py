from pathlib import Path

import pytest

from router.simulation.plots import PlotUnavailable, plotting_available, write_charts

CAPACITY = {"cluster_slots": [4, 8], "loads": {"modelplex": [90, 40]}, "belady": [70, 30]}
LOAD = {"axis": "concurrency", "offered": [8, 16], "p99_ms": {"modelplex": [120.0, 260.0]}}


@pytest.mark.skipif(not plotting_available(), reason="matplotlib (the plot extra) is absent")
def test_write_charts_writes_one_png_per_sweep(tmp_path: Path) -> None:
    written = write_charts(tmp_path / "charts", capacity=CAPACITY, load=LOAD)
    assert [p.name for p in written] == ["loads_vs_capacity.png", "p99_vs_load.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
    assert write_charts(tmp_path / "none", capacity=None, load=None) == []


@pytest.mark.skipif(plotting_available(), reason="matplotlib is installed")
def test_write_charts_without_matplotlib_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(PlotUnavailable, match=r"\[plot\]"):
        write_charts(tmp_path, capacity=CAPACITY, load=None)
