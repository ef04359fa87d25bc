"""The JSON documents that cross processes besides the wire reports: their shapes, typed.

- `RouterStatusDocument`: the router's `GET /-/status`, read by `modelplex status`, the launcher
  and the benchmarks.
- `ReplicaStateDocument`: a replica's `GET /-/state`, its report (`common.wire.ReplicaSnapshot`)
  as JSON.

The producers build these types and the readers annotate with them, so a renamed field is a type
error on both sides instead of a `.get()` that quietly returns None.
"""

from __future__ import annotations

from typing import TypedDict

__all__ = [
    "LoadFailureDocument",
    "ReplicaStateDocument",
    "ReplicaStatusDocument",
    "ReportedRouterDocument",
    "ResidentModelDocument",
    "RouterInfoDocument",
    "RouterStatusDocument",
]


class ResidentModelDocument(TypedDict):
    model_id: str
    idle_s: float
    """Seconds since the model was last used."""
    in_use: int
    """Requests holding (pinning) the model; on the router, its own plus the replica's report."""
    hits: float
    """How often it was asked for there (every router's requests, decayed by time), as the
    replica counts it; 0 from a replica that does not report hits."""


class ReplicaStatusDocument(TypedDict):
    replica_id: str
    url: str
    incarnation: str
    state: str
    """A `router.view.ReplicaStatus` value: "healthy", "draining", "down", …"""
    in_flight: int
    reported_in_flight: int
    capacity: int
    """Model slots; -1 (`common.wire.UNLIMITED_CAPACITY`) for no limit."""
    max_ongoing_requests: int
    models: list[ResidentModelDocument]
    """Resident models, least recently used first."""
    loading: list[str]
    last_report_age_s: float
    load_ms_avg: float | None


class LoadFailureDocument(TypedDict):
    model_id: str
    replica_id: str
    message: str
    """The loader's error, as the replica reported it."""
    age_s: float


class RouterInfoDocument(TypedDict):
    url: str
    """Where the router listens; with several routers on a host, the port they share."""
    direct_url: str
    """This router's own address (the one its replicas report to); `url` when it shares none."""
    started_at: float
    """Unix time the router started."""
    queued: int
    counters: dict[str, int]
    load_failures: list[LoadFailureDocument]
    """Loads that failed within the cool-down (`router.load_failure_cooldown_s`), oldest first."""


class RouterStatusDocument(TypedDict):
    router: RouterInfoDocument
    replicas: list[ReplicaStatusDocument]
    """Sorted by replica id, numerically where the id ends in a number."""


class ReportedRouterDocument(TypedDict):
    url: str
    """A router the replica reports to (given with --router, or found with --router-dns)."""
    connected: bool
    """Its state channel is open now."""


class ReplicaStateDocument(TypedDict):
    replica_id: str
    incarnation: str
    sequence: int
    url: str
    capacity: int
    models: list[ResidentModelDocument]
    """Least recently used first."""
    loading: list[str]
    in_flight: int
    max_ongoing_requests: int
    draining: bool
    load_ms_avg: float | None
    max_concurrent_loads: int | None
    routers: list[ReportedRouterDocument]
    """Every router it reports to, and whether each channel is up."""
