"""The discrete-event engine: the router's real view and policy, simulated replicas, timed events.

One run replays one workload through one policy. Time is simulated (a heap of timed events);
the only wall clock read is for the statistics. The router side is the production code:
`router.view.ClusterView` and the policy object, driven as the live router drives them —
`choose(view, model_id, now)`, then `view.dispatch(...)` for a route, `view.finish(...)` when
the answer is back, `view.apply_report(...)` when a replica's snapshot arrives, `report_delay_s`
after its cache changed (changes at one instant make one report, as `replica/_reporter.py`
coalesces a loop wake-up) or after `heartbeat_interval_s` without a report. Baselines may
use the optional hooks of `router.simulation.contract`.

Admission is the router's own `router.admission.AdmissionQueue` (FIFO queue, `view.demand`
bookkeeping, prefetched copies of hot models from `policy.plan_copies`, offers again at the
deadlines the policy names), wrapped by `router.simulation.admission.SyncAdmission`; a queued
request is dropped after `queue_timeout_s`.
A prefetch reaches its replica at once and pins the model until its load is done.

With `routers` above 1, each router is its own view, policy object and admission queue, as
several live routers are: requests go to them in turn (a client connection each, spread), a
router sees only its own requests and dispatches, and every replica's report reaches every
router `report_delay_s` after the change. Nothing else is shared.

Closed loop: `concurrency` clients, each sending its next request when the previous one is
answered, or `retry_after_s` after it was refused or timed out (the router's 503 carries
Retry-After: 1). Open loop: the workload's arrival times. Latency is answer
time minus arrival time, queueing included.
"""

from __future__ import annotations

import copy
import random
from array import array
from dataclasses import dataclass, field
from heapq import heappop, heappush
from time import perf_counter
from typing import Any, Final

from router.policy import Policy, Prefetch
from router.simulation.admission import SyncAdmission
from router.simulation.contract import ReportObserver, SimRequest
from router.simulation.replica_model import SimReplica
from router.simulation.workloads import Dist, DistKind, Workload
from router.view import ClusterView

__all__ = ["EngineConfig", "RunStats", "simulate"]

_ISSUE, _ARRIVAL, _LOADED, _DONE, _REPORT, _HEARTBEAT, _RETRY, _TIMEOUT, _OFFER = range(9)
_ONE_SECOND: Final = Dist(DistKind.CONST, 1.0)


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineConfig:
    replicas: int = 8
    capacity: int = 4  # model slots per replica
    max_ongoing_requests: int = 8
    max_concurrent_loads: int | None = None  # loads per replica at once; None: as many as slots
    load: Dist = _ONE_SECOND
    concurrency: int = 32  # closed loop clients (ignored when the workload has arrival times)
    report_delay_s: float = 0.002
    heartbeat_interval_s: float = 1.0
    max_queued: int = 1000
    queue_timeout_s: float = 30.0
    retry_after_s: float = 1.0  # a closed-loop client's pause after a refusal or a time-out
    pending_grace_s: float = 2.0
    seed: int = 0
    routers: int = 1  # router processes, each with its own view; requests alternate


@dataclass(slots=True)
class RunStats:
    """What one policy did with one workload."""

    policy: str
    requests: int
    completed: int = 0  # answered
    rejected: int = 0  # no replica, or the queue was full
    timed_out: int = 0  # waited longer than queue_timeout_s
    loads: int = 0
    hits: int = 0  # requests whose model was resident when they reached the replica
    evictions: int = 0
    hint_evictions: int = 0  # evictions that followed the router's hint
    decisions: int = 0  # calls into the policy
    waits: int = 0  # decisions that said "wait"
    prefetches: int = 0  # copies the router asked for without a request
    decide_wall_s: float = 0.0  # wall time inside the admission queue's methods
    wall_s: float = 0.0  # wall time of the whole run
    sim_time_s: float = 0.0  # simulated time when the last request finished
    max_copies: int = 0  # most replicas holding or loading one model at once
    max_queued: int = 0
    per_replica: list[int] = field(default_factory=list)  # requests dispatched to each
    latencies: array[float] = field(default_factory=lambda: array("d"))
    arrivals: array[float] = field(default_factory=lambda: array("d"))  # of answered requests
    answered_models: list[str] = field(default_factory=list)  # the model of each latency
    view: ClusterView | None = None  # the (first) router's view at the end, for memory


def simulate(
    config: EngineConfig, workload: Workload, policy: Policy, *, name: str = ""
) -> RunStats:
    """Run `workload` through `policy` on simulated replicas; return what happened."""
    return _Engine(config, workload, policy, name or type(policy).__name__).run()


class _Engine:
    def __init__(self, config: EngineConfig, workload: Workload, policy: Policy, name: str):
        self.config = config
        self.workload = workload
        self.observer = policy if isinstance(policy, ReportObserver) else None
        if config.routers > 1 and self.observer is not None:
            raise ValueError(f"{name}: a policy that observes reports runs on one router only")
        self.views = [
            ClusterView(pending_grace_s=config.pending_grace_s) for _ in range(config.routers)
        ]
        self.view = self.views[0]
        self.sims = [
            SimReplica(
                i,
                capacity=config.capacity,
                max_ongoing_requests=config.max_ongoing_requests,
                max_concurrent_loads=config.max_concurrent_loads,
            )
            for i in range(config.replicas)
        ]
        self.by_id = {sim.replica_id: sim for sim in self.sims}
        for sim in self.sims:  # every replica registers before any traffic
            hello = sim.snapshot(0.0)
            for view in self.views:
                view.apply_report(hello, 0.0)
            if self.observer is not None:
                self.observer.observe_report(hello, 0.0)
        policies = [policy] + [copy.deepcopy(policy) for _ in range(config.routers - 1)]
        self.admissions = [
            SyncAdmission(view, each, self, max_queued=config.max_queued)
            for view, each in zip(self.views, policies, strict=True)
        ]
        self.admission = self.admissions[0]
        self.rng = random.Random(f"load/{config.seed}")
        self.stats = RunStats(name, len(workload.model_ids), per_replica=[0] * config.replicas)
        self.heap: list[tuple[float, int, int, Any, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.next_index = 0
        self.finished = 0
        self.copies: dict[str, int] = {}
        self.last_report = [0.0] * config.replicas
        self.offers_due: set[float] = set()  # times admission asked to be offered again

    def push(self, at: float, kind: int, a: Any = None, b: Any = None) -> None:
        self.seq += 1
        heappush(self.heap, (at, self.seq, kind, a, b))

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> RunStats:
        started = perf_counter()
        config, views, admissions = self.config, self.views, self.admissions
        n = len(self.workload.model_ids)
        for sim in self.sims:
            phase = config.heartbeat_interval_s * (sim.index + 1) / len(self.sims)
            self.last_report[sim.index] = phase - config.heartbeat_interval_s  # staggered
            self.push(phase, _HEARTBEAT, sim)
        if self.workload.arrivals is None:
            for _ in range(min(config.concurrency, n)):
                self.push(0.0, _ISSUE)
        elif n:
            self.push(self.workload.arrivals[0], _ARRIVAL, 0)
        heap = self.heap
        while self.finished < n:
            now, _, kind, a, b = heappop(heap)
            self.now = now
            if kind == _DONE:
                self._done(a)
            elif kind == _REPORT:
                for view in views:
                    view.apply_report(a, now)
                if self.observer is not None:
                    self.observer.observe_report(a, now)
                for admission in admissions:
                    admission.offer(now)
            elif kind == _LOADED:
                a.loaded(b[0], now, b[1])
                self._drain(a)
            elif kind == _ISSUE:
                self._issue()
            elif kind == _ARRIVAL:
                self._issue()
                if a + 1 < n:
                    self.push(self.workload.arrivals[a + 1], _ARRIVAL, a + 1)  # type: ignore[index]
            elif kind == _HEARTBEAT:  # a report when the channel was quiet for an interval
                due = self.last_report[a.index] + config.heartbeat_interval_s
                if now >= due:
                    self._report(a)
                    due = now + config.heartbeat_interval_s
                self.push(due, _HEARTBEAT, a)
            elif kind == _RETRY:
                if not a.done:
                    if now - a.arrived_at >= config.queue_timeout_s:
                        self._end(a, timed_out=True)
                    else:
                        admissions[a.router].retry(a, now)
            elif kind == _OFFER:
                self.offers_due.discard(now)
                for admission in admissions:
                    admission.offer(now)
            elif kind == _TIMEOUT and not a.done and a.replica < 0:
                admissions[a.router].time_out(a)
                self._end(a, timed_out=True)
        return self._finish_stats(perf_counter() - started)

    def _finish_stats(self, wall_s: float) -> RunStats:
        stats, every = self.stats, [admission.stats for admission in self.admissions]
        stats.wall_s = wall_s
        stats.sim_time_s = self.now
        stats.loads = sum(s.loads for s in self.sims)
        stats.evictions = sum(s.evictions for s in self.sims)
        stats.hint_evictions = sum(s.hint_evictions for s in self.sims)
        stats.decisions = sum(counts.decisions for counts in every)
        stats.waits = sum(counts.waits for counts in every)
        stats.decide_wall_s = sum(admission.decide_wall_s for admission in self.admissions)
        stats.prefetches = sum(counts.prefetches for counts in every)
        stats.max_queued = max(counts.max_queued for counts in every)
        stats.view = self.view
        return stats

    # -- requests --------------------------------------------------------------------------

    def _issue(self) -> None:
        index = self.next_index
        if index >= len(self.workload.model_ids):
            return
        self.next_index = index + 1
        request = SimRequest(
            index, self.workload.model_ids[index], self.now, self.workload.infer_s[index]
        )
        request.router = index % len(self.admissions)
        self.admissions[request.router].admit(request, self.now)

    def _end(self, request: SimRequest, *, rejected: bool = False, timed_out: bool = False) -> None:
        request.done = True
        self.finished += 1
        if rejected:
            self.stats.rejected += 1
        elif timed_out:
            self.stats.timed_out += 1
        else:
            self.stats.completed += 1
            self.stats.latencies.append(self.now - request.arrived_at)
            self.stats.arrivals.append(request.arrived_at)
            self.stats.answered_models.append(request.model_id)
            if request.found_ready:
                self.stats.hits += 1
        if self.workload.arrivals is None:
            failed = rejected or timed_out  # a 503 with Retry-After: the client waits that long
            self.push(self.now + (self.config.retry_after_s if failed else 0.0), _ISSUE)

    def _done(self, request: SimRequest) -> None:
        sim = self.sims[request.replica]
        sim.finish(request, self.now)
        self._drain(sim)
        if not request.prefetch:
            self.admissions[request.router].release(request, sim.replica_id, self.now)
            self._end(request)

    # -- what admission asks of the engine (AdmissionHost) ---------------------------------

    def dispatched(self, request: SimRequest, replica_id: str) -> None:
        sim = self.by_id[replica_id]
        request.replica = sim.index
        self.stats.per_replica[sim.index] += 1
        sim.arrive(request, self.now)
        self._drain(sim)

    def prefetched(self, prefetch: Prefetch) -> None:
        sim = self.by_id[prefetch.replica.replica_id]
        request = SimRequest(-1, prefetch.model_id, self.now, 0.0, prefetch=True)
        request.evict = prefetch.evict
        request.replica = sim.index
        sim.arrive(request, self.now)
        self._drain(sim)

    def refused(self, request: SimRequest) -> None:
        self._end(request, rejected=True)

    def queued(self, request: SimRequest) -> None:
        self.push(request.arrived_at + self.config.queue_timeout_s, _TIMEOUT, request)

    def retry_at(self, request: SimRequest, at: float) -> None:
        self.push(at, _RETRY, request)

    def offer_at(self, at: float) -> None:
        if at not in self.offers_due:
            self.offers_due.add(at)
            self.push(at, _OFFER)

    # -- replicas --------------------------------------------------------------------------

    def _drain(self, sim: SimReplica) -> None:
        """Turn what the replica just did into events."""
        now = self.now
        if sim.started:
            for request in sim.started:
                self.push(now + request.infer_s, _DONE, request)
            sim.started.clear()
        if sim.evicted:
            copies = self.copies
            for model_id in sim.evicted:
                left = copies[model_id] - 1
                if left:
                    copies[model_id] = left
                else:
                    del copies[model_id]
            sim.evicted.clear()
        if sim.loads_started:
            copies = self.copies
            for model_id in sim.loads_started:
                load_s = self.config.load.sample(self.rng)
                self.push(now + load_s, _LOADED, sim, (model_id, load_s))
                count = copies.get(model_id, 0) + 1
                copies[model_id] = count
                if count > self.stats.max_copies:
                    self.stats.max_copies = count
            sim.loads_started.clear()
        if sim.changed:
            sim.changed = False
            self._report(sim)

    def _report(self, sim: SimReplica) -> None:
        """The replica sends its snapshot; the router applies it `report_delay_s` later."""
        self.last_report[sim.index] = self.now
        self.push(self.now + self.config.report_delay_s, _REPORT, sim.snapshot(self.now))
