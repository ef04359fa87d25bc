"""What the launcher and the CLI print about a cluster, and how they read the router's status.

Pure functions over the router's `/-/status` document and the config: no I/O.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.config import ClusterConfig

__all__ = ["banner", "format_status", "healthy_replicas"]

TENANTS_IMPORT_PATH = "examples.tenants:TenantModels"


def healthy_replicas(status: Mapping[str, Any] | None) -> dict[str, str]:
    """Replica id -> URL for the replicas the router's status shows as healthy."""
    replicas = status.get("replicas") if status is not None else None
    if not isinstance(replicas, list):
        return {}
    return {
        str(r.get("replica_id")): str(r.get("url"))
        for r in replicas
        if isinstance(r, dict) and r.get("state") == "healthy"
    }


def curl_example(router_url: str, config: ClusterConfig) -> str:
    """A request the user can paste to try the cluster."""
    if config.deployment.import_path == TENANTS_IMPORT_PATH:
        body = '{"features": {"temperature": 21.5, "hour": 14}}'
        return f"curl -H 'serve_multiplexed_model_id: tenant-01' -d '{body}' {router_url}/predict"
    return f"curl -H 'serve_multiplexed_model_id: <model-id>' {router_url}/"


def banner(
    router_url: str, config_path: Path, config: ClusterConfig, *, pid: int, bundled: bool
) -> str:
    """The lines `modelplex up` prints once every replica is healthy. `bundled`: the config is
    the example shipped with modelplex, which is copied rather than edited in place."""
    count = config.deployment.num_replicas
    if bundled:
        scale = [
            f"  scale:  cp {config_path} my-cluster.yaml, edit num_replicas, then",
            "          modelplex apply my-cluster.yaml",
        ]
    else:
        scale = [
            f"  scale:  edit num_replicas in {config_path} (applied when saved)",
            f"          or: modelplex apply {config_path}",
        ]
    return "\n".join(
        [
            f"modelplex is serving {config.deployment.import_path} on {router_url} "
            f"with {count} replica{'' if count == 1 else 's'}",
            f"  try:    {curl_example(router_url, config)}",
            f"  status: modelplex status{'' if bundled else f' {config_path}'}",
            *scale,
            f"  stop:   Ctrl-C here, or kill {pid}",
        ]
    )


def _cell(value: object) -> str:
    return "-" if value in (None, "", []) else str(value)


def _models(replica: Mapping[str, Any]) -> str:
    models = [m for m in replica.get("models") or [] if isinstance(m, dict)]
    models.sort(key=lambda m: -float(m.get("idle_s") or 0.0))  # least recently used first
    names = [f"{m.get('model_id')}{'*' if m.get('in_use') else ''}" for m in models]
    capacity = replica.get("capacity")
    count = f"{len(models)}/{capacity}" if isinstance(capacity, int) and capacity > 0 else ""
    return f"{', '.join(names) or '-'}{f' ({count})' if count else ''}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def format_status(status: Mapping[str, Any]) -> str:
    """The router's status as a table: one row per replica, then the router's counters."""
    router = status.get("router") or {}
    replicas = [r for r in status.get("replicas") or [] if isinstance(r, dict)]
    rows = [
        [
            _cell(r.get("replica_id")),
            _cell(r.get("state")),
            f"{_cell(r.get('in_flight'))}/{_cell(r.get('max_ongoing_requests'))}",
            _models(r),
            ", ".join(map(str, r.get("loading") or [])) or "-",
            _cell(r.get("url")),
        ]
        for r in replicas
    ]
    header = ["REPLICA", "STATE", "IN-FLIGHT", "MODELS (LRU -> MRU, * in use)", "LOADING", "URL"]
    healthy = sum(1 for r in replicas if r.get("state") == "healthy")
    lines = [f"router {_cell(router.get('url'))}: {healthy}/{len(replicas)} replicas healthy"]
    lines += _table(header, rows) if rows else ["(no replicas have reported)"]
    counters = router.get("counters") or {}
    if isinstance(counters, dict) and counters:
        text = "  ".join(f"{key}={value}" for key, value in counters.items())
        lines.append(textwrap.fill(text, 100, initial_indent="counters: ", subsequent_indent="  "))
    if router.get("queued"):
        lines.append(f"queued: {router['queued']}")
    return "\n".join(lines)
