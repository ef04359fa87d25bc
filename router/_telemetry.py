"""What the router records about each request: Prometheus metrics and the access log.

One `RequestRecord` per request, filled in on the request path (replica, how it was routed,
time queued, time at the replica) and handed to `Telemetry.finished` once the answer is out.
Label values are bounded whatever the traffic: status codes, a fixed set of routing outcomes
and refusal reasons, replica ids — never a model id.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["ACCESS_LOG_FORMATS", "Outcome", "RequestRecord", "Telemetry"]

access_logger = logging.getLogger("modelplex.access")

ACCESS_LOG_FORMATS = ("off", "text", "json")
_LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip


class Outcome:
    """How a request was routed (the `outcome` label)."""

    WARM = "warm"  # to a replica that had its model
    COLD_LOAD = "cold_load"  # it made a replica load its model
    WAITED_FOR_LOAD = "waited_for_load"  # its model was already loading there
    NO_MODEL = "no_model"  # it named no model
    REJECTED = "rejected"  # refused by the router (the `reason` label of the rejections)


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    method: str
    path: str
    started: float  # router clock
    model_id: str = ""
    replica_id: str = ""
    outcome: str = Outcome.REJECTED
    reason: str = ""  # why it was refused, when it was
    queued_s: float = 0.0  # waiting for a replica in the router's queue
    upstream_s: float = 0.0  # from sending to the replica to the end of its answer
    retries: int = 0


class Telemetry:
    def __init__(self, *, access_log: str = "text") -> None:
        if access_log not in ACCESS_LOG_FORMATS:
            raise ValueError(f"access_log must be one of {ACCESS_LOG_FORMATS}, got {access_log!r}")
        self.access_log = access_log
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "modelplex_router_requests",
            "Requests answered by the router, by HTTP status code",
            ["code"],
            registry=self.registry,
        )
        self._routed = Counter(
            "modelplex_router_routed_requests",
            "Requests by how they were routed",
            ["outcome"],
            registry=self.registry,
        )
        self._rejected = Counter(
            "modelplex_router_rejected_requests",
            "Requests the router refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self._loads = Counter(
            "modelplex_router_replica_loads",
            "Model loads this router caused, by replica (requests and prefetches)",
            ["replica"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "modelplex_router_request_duration_seconds",
            "End-to-end time of a request at the router, until its answer was sent",
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._added = Histogram(
            "modelplex_router_added_seconds",
            "Time a request spent in the router itself, not at a replica",
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._queued = Histogram(
            "modelplex_router_queue_wait_seconds",
            "Time a request waited in the router's queue for a replica",
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def loaded(self, replica_id: str) -> None:
        """The router made `replica_id` load a model (a cold dispatch or a prefetch)."""
        self._loads.labels(replica_id).inc()

    def finished(self, record: RequestRecord, status: int, body_bytes: int, now: float) -> None:
        duration_s = max(0.0, now - record.started)
        self._requests.labels(str(status)).inc()
        self._routed.labels(record.outcome).inc()
        if record.outcome == Outcome.REJECTED:
            self._rejected.labels(record.reason or "other").inc()
        self._latency.observe(duration_s)
        self._added.observe(max(0.0, duration_s - record.upstream_s))
        if record.queued_s > 0:
            self._queued.observe(record.queued_s)
        if self.access_log != "off" and access_logger.isEnabledFor(logging.INFO):
            access_logger.info(self._line(record, status, body_bytes, duration_s))

    def _line(self, record: RequestRecord, status: int, body_bytes: int, duration_s: float) -> str:
        if self.access_log == "json":
            return json.dumps(
                {
                    "request_id": record.request_id,
                    "method": record.method,
                    "path": record.path,
                    "model": record.model_id,
                    "replica": record.replica_id,
                    "outcome": record.outcome,
                    "reason": record.reason,
                    "status": status,
                    "bytes": body_bytes,
                    "duration_ms": round(duration_s * 1000, 3),
                    "queued_ms": round(record.queued_s * 1000, 3),
                    "retries": record.retries,
                },
                separators=(",", ":"),
            )
        return (
            f"{record.request_id} {record.method} {record.path} model={record.model_id or '-'} "
            f"replica={record.replica_id or '-'} {record.outcome}"
            f"{':' + record.reason if record.reason else ''} {status} {body_bytes}B "
            f"{duration_s * 1000:.1f}ms queued={record.queued_s * 1000:.1f}ms"
            f"{f' retries={record.retries}' if record.retries else ''}"
        )
