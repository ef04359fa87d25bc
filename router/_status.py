"""What the router shows about itself: `/-/status` as JSON and `/-/metrics` for Prometheus."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.status import (
    LoadFailureDocument,
    ReplicaStatusDocument,
    ResidentModelDocument,
    RouterInfoDocument,
    RouterStatusDocument,
)

if TYPE_CHECKING:
    from router.server import RouterServer

__all__ = ["metrics_text", "status_document"]


def status_document(server: RouterServer, now: float) -> RouterStatusDocument:
    """`GET /-/status`: the router's counters and its view of every replica."""
    replicas = [
        ReplicaStatusDocument(
            replica_id=replica.replica_id,
            url=replica.url,
            incarnation=replica.incarnation,
            state=replica.status.value,
            in_flight=replica.in_flight,
            reported_in_flight=replica.reported_in_flight,
            capacity=replica.capacity,
            max_ongoing_requests=replica.max_ongoing_requests,
            models=[
                ResidentModelDocument(
                    model_id=copy.model_id,
                    idle_s=round(max(0.0, now - copy.last_used), 3),
                    in_use=copy.in_flight + copy.reported_in_use,
                    hits=copy.hits or 0.0,
                )
                for copy in replica.lru_models()
                if not copy.loading
            ],
            loading=[c.model_id for c in replica.models.values() if c.loading],
            last_report_age_s=round(now - replica.last_report_at, 3),
            load_ms_avg=replica.load_ms_avg,
        )
        for replica in sorted(server.view, key=lambda r: _natural(r.replica_id))
    ]
    router = RouterInfoDocument(
        url=server.url,
        direct_url=server.direct_url or server.url,
        started_at=server.started_at,
        queued=server.admission.queued,
        counters=dict(sorted(server.counters.items())),
        load_failures=[
            LoadFailureDocument(
                model_id=record.model_id,
                replica_id=record.replica_id,
                message=record.message,
                age_s=round(now - record.at, 3),
            )
            for record in server.view.load_failures.records(now)
        ],
    )
    return RouterStatusDocument(router=router, replicas=replicas)


def _natural(replica_id: str) -> tuple[str, int]:
    head, _, tail = replica_id.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (replica_id, -1)


class _RouterCollector(Collector):
    def __init__(self, server: RouterServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        counters = CounterMetricFamily(
            "modelplex_router_events", "Router events by kind", labels=["event"]
        )
        for event, count in sorted(self.server.counters.items()):
            counters.add_metric([event], count)
        yield counters
        queued = GaugeMetricFamily("modelplex_router_queued_requests", "Requests waiting")
        queued.add_metric([], self.server.admission.queued)
        yield queued
        in_flight = GaugeMetricFamily(
            "modelplex_router_replica_in_flight_requests",
            "This router's requests in flight per replica",
            labels=["replica"],
        )
        models = GaugeMetricFamily(
            "modelplex_router_replica_models",
            "Models resident or loading, as the router sees them",
            labels=["replica"],
        )
        up = GaugeMetricFamily(
            "modelplex_router_replica_routable",
            "1 if the router sends requests to it",
            labels=["replica"],
        )
        state = GaugeMetricFamily(
            "modelplex_router_replica_state",
            "1 for the replica's state as the router sees it (healthy, circuit_open, ...)",
            labels=["replica", "state"],
        )
        breaker = GaugeMetricFamily(
            "modelplex_router_replica_breaker_failures",
            "Failed requests in a row on the replica (its circuit breaker's count)",
            labels=["replica"],
        )
        for replica in self.server.view:
            rid = replica.replica_id
            in_flight.add_metric([rid], replica.in_flight)
            models.add_metric([rid], len(replica.models))
            up.add_metric([rid], 1 if replica.routable else 0)
            state.add_metric([rid, replica.status.value], 1)
            breaker.add_metric([rid], replica.breaker.failures)
        yield in_flight
        yield models
        yield up
        yield state
        yield breaker
        routable = GaugeMetricFamily(
            "modelplex_router_routable_replicas", "Replicas the router sends requests to"
        )
        routable.add_metric([], len(self.server.view.routable_ids))
        yield routable


def metrics_text(server: RouterServer) -> bytes:
    """`/-/metrics`: the router's state now, then its request metrics (`router._telemetry`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RouterCollector(server))
    return generate_latest(registry) + generate_latest(server.telemetry.registry)
