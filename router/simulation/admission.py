"""Admission on simulated time: `router/_admission.py`'s `Admission`, step for step, without
asyncio (its waiters are futures and need a running loop, so it cannot be driven directly).

Kept from the live router, in the same order:
- `admit`: count the arrival in `view.demand`; with nobody queued, ask the policy at once;
  else (or on a wait) join the FIFO queue — refused when `max_queued` already wait — note the
  wait in `view.demand`, and offer the queue;
- `offer` (after an arrival, an answer, a report): no routable replica refuses every waiter;
  else each waiter in order is offered to the policy until no replica has room; then
  `policy.plan_copies` for each model still waiting, each `Prefetch` recorded with
  `view.prefetch` and sent to its replica; waiters admitted by this offer leave the demand's
  wait count afterwards (in the live router their tasks resume after `offer` returns);
- `release`: `view.finish`, the inference time of a warm request fed to the demand, `offer`.
"No routable replica has room" is a counter kept on every dispatch and finish (the simulated
replicas never go down, drain or go stale) rather than a scan of the view.

Differences, for baselines only: a `RequestAwarePolicy` is asked with the request's context,
and after a `Wait` retries at the time it names (the host schedules it) instead of queueing.
"""

from __future__ import annotations

from collections import deque
from time import perf_counter
from typing import Any, Protocol

from router.policy import Policy, Prefetch, Reject, Route
from router.simulation.contract import RequestAwarePolicy, SimRequest
from router.view import ClusterView

__all__ = ["AdmissionHost", "AdmissionStats", "SyncAdmission"]

_DISPATCHED, _WAITING, _REJECTED = range(3)


class AdmissionHost(Protocol):
    """What admission asks of the engine."""

    def dispatched(self, request: SimRequest, replica_id: str) -> None: ...
    def prefetched(self, prefetch: Prefetch) -> None: ...
    def refused(self, request: SimRequest) -> None: ...
    def queued(self, request: SimRequest) -> None: ...
    def retry_at(self, request: SimRequest, at: float) -> None: ...


class AdmissionStats:
    __slots__ = ("decide_wall_s", "decisions", "max_queued", "prefetches", "waits")

    def __init__(self) -> None:
        self.decisions = 0  # calls into the policy's choose
        self.waits = 0  # decisions that said "wait"
        self.decide_wall_s = 0.0  # wall time inside choose + dispatch
        self.prefetches = 0
        self.max_queued = 0


class SyncAdmission:
    def __init__(
        self, view: ClusterView, policy: Policy, host: AdmissionHost, *, max_queued: int
    ) -> None:
        self.view = view
        self.policy = policy
        self.aware = policy if isinstance(policy, RequestAwarePolicy) else None
        self.host = host
        self.max_queued = max_queued
        self.stats = AdmissionStats()
        self.queue: deque[SimRequest] = deque()
        self._last: Any = None
        self.rooms = sum(1 for r in view if r.routable and r.has_room)

    def admit(self, request: SimRequest, now: float) -> None:
        """A request arrived at the router."""
        self.view.demand.arrived(request.model_id)
        if self.aware is not None:
            self.retry(request, now)
            return
        if not self.queue:
            self.view.demand.slot_waiters = 0
            outcome = self._try(request, now)
            if outcome == _DISPATCHED:
                return
            if outcome == _REJECTED:
                self.host.refused(request)
                return
        self._enqueue(request, now)

    def retry(self, request: SimRequest, now: float) -> None:
        """Ask a request-aware policy (again) for a request that is not queued."""
        outcome = self._try(request, now)
        if outcome == _WAITING:
            at = self.aware.retry_at(request, now) if self.aware is not None else None
            if at is None:
                self._enqueue(request, now)
            else:
                self.host.retry_at(request, max(at, now))
        elif outcome == _REJECTED:
            self.host.refused(request)

    def _enqueue(self, request: SimRequest, now: float) -> None:
        if len(self.queue) >= self.max_queued:
            self.host.refused(request)  # QueueFull
            return
        self.queue.append(request)
        request.queued = True
        self.stats.max_queued = max(self.stats.max_queued, len(self.queue))
        self.view.demand.wait_started(request.model_id, now)
        self.host.queued(request)
        self.offer(now)

    def time_out(self, request: SimRequest) -> None:
        """A queued request gave up waiting (the queue skips it from now on)."""
        self._leave_queue(request)

    def _leave_queue(self, request: SimRequest) -> None:
        if request.queued:
            request.queued = False
            self.view.demand.wait_ended(request.model_id)

    def release(self, request: SimRequest, replica_id: str, now: float) -> None:
        """The request's answer came back."""
        replica = self.view.replicas.get(replica_id)
        was_full = replica is not None and not replica.has_room
        self.view.finish(replica_id, request.model_id, now)
        if was_full and replica is not None and replica.has_room:
            self.rooms += 1
        if request.found_ready:  # the replica would not mark it cold: an inference time
            self.view.demand.observe_inference(now - request.dispatched_at)
        self.offer(now)

    def offer(self, now: float) -> None:
        """Offer queued requests to the policy in arrival order."""
        queue = self.queue
        if not queue:
            return
        if not self.view.routable_ids:
            self.queue = deque()
            for waiter in queue:
                if not waiter.done:
                    self._leave_queue(waiter)
                    self.host.refused(waiter)
            return
        if self.rooms <= 0:
            still = dict.fromkeys(w.model_id for w in queue if not w.done)
            self._plan_copies(still, now)
            return
        keep: deque[SimRequest] = deque()
        admitted: list[SimRequest] = []
        self.view.demand.slot_waiters = 0
        told_to_wait: set[str] = set()
        while queue:
            waiter = queue.popleft()
            if waiter.done:
                continue
            if self.rooms <= 0:
                keep.append(waiter)
                keep.extend(w for w in queue if not w.done)
                queue.clear()
                break
            if waiter.model_id in told_to_wait and self.aware is None:
                keep.append(waiter)  # dispatches only add load: still a wait
                continue
            outcome = self._try(waiter, now)
            if outcome == _DISPATCHED:
                admitted.append(waiter)
            elif outcome == _REJECTED:
                self._leave_queue(waiter)
                self.host.refused(waiter)
            else:
                keep.append(waiter)
                told_to_wait.add(waiter.model_id)
                if self._last.for_slot:
                    self.view.demand.slot_waiters += 1
        self.queue = keep
        self._plan_copies(dict.fromkeys(w.model_id for w in keep), now)
        for waiter in admitted:
            self._leave_queue(waiter)

    def _plan_copies(self, model_ids: dict[str, None], now: float) -> None:
        """Models still waiting, in queue order (the live router iterates a set)."""
        for model_id in model_ids:
            if not model_id:
                continue
            for prefetch in self.policy.plan_copies(self.view, model_id, now):
                self.view.prefetch(prefetch.replica.replica_id, model_id, now, evict=prefetch.evict)
                self.stats.prefetches += 1
                self.host.prefetched(prefetch)

    def _try(self, request: SimRequest, now: float) -> int:
        """Ask the policy once; record a route in the view and hand it to the host."""
        stats, view = self.stats, self.view
        request.attempts += 1
        started = perf_counter()
        if self.aware is not None:
            decision = self.aware.choose_request(view, request, now)
        else:
            decision = self.policy.choose(view, request.model_id, now)
        if type(decision) is Route:
            replica = decision.replica
            had_room = replica.has_room
            request.cold = view.dispatch(
                replica.replica_id, request.model_id, now, evict=decision.evict
            )
            stats.decide_wall_s += perf_counter() - started
            stats.decisions += 1
            if had_room and not replica.has_room:
                self.rooms -= 1
            request.evict = decision.evict
            request.dispatched_at = now
            self.host.dispatched(request, replica.replica_id)
            return _DISPATCHED
        stats.decide_wall_s += perf_counter() - started
        stats.decisions += 1
        if type(decision) is Reject:
            return _REJECTED
        stats.waits += 1
        self._last = decision
        return _WAITING
