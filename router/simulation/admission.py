"""Admission on simulated time: the router's own `router.admission.AdmissionQueue`, whose
actions become engine events instead of resolved futures.

What the live router's wrapper (`router/_admission.py`) does, this does with the engine as host:
a dispatched request goes to its simulated replica, a refused one ends with a 503, a queued one
gets its queue timeout, a prefetch reaches its replica, and a deadline becomes an offer event.

For baselines only: a `RequestAwarePolicy` is asked with the request's context, and after a
wait retries at the time it names (the host schedules it) instead of queueing.
`decide_wall_s` is the wall time spent inside the queue's methods: the live code's cost.
"""

from __future__ import annotations

from time import perf_counter
from typing import Protocol

from router.admission import Actions, AdmissionQueue, AdmissionStats, Admitted
from router.policy import Decision, Policy, Prefetch, Reject
from router.simulation.contract import RequestAwarePolicy, SimRequest
from router.view import ClusterView

__all__ = ["AdmissionHost", "SyncAdmission"]


class AdmissionHost(Protocol):
    """What admission asks of the engine."""

    def dispatched(self, request: SimRequest, replica_id: str) -> None: ...
    def prefetched(self, prefetch: Prefetch) -> None: ...
    def refused(self, request: SimRequest) -> None: ...
    def queued(self, request: SimRequest) -> None: ...
    def retry_at(self, request: SimRequest, at: float) -> None: ...
    def offer_at(self, at: float) -> None: ...


class SyncAdmission:
    def __init__(
        self, view: ClusterView, policy: Policy, host: AdmissionHost, *, max_queued: int
    ) -> None:
        self.view = view
        self.aware = policy if isinstance(policy, RequestAwarePolicy) else None
        self.host = host
        self.core: AdmissionQueue[SimRequest] = AdmissionQueue(
            view, policy, max_queued=max_queued, choose=self._choose_aware if self.aware else None
        )
        self._wall_s = 0.0

    @property
    def stats(self) -> AdmissionStats:
        """The queue's counters (decisions, waits, prefetches, longest queue)."""
        return self.core.stats

    @property
    def decide_wall_s(self) -> float:
        """Wall time spent inside the queue's methods."""
        return self._wall_s

    def _choose_aware(self, request: SimRequest, model_id: str, now: float) -> Decision:
        assert self.aware is not None
        request.attempts += 1
        return self.aware.choose_request(self.view, request, now)

    def admit(self, request: SimRequest, now: float) -> None:
        """A request arrived at the router."""
        started = perf_counter()
        if self.aware is not None:
            self.view.demand.arrived(request.model_id)
            self._wall_s += perf_counter() - started
            self.retry(request, now)
            return
        actions = self.core.arrive(request, request.model_id, now)
        self._wall_s += perf_counter() - started
        self._apply(actions, now)

    def retry(self, request: SimRequest, now: float) -> None:
        """Ask a request-aware policy (again) for a request that is not queued."""
        started = perf_counter()
        outcome = self.core.attempt(request, request.model_id, now)
        self._wall_s += perf_counter() - started
        if isinstance(outcome, Admitted):
            self._dispatched(request, outcome, now)
        elif isinstance(outcome, Reject):
            self.host.refused(request)
        else:
            at = self.aware.retry_at(request, now) if self.aware is not None else None
            if at is None:
                self._apply(self.core.enqueue(request, request.model_id, now), now)
            else:
                self.host.retry_at(request, max(at, now))

    def time_out(self, request: SimRequest) -> None:
        """A queued request gave up waiting."""
        self.core.leave(request)

    def release(self, request: SimRequest, replica_id: str, now: float) -> None:
        """The request's answer came back."""
        # The replica would not mark it cold: its time is an inference time.
        served_s = now - request.dispatched_at if request.found_ready else None
        started = perf_counter()
        actions = self.core.finished(replica_id, request.model_id, now, served_s=served_s)
        self._wall_s += perf_counter() - started
        self._apply(actions, now)

    def offer(self, now: float) -> None:
        """Capacity may have freed."""
        started = perf_counter()
        actions = self.core.offer(now)
        self._wall_s += perf_counter() - started
        self._apply(actions, now)

    def _dispatched(self, request: SimRequest, admitted: Admitted, now: float) -> None:
        request.cold = admitted.cold
        request.evict = admitted.evict
        request.demand = admitted.demand
        request.dispatched_at = now
        self.host.dispatched(request, admitted.replica_id)

    def _apply(self, actions: Actions[SimRequest], now: float) -> None:
        for request in actions.queued:
            self.host.queued(request)
        for request, admitted in actions.dispatched:
            self._dispatched(request, admitted, now)
        for request, _, _ in actions.refused:
            self.host.refused(request)
        for prefetch in actions.prefetches:
            self.host.prefetched(prefetch)
        if actions.wake_at is not None:
            self.host.offer_at(actions.wake_at)
