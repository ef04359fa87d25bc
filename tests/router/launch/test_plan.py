"""The launcher's pure reconcile decisions: plans and config differences."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.config import DeploymentConfig, RouterConfig
from router.launch._plan import (
    Plan,
    ReplicaRecord,
    changed_keys,
    plan_reconcile,
    replica_id,
    replica_number,
    same_spec,
)

SPEC = DeploymentConfig(import_path="examples.tenants:TenantModels", num_replicas=4)
NEW_SPEC = dataclasses.replace(SPEC, max_num_models_per_replica=5)


def records(*numbers: int, spec: DeploymentConfig = SPEC) -> list[ReplicaRecord]:
    return [ReplicaRecord(replica_id=replica_id(n), spec=spec) for n in numbers]


def ids(*numbers: int) -> list[str]:
    return [replica_id(n) for n in numbers]


def execute(
    current: list[ReplicaRecord], plan: Plan, spec: DeploymentConfig
) -> list[ReplicaRecord]:
    kept = [r for r in current if r.replica_id not in plan.drain]
    return kept + [ReplicaRecord(replica_id=rid, spec=spec) for rid in plan.start]


def test_scale_up_from_nothing_starts_replica_1_to_n() -> None:
    assert plan_reconcile([], SPEC, 4) == Plan(start=ids(1, 2, 3, 4), drain=[])


def test_scale_up_takes_the_next_ids() -> None:
    assert plan_reconcile(records(1, 2, 3, 4), SPEC, 6) == Plan(start=ids(5, 6), drain=[])


def test_scale_down_drains_the_highest_ids() -> None:
    assert plan_reconcile(records(1, 2, 3, 4), SPEC, 2) == Plan(start=[], drain=ids(3, 4))


def test_ids_sort_by_number_not_by_text() -> None:
    current = records(*range(1, 12))
    assert plan_reconcile(current, SPEC, 9) == Plan(start=[], drain=ids(10, 11))


def test_same_config_is_a_no_op() -> None:
    plan = plan_reconcile(records(1, 2, 3, 4), SPEC, 4)
    assert plan == Plan(start=[], drain=[])
    assert not plan
    assert plan.describe() == "nothing to do"


def test_num_replicas_alone_is_not_a_spec_change() -> None:
    assert same_spec(SPEC, dataclasses.replace(SPEC, num_replicas=9))
    assert plan_reconcile(records(1, 2), dataclasses.replace(SPEC, num_replicas=9), 2) == Plan(
        start=[], drain=[]
    )


@pytest.mark.parametrize(
    "change",
    [
        {"max_num_models_per_replica": 5},
        {"max_ongoing_requests": 2},
        {"max_concurrent_loads": 1},
        {"init_kwargs": {"model_dir": "elsewhere"}},
        {"import_path": "examples.synthetic:SyntheticModels"},
    ],
)
def test_spec_change_surges_new_replicas_then_drains_the_old(change: dict[str, object]) -> None:
    new_spec = dataclasses.replace(SPEC, **change)  # type: ignore[arg-type]
    plan = plan_reconcile(records(1, 2, 3, 4), new_spec, 4)
    assert plan == Plan(start=ids(5, 6, 7, 8), drain=ids(1, 2, 3, 4))
    assert plan.describe() == (
        "start replica-5, replica-6, replica-7, replica-8; "
        "drain replica-1, replica-2, replica-3, replica-4 once the new replicas are healthy"
    )


def test_spec_change_with_scale_down_starts_only_the_new_count() -> None:
    plan = plan_reconcile(records(1, 2, 3, 4), NEW_SPEC, 2)
    assert plan == Plan(start=ids(5, 6), drain=ids(1, 2, 3, 4))


def test_second_spec_change_reuses_the_ids_freed_by_the_first() -> None:
    assert plan_reconcile(records(5, 6, 7, 8, spec=NEW_SPEC), SPEC, 4) == Plan(
        start=ids(1, 2, 3, 4), drain=ids(5, 6, 7, 8)
    )


def test_freed_ids_are_reused_lowest_first() -> None:
    assert plan_reconcile(records(1, 3, 6), SPEC, 5) == Plan(start=ids(2, 4), drain=[])


def test_a_draining_replica_keeps_its_id_and_is_not_counted() -> None:
    current = [*records(1, 2), ReplicaRecord(replica_id=replica_id(3), spec=SPEC, draining=True)]
    assert plan_reconcile(current, SPEC, 4) == Plan(start=ids(4, 5), drain=[])


def test_a_superseded_rollout_keeps_what_already_matches() -> None:
    half_done = records(1, 2, 3, 4) + records(5, 6, spec=NEW_SPEC)
    assert plan_reconcile(half_done, NEW_SPEC, 4) == Plan(start=ids(7, 8), drain=ids(1, 2, 3, 4))


def test_reverting_a_rollout_drains_the_new_replicas_only() -> None:
    half_done = records(1, 2, 3, 4) + records(5, 6, spec=NEW_SPEC)
    assert plan_reconcile(half_done, SPEC, 4) == Plan(start=[], drain=ids(5, 6))


def test_desired_zero_drains_everything() -> None:
    plan = plan_reconcile(records(1, 2, 3), SPEC, 0)
    assert plan == Plan(start=[], drain=ids(1, 2, 3))
    assert plan.describe() == "drain replica-1, replica-2, replica-3"


def test_desired_zero_from_nothing_is_a_no_op() -> None:
    assert plan_reconcile([], SPEC, 0) == Plan(start=[], drain=[])


def test_negative_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="desired_count"):
        plan_reconcile([], SPEC, -1)


def test_replica_ids_round_trip() -> None:
    assert replica_id(12) == "replica-12"
    assert replica_number("replica-12") == 12
    for bad in ("replica-0", "replica-x", "worker-1", "replica-", "replica--1"):
        with pytest.raises(ValueError, match="replica id"):
            replica_number(bad)
    with pytest.raises(ValueError, match="start at 1"):
        replica_id(0)


SPECS = st.sampled_from([SPEC, NEW_SPEC])


@st.composite
def clusters(draw: st.DrawFn) -> list[ReplicaRecord]:
    numbers = draw(st.lists(st.integers(1, 12), unique=True, max_size=10))
    return [
        ReplicaRecord(replica_id=replica_id(n), spec=draw(SPECS), draining=draw(st.booleans()))
        for n in numbers
    ]


@given(current=clusters(), spec=SPECS, count=st.integers(0, 8))
def test_a_plan_converges_in_one_step(
    current: list[ReplicaRecord], spec: DeploymentConfig, count: int
) -> None:
    plan = plan_reconcile(current, spec, count)
    taken = {r.replica_id for r in current}
    live = {r.replica_id for r in current if not r.draining}
    assert not taken & set(plan.start), "a new replica reuses an id still in use"
    assert set(plan.drain) <= live, "only running replicas are drained"
    after = execute(current, plan, spec)
    live_after = [r for r in after if not r.draining]
    assert len(live_after) == count
    assert all(same_spec(r.spec, spec) for r in live_after)
    assert plan_reconcile(after, spec, count) == Plan(start=[], drain=[])


@given(current=clusters(), spec=SPECS, count=st.integers(0, 8))
def test_matching_replicas_are_never_drained_below_the_count(
    current: list[ReplicaRecord], spec: DeploymentConfig, count: int
) -> None:
    plan = plan_reconcile(current, spec, count)
    matching = [r for r in current if not r.draining and same_spec(r.spec, spec)]
    kept = [r for r in matching if r.replica_id not in plan.drain]
    assert len(kept) == min(count, len(matching))


def test_changed_keys_name_each_difference() -> None:
    old = RouterConfig()
    new = dataclasses.replace(old, port=8001, queue_timeout_s=5.0)
    assert changed_keys(old, new, section="router") == [
        "router.port: 8000 -> 8001",
        "router.queue_timeout_s: 30.0 -> 5.0",
    ]
    assert changed_keys(old, old, section="router") == []
