"""What the launcher and the CLI print about a cluster, and how they read the router's status.

Pure functions over the router's `/-/status` document (`common.status.RouterStatusDocument`,
checked once by `status_document` where decoded JSON comes in) and the config: no I/O.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from common.config import ClusterConfig
from common.status import ReplicaStatusDocument, RouterStatusDocument

__all__ = [
    "banner",
    "fail",
    "format_status",
    "format_statuses",
    "healthy_everywhere",
    "healthy_replicas",
    "status_document",
]

TENANTS_IMPORT_PATH = "examples.tenants:TenantModels"


def status_document(data: object) -> RouterStatusDocument | None:
    """Decoded JSON as the router's status document; None if it is not shaped like one."""
    if (
        isinstance(data, dict)
        and isinstance(data.get("router"), dict)
        and isinstance(data.get("replicas"), list)
    ):
        return cast(RouterStatusDocument, data)
    return None


def healthy_replicas(status: RouterStatusDocument | None) -> dict[str, str]:
    """Replica id -> URL for the replicas the router's status shows as healthy."""
    if status is None:
        return {}
    return {r["replica_id"]: r["url"] for r in status["replicas"] if r["state"] == "healthy"}


def healthy_everywhere(statuses: Sequence[RouterStatusDocument | None]) -> dict[str, str]:
    """Replica id -> URL for the replicas healthy, at that URL, on every router that answered
    (None: it did not); nothing when none answered."""
    answered = [healthy_replicas(status) for status in statuses if status is not None]
    if not answered:
        return {}
    first, *others = answered
    return {rid: url for rid, url in first.items() if all(o.get(rid) == url for o in others)}


def curl_example(router_url: str, config: ClusterConfig) -> str:
    """A request the user can paste to try the cluster."""
    if config.deployment.import_path == TENANTS_IMPORT_PATH:
        body = '{"features": {"temperature": 21.5, "hour": 14}}'
        return f"curl -H 'serve_multiplexed_model_id: tenant-01' -d '{body}' {router_url}/predict"
    return f"curl -H 'serve_multiplexed_model_id: <model-id>' {router_url}/"


def banner(
    router_url: str,
    config_path: Path,
    config: ClusterConfig,
    *,
    pid: int,
    bundled: bool,
    router_urls: Sequence[str] = (),
) -> str:
    """The lines `modelplex up` prints once every replica is healthy. `bundled`: the config is
    the example shipped with modelplex, which is copied rather than edited in place;
    `router_urls`: each router's own address, named when there are several."""
    count = config.deployment.num_replicas
    routers = (
        [f"  routers: {len(router_urls)} share {router_url}; their own: {', '.join(router_urls)}"]
        if len(router_urls) > 1
        else []
    )
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
            *routers,
            f"  status: modelplex status{'' if bundled else f' {config_path}'}",
            *scale,
            f"  stop:   Ctrl-C here, or kill {pid}",
        ]
    )


def _cell(value: object) -> str:
    return "-" if value in (None, "", []) else str(value)


def _models(replica: ReplicaStatusDocument) -> str:
    models = sorted(replica["models"], key=lambda m: -m["idle_s"])  # least recently used first
    names = [f"{m['model_id']}{'*' if m['in_use'] else ''}" for m in models]
    capacity = replica["capacity"]
    count = f"{len(models)}/{capacity}" if capacity > 0 else ""
    return f"{', '.join(names) or '-'}{f' ({count})' if count else ''}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def format_status(status: RouterStatusDocument) -> str:
    """The router's status as a table: one row per replica, then the router's counters."""
    router = status["router"]
    replicas = status["replicas"]
    rows = [
        [
            _cell(r["replica_id"]),
            _cell(r["state"]),
            f"{r['in_flight']}/{r['max_ongoing_requests']}",
            _models(r),
            ", ".join(r["loading"]) or "-",
            _cell(r["url"]),
        ]
        for r in replicas
    ]
    header = ["REPLICA", "STATE", "IN-FLIGHT", "MODELS (LRU -> MRU, * in use)", "LOADING", "URL"]
    healthy = sum(1 for r in replicas if r["state"] == "healthy")
    direct = router.get("direct_url") or router["url"]  # absent from an older router
    where = _cell(router["url"]) + ("" if direct == router["url"] else f" (its own: {direct})")
    lines = [f"router {where}: {healthy}/{len(replicas)} replicas healthy"]
    lines += _table(header, rows) if rows else ["(no replicas have reported)"]
    if router["counters"]:
        text = "  ".join(f"{key}={value}" for key, value in router["counters"].items())
        lines.append(textwrap.fill(text, 100, initial_indent="counters: ", subsequent_indent="  "))
    if router["queued"]:
        lines.append(f"queued: {router['queued']}")
    for failure in router.get("load_failures") or []:  # absent from an older router
        lines.append(
            f"load failed: {_cell(failure['model_id'])} on {_cell(failure['replica_id'])} "
            f"{failure['age_s']:.0f} s ago: {_cell(failure['message'])}"
        )
    return "\n".join(lines)


def format_statuses(statuses: Sequence[tuple[str, RouterStatusDocument | None]]) -> str:
    """Several routers' status, each as `format_status` shows it, one that did not answer
    said so; `statuses` pairs each router's own URL with its document (None: no answer)."""
    blocks = [
        format_status(status) if status is not None else f"router {url}: not answering"
        for url, status in statuses
    ]
    up = sum(1 for _, status in statuses if status is not None)
    return "\n\n".join([f"{up}/{len(statuses)} routers answering", *blocks])


def fail(message: str, code: int = 1) -> int:
    """Say what went wrong on stderr, as `modelplex: ...`; return the exit code."""
    print(f"modelplex: {message}", file=sys.stderr)
    return code
