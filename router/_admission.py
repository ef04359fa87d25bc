"""The router's admission: `router.admission.AdmissionQueue` on asyncio futures.

Every decision is the queue's; this wrapper only turns its actions into I/O: a dispatched
request's future gets its replica, a refused one its exception, a prefetch goes to the
replica, and a deadline the policy named becomes a timer that offers the queue again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from router.admission import Actions, AdmissionQueue, Admitted, Refusal
from router.policy import Policy, Prefetch
from router.view import ClusterView

__all__ = ["Admission", "Admitted", "LoadFailed", "NoReplica", "QueueFull", "QueueTimeout"]


class NoReplica(Exception):
    """No replica can take requests (none registered, all down or draining)."""


class LoadFailed(Exception):
    """The model failed to load on every replica it was tried on, lately."""


class QueueFull(Exception):
    """The router's queue of requests waiting for a replica (or a model slot) is full."""


class QueueTimeout(Exception):
    """The request waited in the queue for longer than the queue timeout."""


class _Ticket:
    """One request's place in the queue: hashable by identity, resolved through its future."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Admitted]) -> None:
        self.future = future


_ERRORS: dict[Refusal, type[Exception]] = {
    Refusal.NO_REPLICA: NoReplica,
    Refusal.QUEUE_FULL: QueueFull,
    Refusal.LOAD_FAILED: LoadFailed,
}


class Admission:
    def __init__(
        self,
        view: ClusterView,
        policy: Policy,
        *,
        clock: Callable[[], float],
        max_queued: int,
        prefetch: Callable[[Prefetch], None] = lambda _: None,
        first_reports_within_s: float = 0.0,
    ) -> None:
        """`first_reports_within_s`: how long after now requests wait for the first replica
        reports, rather than being refused because no replica is known yet."""
        self.view = view
        self.policy = policy
        self.clock = clock
        self.queue: AdmissionQueue[_Ticket] = AdmissionQueue(
            view,
            policy,
            max_queued=max_queued,
            first_reports_by=clock() + first_reports_within_s,
        )
        self._prefetch = prefetch
        self._wake: asyncio.TimerHandle | None = None
        self._wake_at: float | None = None

    @property
    def queued(self) -> int:
        return self.queue.queued

    async def admit(
        self, model_id: str, timeout_s: float, *, tried: frozenset[str] = frozenset()
    ) -> Admitted:
        """Dispatch now, or wait in the queue for up to `timeout_s`. `tried`: the replicas that
        already failed this request (it is counted once, goes first in the queue, and goes to
        none of them)."""
        ticket = _Ticket(asyncio.get_running_loop().create_future())
        now = self.clock()
        if tried:
            self._apply(self.queue.readmit(ticket, model_id, now, avoid=tried))
        else:
            self._apply(self.queue.arrive(ticket, model_id, now))
        future = ticket.future
        if future.done():
            return future.result()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except BaseException as exc:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Admitted in the same instant the timer fired or the caller was cancelled:
                # the request never reaches the replica, so give its place back.
                self.release(future.result(), model_id, ok=False)
            if isinstance(exc, TimeoutError):
                raise QueueTimeout(
                    f"no replica could take the request within {timeout_s:g} s"
                ) from None
            raise
        finally:
            self.queue.leave(ticket)
            if not future.done():
                future.cancel()

    def release(
        self,
        admitted: Admitted,
        model_id: str,
        *,
        ok: bool = True,
        served_s: float | None = None,
    ) -> None:
        """The request sent to `admitted` is over (answered, failed or abandoned)."""
        now = self.clock()
        self._apply(
            self.queue.finished(admitted.replica_id, model_id, now, ok=ok, served_s=served_s)
        )

    def offer(self) -> None:
        """Capacity may have freed: offer the queue again."""
        self._apply(self.queue.offer(self.clock()))

    def _apply(self, actions: Actions[_Ticket]) -> None:
        for ticket, admitted in actions.dispatched:
            if not ticket.future.done():
                ticket.future.set_result(admitted)
        for ticket, refusal, message in actions.refused:
            if not ticket.future.done():
                ticket.future.set_exception(_ERRORS[refusal](message))
        for prefetch in actions.prefetches:
            self._prefetch(prefetch)
        if actions.wake_at is not None:
            self._wake_by(actions.wake_at)

    def close(self) -> None:
        """The router stops: no more timed offers."""
        if self._wake is not None:
            self._wake.cancel()
        self._wake = self._wake_at = None

    def _wake_by(self, at: float) -> None:
        """Offer the queue at `at` (router clock), unless an earlier offer is already due."""
        if self._wake_at is not None and self._wake_at <= at:
            return
        if self._wake is not None:
            self._wake.cancel()
        delay = max(0.0, at - self.clock())
        self._wake_at = at
        self._wake = asyncio.get_running_loop().call_later(delay, self._woken)

    def _woken(self) -> None:
        self._wake = self._wake_at = None
        self.offer()
