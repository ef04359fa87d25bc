"""Admission: route at once when the policy can, otherwise a bounded FIFO queue with a timeout."""

from __future__ import annotations

import asyncio
from functools import partial

import pytest

from common.wire import ReplicaSnapshot
from router._admission import Admission, Admitted, NoReplica, QueueFull, QueueTimeout
from router.policy import AffinityPolicy
from router.view import ClusterView

import reports
from polling import until

LONG_S = 5.0


# Admission tests fill a replica with one request unless they say otherwise.
snapshot = partial(reports.snapshot, max_ongoing_requests=1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admission(*reports: ReplicaSnapshot, max_queued: int = 10) -> Admission:
    clock = Clock()
    view = ClusterView()
    for report in reports:
        view.apply_report(report, clock.now)
    return Admission(view, AffinityPolicy(), clock=clock, max_queued=max_queued)


def in_flight(gate: Admission, replica_id: str) -> int:
    return gate.view.replicas[replica_id].in_flight


# -- admitted at once ------------------------------------------------------------------------


async def test_admit_routes_at_once_and_records_the_dispatch() -> None:
    gate = admission(snapshot("r1", max_ongoing_requests=4))
    first = await gate.admit("m", LONG_S)
    assert first == Admitted("r1", "http://r1.test:8000", cold=True, evict=None, demand=1)
    second = await gate.admit("m", LONG_S)
    assert second.cold is False
    assert in_flight(gate, "r1") == 2
    assert gate.view.holders["m"] == {"r1"}
    assert gate.queued == 0


async def test_admit_passes_on_the_model_to_evict() -> None:
    gate = admission(snapshot("r1", ["a"], capacity=1))
    admitted = await gate.admit("m", LONG_S)
    assert (admitted.replica_id, admitted.cold, admitted.evict) == ("r1", True, "a")
    assert set(gate.view.replicas["r1"].models) == {"m"}


async def test_a_request_without_a_model_is_admitted_to_the_least_loaded_replica() -> None:
    gate = admission(snapshot("r1", max_ongoing_requests=3), snapshot("r2", max_ongoing_requests=3))
    await gate.admit("", LONG_S)
    admitted = await gate.admit("", LONG_S)
    assert admitted.cold is False
    assert {in_flight(gate, "r1"), in_flight(gate, "r2")} == {1}


async def test_release_frees_the_slot() -> None:
    gate = admission(snapshot("r1"))
    admitted = await gate.admit("m", LONG_S)
    gate.release(admitted, "m")
    assert in_flight(gate, "r1") == 0
    assert gate.view.replicas["r1"].models["m"].in_flight == 0
    assert (await gate.admit("m", LONG_S)).replica_id == "r1"


async def test_a_cold_dispatch_carries_the_routers_count_of_the_model_a_warm_one_none() -> None:
    gate = admission(snapshot("r1", ["a"], max_ongoing_requests=8))
    reports.asked(gate.view, "m", 4)  # requests this router counted before (served elsewhere)
    cold = await gate.admit("m", LONG_S)
    assert (cold.cold, cold.demand) == (True, 5)  # its count, this request included
    warm = await gate.admit("m", LONG_S)
    assert (warm.cold, warm.demand) == (False, 0)
    resident = await gate.admit("a", LONG_S)  # held by the replica's report: warm
    assert (resident.cold, resident.demand) == (False, 0)
    assert (await gate.admit("", LONG_S)).demand == 0  # no model: nothing to count


async def test_a_cold_dispatch_from_the_queue_carries_the_count_at_its_dispatch() -> None:
    gate = admission(snapshot("r1", max_ongoing_requests=1))
    running = await gate.admit("x", LONG_S)
    waiting = asyncio.create_task(gate.admit("m", LONG_S))
    await until(lambda: gate.queued == 1)
    reports.asked(gate.view, "m", 2)  # more requests for it arrived meanwhile (elsewhere)
    gate.release(running, "x")
    await until(waiting.done)
    assert (waiting.result().cold, waiting.result().demand) == (True, 3)


# -- the queue -------------------------------------------------------------------------------


async def test_queued_requests_are_admitted_in_arrival_order_as_capacity_frees() -> None:
    gate = admission(snapshot("r1", max_ongoing_requests=1))
    running = await gate.admit("m", LONG_S)
    waiting = []
    for _ in range(3):
        waiting.append(asyncio.create_task(gate.admit("m", LONG_S)))
        await until(lambda: gate.queued == len(waiting))
    for task in waiting:
        assert not task.done()
        gate.release(running, "m")
        await until(task.done)
        running = task.result()
        assert running.replica_id == "r1"
        assert in_flight(gate, "r1") == 1
        assert not any(t.done() for t in waiting[waiting.index(task) + 1 :])
    assert gate.queued == 0


async def test_a_new_request_joins_the_back_of_a_non_empty_queue() -> None:
    gate = admission(snapshot("r1", max_ongoing_requests=1))
    running = await gate.admit("m", LONG_S)
    first = asyncio.create_task(gate.admit("m", LONG_S))
    await until(lambda: gate.queued == 1)
    second = asyncio.create_task(gate.admit("m", LONG_S))
    await until(lambda: gate.queued == 2)
    gate.release(running, "m")
    await until(first.done)
    assert not second.done()
    gate.release(first.result(), "m")
    await until(second.done)


async def test_a_request_waiting_for_a_busy_model_does_not_hold_up_others() -> None:
    gate = admission(snapshot("r1", ["m"]), snapshot("r2", ["x"]))
    running = await gate.admit("m", LONG_S)
    blocked = asyncio.create_task(gate.admit("m", LONG_S))
    await until(lambda: gate.queued == 1)
    other = await gate.admit("y", LONG_S)
    assert other.replica_id == "r2"
    assert not blocked.done()
    gate.release(running, "m")
    await until(blocked.done)
    assert blocked.result().replica_id == "r1"
    assert blocked.result().cold is False


async def test_a_replica_joining_admits_queued_requests_when_offered() -> None:
    gate = admission(snapshot("r1", max_ongoing_requests=1))
    await gate.admit("m", LONG_S)
    waiting = asyncio.create_task(gate.admit("n", LONG_S))
    await until(lambda: gate.queued == 1)
    gate.view.apply_report(snapshot("r2"), gate.clock())
    gate.offer()
    await until(waiting.done)
    assert waiting.result().replica_id == "r2"


async def test_beyond_max_queued_a_request_is_refused_at_once() -> None:
    gate = admission(snapshot("r1", max_ongoing_requests=1), max_queued=2)
    await gate.admit("m", LONG_S)
    waiting = [asyncio.create_task(gate.admit("m", LONG_S)) for _ in range(2)]
    await until(lambda: gate.queued == 2)
    with pytest.raises(QueueFull):
        await gate.admit("m", LONG_S)
    with pytest.raises(QueueFull):
        await gate.admit("other", LONG_S)
    assert gate.queued == 2
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_a_request_times_out_in_the_queue_without_taking_a_slot() -> None:
    gate = admission(snapshot("r1", max_ongoing_requests=1))
    running = await gate.admit("m", LONG_S)
    with pytest.raises(QueueTimeout):
        await gate.admit("m", 0.05)
    assert in_flight(gate, "r1") == 1
    gate.release(running, "m")
    assert in_flight(gate, "r1") == 0
    assert gate.queued == 0


async def test_a_timed_out_request_gives_up_its_place_in_the_queue() -> None:
    gate = admission(snapshot("r1", max_ongoing_requests=1), max_queued=1)
    await gate.admit("m", LONG_S)
    with pytest.raises(QueueTimeout):
        await gate.admit("m", 0.05)
    # Nothing is waiting any more, so the next request may wait too.
    with pytest.raises(QueueTimeout):
        await gate.admit("m", 0.05)
    assert gate.queued == 0


async def test_a_cancelled_waiter_is_never_admitted() -> None:
    gate = admission(snapshot("r1", max_ongoing_requests=1))
    running = await gate.admit("m", LONG_S)
    waiting = asyncio.create_task(gate.admit("m", LONG_S))
    await until(lambda: gate.queued == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.release(running, "m")
    assert in_flight(gate, "r1") == 0
    assert gate.queued == 0


async def test_a_waiter_cancelled_as_it_is_admitted_does_not_leak_its_slot() -> None:
    gate = admission(snapshot("r1", max_ongoing_requests=1))
    running = await gate.admit("m", LONG_S)
    waiting = asyncio.create_task(gate.admit("m", LONG_S))
    await until(lambda: gate.queued == 1)
    gate.release(running, "m")
    waiting.cancel()
    try:
        admitted = await waiting
    except asyncio.CancelledError:
        pass
    else:
        # The caller got the slot after all, so it must give it back.
        gate.release(admitted, "m")
    assert in_flight(gate, "r1") == 0


# -- no replica ------------------------------------------------------------------------------


async def test_an_empty_cluster_has_no_replica() -> None:
    gate = admission()
    with pytest.raises(NoReplica):
        await gate.admit("m", LONG_S)
    with pytest.raises(NoReplica):
        await gate.admit("", LONG_S)
    assert gate.queued == 0


@pytest.mark.parametrize("how", ["draining", "down"])
async def test_a_cluster_without_a_routable_replica_has_no_replica(how: str) -> None:
    gate = admission(snapshot("r1", ["m"], draining=how == "draining"))
    if how == "down":
        gate.view.mark_down("r1")
    with pytest.raises(NoReplica):
        await gate.admit("m", LONG_S)
    assert gate.queued == 0


async def test_a_queued_request_is_rejected_when_every_replica_goes_down() -> None:
    gate = admission(snapshot("r1", max_ongoing_requests=1))
    await gate.admit("m", LONG_S)
    waiting = asyncio.create_task(gate.admit("m", 0.5))
    await until(lambda: gate.queued == 1)
    gate.view.mark_down("r1")
    gate.offer()
    with pytest.raises(NoReplica):
        await waiting
