"""Which replicas failed to load which model lately, so the router stops sending a model where
its load fails, and stops sending it anywhere once it failed everywhere it was tried.

Pure and synchronous: time is passed in (router clock, seconds). Rules it keeps (ModelMesh
remembers load failures the same way):
- a failure is remembered per (model, replica) for `cooldown_s`; the model is placed on other
  replicas meanwhile (`failed_on`), and the record goes when the model loads there or the
  replica restarts;
- once a model failed on `max_failures` replicas within the cool-down, or on every routable
  replica, requests for it are refused at once with the loader's message (`exhausted`): no
  retry storm, no queue of doomed requests; the refusal ends when the oldest record expires.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass

__all__ = ["LoadFailureRecord", "LoadFailures"]


@dataclass(frozen=True, slots=True)
class LoadFailureRecord:
    model_id: str
    replica_id: str
    message: str  # the loader's error, as the replica reported it
    at: float  # router clock


class LoadFailures:
    def __init__(self, *, cooldown_s: float = 30.0, max_failures: int = 3) -> None:
        self.cooldown_s = cooldown_s
        self.max_failures = max_failures
        self._by_model: dict[str, dict[str, LoadFailureRecord]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_model)

    def record(self, model_id: str, replica_id: str, message: str, at: float) -> None:
        """The load of `model_id` on `replica_id` failed at `at` (a later record wins)."""
        on = self._by_model.setdefault(model_id, {})
        known = on.get(replica_id)
        if known is None or known.at <= at:
            on[replica_id] = LoadFailureRecord(model_id, replica_id, message, at)

    def loaded(self, model_id: str, replica_id: str) -> None:
        """The model is loaded there after all: that failure no longer counts."""
        on = self._by_model.get(model_id)
        if on is not None and on.pop(replica_id, None) is not None and not on:
            del self._by_model[model_id]

    def forget_replica(self, replica_id: str) -> None:
        """A new process (or none) behind `replica_id`: its failures no longer apply."""
        for model_id in [m for m, on in self._by_model.items() if replica_id in on]:
            self.loaded(model_id, replica_id)

    def failed_on(self, model_id: str, now: float) -> frozenset[str]:
        """The replicas where `model_id` failed to load within the cool-down."""
        on = self._current(model_id, now)
        return frozenset(on) if on else frozenset()

    def exhausted(self, model_id: str, now: float, routable: AbstractSet[str]) -> str | None:
        """The latest loader message, if `model_id` failed on `max_failures` replicas or on
        every routable one within the cool-down; None while it may still load somewhere."""
        on = self._current(model_id, now)
        if not on:
            return None
        if len(on) < self.max_failures and not (routable and routable <= on.keys()):
            return None
        latest = max(on.values(), key=lambda r: r.at)
        return latest.message

    def retry_after_s(self, model_id: str, now: float) -> float:
        """Seconds until the oldest of the model's records expires (0: none)."""
        on = self._current(model_id, now)
        if not on:
            return 0.0
        return max(0.0, min(r.at for r in on.values()) + self.cooldown_s - now)

    def records(self, now: float) -> list[LoadFailureRecord]:
        """Every current record, oldest first."""
        current = [r for m in list(self._by_model) for r in (self._current(m, now) or {}).values()]
        return sorted(current, key=lambda r: r.at)

    def _current(self, model_id: str, now: float) -> dict[str, LoadFailureRecord] | None:
        on = self._by_model.get(model_id)
        if on is None:
            return None
        for replica_id in [r for r, record in on.items() if now - record.at >= self.cooldown_s]:
            del on[replica_id]
        if not on:
            del self._by_model[model_id]
            return None
        return on
