"""What the simulator offers a policy beyond the live router's `Policy.choose` contract.

The live router drives a policy with `choose(view, model_id, now)` only, and the simulator
drives `router.policy.AffinityPolicy` (modelplex) exactly that way. Some baselines need more
than the router gives, so the engine looks, once per run, for two optional methods:

- `RequestAwarePolicy.choose_request(view, request, now)`: choose with the waiting request's
  context (its arrival time, attempts so far, and a `state` slot the policy owns and the engine
  never reads). With it, `retry_at(request, now)` says when to ask again after a `Wait`: a time
  (the policy backs off on its own clock, as Ray Serve's router does), or None to be re-offered
  whenever capacity frees, as `router/_admission.py` does.
- `ReportObserver.observe_report(snapshot, now)`: called after the view applied a replica's
  report, for a policy that keeps its own picture of residency (Ray learns model ids from its
  controller, not from its own dispatches).

A policy that has neither is driven exactly as the live router drives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from common.wire import ReplicaSnapshot
from router.policy import Decision, Policy
from router.view import ClusterView

__all__ = ["ReportObserver", "RequestAwarePolicy", "SimRequest"]


@dataclass(slots=True, eq=False)
class SimRequest:
    """One request of the workload, from arrival to answer.

    Policies may read `index`, `model_id`, `arrived_at` and `attempts`, and own `state`; the
    other fields are the engine's bookkeeping.
    """

    index: int
    model_id: str
    arrived_at: float  # simulated seconds
    infer_s: float
    attempts: int = 0  # decisions asked for it so far
    state: object | None = None  # the policy's per-request routing context
    replica: int = -1  # the simulated replica serving it, once dispatched
    router: int = 0  # the router it was sent to (with several)
    evict: str | None = None  # the router's eviction hint sent with it
    demand: int = 0  # the router's count of its model, sent with a cold dispatch
    dispatched_at: float = 0.0
    cold: bool = False  # its dispatch made the replica load the model (as the view saw it)
    done: bool = False  # answered, rejected or timed out
    found_ready: bool = False  # its model was resident when it reached the replica
    prefetch: bool = False  # not a request: the router asked the replica to load a copy


@runtime_checkable
class RequestAwarePolicy(Policy, Protocol):
    def choose_request(self, view: ClusterView, request: SimRequest, now: float) -> Decision:
        """Like `choose`, for a request whose history the policy may consult."""
        ...

    def retry_at(self, request: SimRequest, now: float) -> float | None:
        """After a `Wait`: when to ask again (seconds), or None for "when capacity frees"."""
        ...


@runtime_checkable
class ReportObserver(Protocol):
    def observe_report(self, snapshot: ReplicaSnapshot, now: float) -> None:
        """A replica's report reached the router (after the view applied it)."""
        ...
