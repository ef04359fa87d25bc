"""Admission: turn the policy's decision into a dispatched request, or queue it.

The one place that asks the policy and records dispatches in the view, so no request is
routed without the view knowing. A request the policy says to wait joins a bounded FIFO queue;
whenever capacity frees (a request finished, a report arrived, a replica joined) the queue is
offered to the policy again in arrival order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from router.policy import Policy, Prefetch, Reject, Route
from router.view import ClusterView

__all__ = ["Admission", "Admitted", "NoReplica", "QueueFull", "QueueTimeout"]


class NoReplica(Exception):
    """No replica can take requests (none registered, all down or draining)."""


class QueueFull(Exception):
    """Every replica is at max_ongoing_requests and the router's queue is full."""


class QueueTimeout(Exception):
    """The request waited in the queue for longer than the queue timeout."""


@dataclass(frozen=True, slots=True)
class Admitted:
    replica_id: str
    url: str
    cold: bool  # this request makes the replica load the model
    evict: str | None


@dataclass(slots=True)
class _Waiter:
    model_id: str
    future: asyncio.Future[Admitted]


class Admission:
    def __init__(
        self,
        view: ClusterView,
        policy: Policy,
        *,
        clock: Callable[[], float],
        max_queued: int,
        prefetch: Callable[[Prefetch], None] = lambda _: None,
    ) -> None:
        self.view = view
        self.policy = policy
        self.clock = clock
        self.max_queued = max_queued
        self._prefetch = prefetch
        self._queue: deque[_Waiter] = deque()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _try(self, model_id: str, now: float) -> Admitted | Reject | None:
        decision = self.policy.choose(self.view, model_id, now)
        if isinstance(decision, Route):
            replica = decision.replica
            cold = self.view.dispatch(replica.replica_id, model_id, now, evict=decision.evict)
            return Admitted(replica.replica_id, replica.url, cold, decision.evict)
        if isinstance(decision, Reject):
            return decision
        return None

    async def admit(self, model_id: str, timeout_s: float) -> Admitted:
        """Dispatch now, or wait in the queue for up to `timeout_s`."""
        self.view.demand.arrived(model_id)
        outcome = self._try(model_id, self.clock()) if not self._queue else None
        if isinstance(outcome, Admitted):
            return outcome
        if isinstance(outcome, Reject):
            raise NoReplica(outcome.reason)
        if len(self._queue) >= self.max_queued:
            raise QueueFull(f"{len(self._queue)} requests are already waiting for a replica")
        waiter = _Waiter(model_id, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        self.view.demand.wait_started(model_id, self.clock())
        self.offer()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), timeout_s)
        except TimeoutError:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                # Admitted in the same instant the timer fired: give the slot back.
                self.release(future.result(), model_id)
            raise QueueTimeout(
                f"no replica could take the request within {timeout_s:g} s"
            ) from None
        finally:
            self.view.demand.wait_ended(model_id)
            if not waiter.future.done():
                waiter.future.cancel()
            if waiter in self._queue:
                self._queue.remove(waiter)

    def release(
        self,
        admitted: Admitted,
        model_id: str,
        *,
        ok: bool = True,
        served_s: float | None = None,
    ) -> None:
        """The request sent to `admitted` is over (answered, failed or abandoned).

        `ok`: answered with success. `served_s`, for a request the replica answered without
        waiting for a load, feeds the estimate of inference time.
        """
        self.view.finish(admitted.replica_id, model_id, self.clock(), ok=ok)
        if served_s is not None:
            self.view.demand.observe_inference(served_s)
        self.offer()

    def offer(self) -> None:
        """Offer queued requests to the policy in arrival order."""
        if not self._queue:
            return
        now = self.clock()
        if not any(r.routable for r in self.view):
            queue, self._queue = self._queue, deque()
            for waiter in queue:
                if not waiter.future.done():
                    waiter.future.set_exception(NoReplica("no replica is available"))
            return
        keep: deque[_Waiter] = deque()
        still_waiting: dict[str, None] = {}  # models told to wait, in queue order
        while self._queue:
            waiter = self._queue.popleft()
            if waiter.future.done():
                continue
            if not any(r.routable and r.has_room for r in self.view):
                keep.append(waiter)
                keep.extend(w for w in self._queue if not w.future.done())
                self._queue.clear()
                still_waiting.update(dict.fromkeys(w.model_id for w in keep))
                break
            if waiter.model_id in still_waiting:
                # Dispatches only add load, so a model told to wait in this pass still waits.
                keep.append(waiter)
                continue
            outcome = self._try(waiter.model_id, now)
            if isinstance(outcome, Admitted):
                waiter.future.set_result(outcome)
            elif isinstance(outcome, Reject):
                waiter.future.set_exception(NoReplica(outcome.reason))
            else:
                keep.append(waiter)
                still_waiting[waiter.model_id] = None
        self._queue = keep
        for model_id in still_waiting:
            self._plan_copies(model_id, now)

    def _plan_copies(self, model_id: str, now: float) -> None:
        if not model_id:
            return
        for prefetch in self.policy.plan_copies(self.view, model_id, now):
            self.view.prefetch(prefetch.replica.replica_id, model_id, now, evict=prefetch.evict)
            self._prefetch(prefetch)
