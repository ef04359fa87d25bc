"""Admission: the queue of requests waiting for a replica, as synchronous code without I/O.

The one place that asks the policy and records dispatches in the view, so no request is routed
without the view knowing. Each method is one event — a request arrived (`arrive`) or came
back after its replica failed it (`readmit`), capacity freed (`offer`: a report arrived, a
replica joined, a wait's deadline passed), a request finished (`finished`), a waiter left
(`leave`: it timed out or its client went away) — and returns what the host must do
(`Actions`: dispatch these requests there, refuse those, load these copies, offer again at this
time), as httpcore's pool returns the connections to close.
The live router (`router/_admission.py`) maps the actions to futures; the simulator and the
tests drive this class directly, so what they measure is the router's code.

Rules it keeps:
- FIFO: with anyone queued, a new request joins the queue; the queue is offered to the policy
  in arrival order, until no routable replica has room;
- a model told to wait in a pass is not asked about again in that pass (one decision per
  waiting model, however long its queue); the policy learns how many models ahead of the one
  it decides wait for a model slot or a loader (`Demand.slot_waiters`);
- a readmitted request never goes back to a replica that failed it (`avoid`), and is decided
  on its own, since what holds for its model may not hold for it;
- `view.demand` counts every arrival once and every queued request from joining to leaving;
- no routable replica at all refuses every waiter at once (no queue of doomed requests),
  except just after the router started, before any replica could report (`first_reports_by`);
- a model whose load failed lately is not placed again where it failed, and once it failed on
  enough replicas (`router.load_failures`) its requests are refused at once with the loader's
  message, until the failures expire;
- a full queue (`max_queued`) refuses the newcomer.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from router.policy import Decision, Policy, Prefetch, Reject, Route, Wait
from router.view import ClusterView

__all__ = [
    "Actions",
    "AdmissionQueue",
    "AdmissionStats",
    "Admitted",
    "Chooser",
    "Refusal",
]

R = TypeVar("R", bound=Hashable)  # the host's handle for one request
Chooser = Callable[[R, str, float], Decision]


class Refusal(enum.Enum):
    NO_REPLICA = "no_replica"  # none registered, or all down, stale or draining
    QUEUE_FULL = "queue_full"
    LOAD_FAILED = "load_failed"  # the model failed to load wherever it was tried, lately


@dataclass(frozen=True, slots=True)
class _LoadFailed(Reject):
    """The model's loads keep failing: refuse at once with the loader's message."""


@dataclass(frozen=True, slots=True)
class Admitted:
    replica_id: str
    url: str
    cold: bool  # this request makes the replica load the model
    evict: str | None  # the model the replica was told to give up for it
    # The router's count of requests for the model, sent with a cold dispatch: the replica's
    # hits for the new load start from it, so every router reads its worth from the reports.
    demand: int = 0


@dataclass(slots=True)
class Actions(Generic[R]):
    """What the host must do after one event."""

    dispatched: list[tuple[R, Admitted]] = field(default_factory=list)
    refused: list[tuple[R, Refusal, str]] = field(default_factory=list)  # (request, why, text)
    queued: list[R] = field(default_factory=list)  # joined the queue: start their timeouts
    prefetches: list[Prefetch] = field(default_factory=list)  # already recorded in the view
    wake_at: float | None = None  # offer the queue again by then, even if nothing happens


@dataclass(slots=True)
class AdmissionStats:
    decisions: int = 0  # calls into the policy
    waits: int = 0  # decisions that said "wait"
    prefetches: int = 0
    max_queued: int = 0


@dataclass(slots=True, eq=False)
class _Waiter(Generic[R]):
    request: R
    model_id: str
    avoid: frozenset[str] = frozenset()  # replicas that already failed it
    gone: bool = False  # left the queue (timed out, cancelled); skipped when met


class AdmissionQueue(Generic[R]):
    def __init__(
        self,
        view: ClusterView,
        policy: Policy,
        *,
        max_queued: int,
        choose: Chooser[R] | None = None,
        first_reports_by: float = -math.inf,
    ) -> None:
        """`choose(request, model_id, now)` replaces `policy.choose` (a simulator baseline
        that needs the request's history); `policy.plan_copies` is used either way.
        `first_reports_by`: until then, while no replica has reported at all (the router has
        just started), requests wait for the first reports instead of being refused."""
        self.view = view
        self.policy = policy
        self.max_queued = max_queued
        self.first_reports_by = first_reports_by
        self.stats = AdmissionStats()
        self._choose = choose
        self._queue: deque[_Waiter[R]] = deque()
        self._waiting: dict[R, _Waiter[R]] = {}

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def is_queued(self, request: R) -> bool:
        return request in self._waiting

    # -- events ----------------------------------------------------------------------------

    def arrive(self, request: R, model_id: str, now: float) -> Actions[R]:
        """A request for `model_id` (empty: none) arrived: dispatch it, queue it or refuse it."""
        self.view.demand.arrived(model_id)
        return self._admit(request, model_id, now, first=False)

    def readmit(
        self, request: R, model_id: str, now: float, *, avoid: frozenset[str] = frozenset()
    ) -> Actions[R]:
        """A request that arrived before is back (its replica failed it, and it may be tried
        elsewhere): not counted again, first in the queue since it has waited already, and
        never sent to a replica in `avoid` (those that failed it)."""
        return self._admit(request, model_id, now, first=True, avoid=avoid)

    def _admit(
        self,
        request: R,
        model_id: str,
        now: float,
        *,
        first: bool,
        avoid: frozenset[str] = frozenset(),
    ) -> Actions[R]:
        actions: Actions[R] = Actions()
        if self._queue:
            self._enqueue(request, model_id, now, actions, first=first, avoid=avoid)
            self._pass(now, actions)
            return actions
        self.view.demand.slot_waiters = 0
        decision = self._decide(request, model_id, now, avoid)
        if isinstance(decision, Route):
            actions.dispatched.append((request, self._dispatch(decision, model_id, now)))
        elif isinstance(decision, Reject) and self._awaiting_first_reports(now):
            if self._enqueue(request, model_id, now, actions, avoid=avoid):
                actions.wake_at = self.first_reports_by
        elif isinstance(decision, Reject):
            actions.refused.append((request, _refusal(decision), decision.reason))
        elif self._enqueue(request, model_id, now, actions, avoid=avoid):
            self._pass(now, actions)  # as a waiter: its wait's deadline counts from now on
        return actions

    def attempt(self, request: R, model_id: str, now: float) -> Admitted | Decision:
        """Ask once for a request that is not queued, without counting an arrival (a simulator
        baseline that backs off on its own clock); a route is dispatched in the view."""
        decision = self._decide(request, model_id, now)
        if isinstance(decision, Route):
            return self._dispatch(decision, model_id, now)
        return decision

    def enqueue(self, request: R, model_id: str, now: float) -> Actions[R]:
        """Queue a request that has already arrived (after a failed `attempt`)."""
        actions: Actions[R] = Actions()
        if self._enqueue(request, model_id, now, actions):
            self._pass(now, actions)
        return actions

    def offer(self, now: float) -> Actions[R]:
        """Capacity may have freed (a report, a replica joined, a deadline passed)."""
        actions: Actions[R] = Actions()
        self._pass(now, actions)
        return actions

    def finished(
        self,
        replica_id: str,
        model_id: str,
        now: float,
        *,
        ok: bool = True,
        served_s: float | None = None,
    ) -> Actions[R]:
        """The request sent to `replica_id` is over (answered, failed or abandoned).

        `ok`: answered with success. `served_s`, for a request the replica answered without
        waiting for a load, feeds the estimate of inference time.
        """
        self.view.finish(replica_id, model_id, now, ok=ok)
        if served_s is not None:
            self.view.demand.observe_inference(served_s)
        return self.offer(now)

    def leave(self, request: R) -> None:
        """A queued request gives up (timed out, or its client went away); no-op otherwise."""
        waiter = self._waiting.pop(request, None)
        if waiter is not None:
            waiter.gone = True
            self.view.demand.wait_ended(waiter.model_id)

    # -- inside ----------------------------------------------------------------------------

    def _awaiting_first_reports(self, now: float) -> bool:
        return now < self.first_reports_by and not self.view.replicas

    def _decide(
        self, request: R, model_id: str, now: float, avoid: frozenset[str] = frozenset()
    ) -> Decision:
        self.stats.decisions += 1
        failures = self.view.load_failures
        if failures and model_id:
            message = failures.exhausted(model_id, now, self.view.routable_ids)
            if message is not None:
                return _LoadFailed(f"model {model_id!r} failed to load: {message}")
            avoid = avoid | failures.failed_on(model_id, now)
        if self._choose is None:
            decision = self.policy.choose(self.view, model_id, now, avoid=avoid)
        else:  # a simulator baseline's own chooser: the simulator never retries a request
            decision = self._choose(request, model_id, now)
        if isinstance(decision, Wait):
            self.stats.waits += 1
        return decision

    def _dispatch(self, route: Route, model_id: str, now: float) -> Admitted:
        replica = route.replica
        cold = self.view.dispatch(replica.replica_id, model_id, now, evict=route.evict)
        demand = self.view.demand.frequency(model_id) if cold else 0
        return Admitted(replica.replica_id, replica.url, cold, route.evict, demand)

    def _enqueue(
        self,
        request: R,
        model_id: str,
        now: float,
        actions: Actions[R],
        *,
        first: bool = False,
        avoid: frozenset[str] = frozenset(),
    ) -> bool:
        if len(self._waiting) >= self.max_queued:
            message = f"{len(self._waiting)} requests are already waiting for a replica"
            actions.refused.append((request, Refusal.QUEUE_FULL, message))
            return False
        waiter = _Waiter(request, model_id, avoid)
        if first:
            self._queue.appendleft(waiter)
        else:
            self._queue.append(waiter)
        self._waiting[request] = waiter
        self.stats.max_queued = max(self.stats.max_queued, len(self._waiting))
        self.view.demand.wait_started(model_id, now)
        actions.queued.append(request)
        return True

    def _pass(self, now: float, actions: Actions[R], *, again: bool = True) -> None:
        """Offer the queue to the policy in arrival order; once more if that prefetched copies
        of waiting models, so their waiters can go to the new copies at once."""
        queue = self._queue
        if not queue:
            return
        view, demand = self.view, self.view.demand
        if not view.routable_ids:
            if self._awaiting_first_reports(now):
                actions.wake_at = _earliest(actions.wake_at, self.first_reports_by)
                return
            self._queue = deque()
            for waiter in queue:
                if not waiter.gone:
                    self.leave(waiter.request)
                    actions.refused.append(
                        (waiter.request, Refusal.NO_REPLICA, "no replica is available")
                    )
            return
        demand.slot_waiters = 0
        keep: deque[_Waiter[R]] = deque()
        admitted: list[_Waiter[R]] = []
        told_to_wait: dict[str, None] = {}  # models told to wait, in queue order
        wake_at = actions.wake_at
        while queue:
            waiter = queue.popleft()
            if waiter.gone:
                continue
            if not view.with_room:
                keep.append(waiter)
                keep.extend(w for w in queue if not w.gone)
                queue.clear()
                told_to_wait.update(dict.fromkeys(w.model_id for w in keep))
                break
            if waiter.model_id in told_to_wait and not waiter.avoid:
                keep.append(waiter)
                continue
            decision = self._decide(waiter.request, waiter.model_id, now, waiter.avoid)
            if isinstance(decision, Route):
                admitted.append(waiter)
                actions.dispatched.append(
                    (waiter.request, self._dispatch(decision, waiter.model_id, now))
                )
            elif isinstance(decision, Reject):
                self.leave(waiter.request)
                actions.refused.append((waiter.request, _refusal(decision), decision.reason))
            else:
                keep.append(waiter)
                if not waiter.avoid:
                    told_to_wait[waiter.model_id] = None
                if decision.for_slot:
                    demand.slot_waiters += 1
                until = decision.until
                if until is not None and until > now and (wake_at is None or until < wake_at):
                    wake_at = until
        self._queue = keep
        actions.wake_at = wake_at
        for waiter in admitted:  # leave the demand's wait count once the pass is over
            self.leave(waiter.request)
        prefetched = len(actions.prefetches)
        self._plan_copies(told_to_wait, now, actions)
        if again and len(actions.prefetches) > prefetched:
            self._pass(now, actions, again=False)

    def _plan_copies(self, model_ids: Iterable[str], now: float, actions: Actions[R]) -> None:
        for model_id in model_ids:
            if not model_id:
                continue
            for prefetch in self.policy.plan_copies(self.view, model_id, now):
                self.view.prefetch(prefetch.replica.replica_id, model_id, now, evict=prefetch.evict)
                self.stats.prefetches += 1
                actions.prefetches.append(prefetch)


def _refusal(reject: Reject) -> Refusal:
    return Refusal.LOAD_FAILED if isinstance(reject, _LoadFailed) else Refusal.NO_REPLICA


def _earliest(at: float | None, other: float) -> float:
    return other if at is None else min(at, other)
