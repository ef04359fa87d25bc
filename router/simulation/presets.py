"""Named scenarios for the acceptance checks of issue 4; a flag given with a preset wins.

Keys are the command line's option names (argparse `dest`s); anything a preset leaves out
takes the command line's default.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["PRESETS"]

_ZIPF: Final[dict[str, Any]] = {
    "replicas": 8,
    "capacity": 4,
    "concurrency": 32,
    "requests": 50_000,
    "models": 1000,
    "popularity": "zipf",
    "load_s": 1.0,
    "infer_s": 0.02,
}

PRESETS: Final[dict[str, dict[str, Any]]] = {
    # Zipf popularity over 1,000 models on 8 replicas x 4 slots: loads vs Belady and vs Ray.
    "zipf0.8": {**_ZIPF, "zipf_s": 0.8},
    "zipf1.1": {**_ZIPF, "zipf_s": 1.1},
    # Exactly as many models as the cluster has slots: each should load once, and stay.
    "uniform-fit": {
        "replicas": 8,
        "capacity": 4,
        "models": 32,
        "popularity": "uniform",
        "concurrency": 32,
        "requests": 20_000,
        "load_s": 1.0,
        "infer_s": 0.02,
    },
    # One hot model, more demand than one replica takes: how many copies, and the p99.
    "hot-model": {
        "replicas": 8,
        "capacity": 4,
        "models": 1,
        "popularity": "uniform",
        "concurrency": 16,
        "max_ongoing": 4,
        "requests": 20_000,
        "load_s": 1.0,
        "infer_s": 0.02,
    },
    # The scale run: 1,000 replicas x 8 slots, 1,000,000 models, 1,000,000 requests.
    "scale": {
        "replicas": 1000,
        "capacity": 8,
        "models": 1_000_000,
        "popularity": "zipf",
        "zipf_s": 1.1,
        "concurrency": 1000,
        "requests": 1_000_000,
        "load_s": 1.0,
        "infer_s": 0.02,
        "measure_memory": True,
    },
}
