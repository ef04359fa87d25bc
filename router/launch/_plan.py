"""The launcher's reconcile decisions, kept pure: which replicas to start and drain, and
what an edited config changed.

`plan_reconcile` turns "the replicas I run" and "what the config asks for" into one step of a
reconcile; the launcher executes the step and asks again until the plan is empty.

Invariants:
- A replica's spec is the deployment section it was started with; two specs are the same when
  they differ at most in `num_replicas`.
- A plan never drains a replica that matches the desired spec while fewer than the desired
  count of matching replicas exist, and never starts more than the shortfall.
- Surplus matching replicas are drained highest-numbered first; new replicas take the lowest
  free numbers, never the id of a replica that is still running or draining.
- `Plan.start` runs first; `Plan.drain` waits until the started replicas are healthy, so a
  spec change is a surge (new replicas up) followed by a drain (old replicas out) and never
  drops capacity.
- Executing a plan and planning again yields the empty plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from common.config import DeploymentConfig, RouterConfig

__all__ = [
    "Plan",
    "ReplicaRecord",
    "changed_keys",
    "plan_reconcile",
    "replica_id",
    "replica_number",
    "same_spec",
]

REPLICA_PREFIX = "replica-"


@dataclass(frozen=True, kw_only=True)
class ReplicaRecord:
    """A replica the launcher runs: its id, the deployment it was started with, and whether it
    is on its way out (a draining replica still holds its id)."""

    replica_id: str
    spec: DeploymentConfig
    draining: bool = False


@dataclass(frozen=True)
class Plan:
    """One reconcile step: start `start`, wait until they are healthy, then drain `drain`."""

    start: list[str]
    drain: list[str]

    def __bool__(self) -> bool:
        return bool(self.start or self.drain)

    def describe(self) -> str:
        """The plan in words, e.g. "start replica-5, replica-6; drain replica-2"."""
        if not self:
            return "nothing to do"
        parts = []
        if self.start:
            parts.append(f"start {', '.join(self.start)}")
        if self.drain:
            when = " once the new replicas are healthy" if self.start else ""
            parts.append(f"drain {', '.join(self.drain)}{when}")
        return "; ".join(parts)


def replica_id(number: int) -> str:
    """The id of the `number`th replica: `replica-1`, `replica-2`, ..."""
    if number < 1:
        raise ValueError(f"replica numbers start at 1, got {number}")
    return f"{REPLICA_PREFIX}{number}"


def replica_number(rid: str) -> int:
    """The number in a `replica-<n>` id; `ValueError` for any other id."""
    prefix, _, digits = rid.rpartition("-")
    if f"{prefix}-" != REPLICA_PREFIX or not digits.isdigit() or int(digits) < 1:
        raise ValueError(f"not a launcher replica id: {rid!r}")
    return int(digits)


def same_spec(a: DeploymentConfig, b: DeploymentConfig) -> bool:
    """Whether replicas started with `a` can stand for replicas of `b` (only the count differs)."""
    return dataclasses.replace(a, num_replicas=0) == dataclasses.replace(b, num_replicas=0)


def plan_reconcile(
    current: Sequence[ReplicaRecord], desired_spec: DeploymentConfig, desired_count: int
) -> Plan:
    """The next step from `current` towards `desired_count` replicas of `desired_spec`.

    Replicas with another spec are drained once the replacements are healthy; surplus replicas
    of the desired spec go highest id first; new replicas take the lowest free ids.
    """
    if desired_count < 0:
        raise ValueError(f"desired_count must be >= 0, got {desired_count}")
    live = sorted(
        (r for r in current if not r.draining), key=lambda r: replica_number(r.replica_id)
    )
    matching = [r.replica_id for r in live if same_spec(r.spec, desired_spec)]
    outdated = [r.replica_id for r in live if not same_spec(r.spec, desired_spec)]
    surplus = matching[desired_count:]
    shortfall = max(0, desired_count - len(matching))
    start = _free_ids((r.replica_id for r in current), shortfall)
    drain = sorted([*outdated, *surplus], key=replica_number)
    return Plan(start=start, drain=drain)


def changed_keys(
    old: RouterConfig | DeploymentConfig, new: RouterConfig | DeploymentConfig, *, section: str
) -> list[str]:
    """Lines like "router.port: 8000 -> 8001" for each field that differs."""
    lines = []
    for f in dataclasses.fields(old):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before != after:
            lines.append(f"{section}.{f.name}: {before!r} -> {after!r}")
    return lines


def _free_ids(taken: Iterable[str], count: int) -> list[str]:
    used = {replica_number(rid) for rid in taken}
    ids: list[str] = []
    number = 0
    while len(ids) < count:
        number += 1
        if number not in used:
            ids.append(replica_id(number))
    return ids
