"""What the router learns about demand: how often each model is asked for, which models have
requests waiting and since when, and how long loads and inferences take.

Pure: the router (or the simulator) feeds it arrivals, waits and completions with their
times; the policy reads it. Frequencies are exact counts over a sliding window that halves
every `window` arrivals (TinyLFU's aging), so memory stays bounded by the models seen recently
and an old favourite fades out within a few windows.
"""

from __future__ import annotations

__all__ = ["Demand"]

_EWMA = 0.1


class Demand:
    def __init__(
        self,
        *,
        window: int = 50_000,
        load_s_guess: float = 1.0,
        infer_s_guess: float = 0.05,
    ) -> None:
        self.window = window
        self.version = 0  # changes with every arrival
        self.counts: dict[str, int] = {}
        self._arrivals_in_window = 0
        self.waiting: dict[str, int] = {}
        self.waiting_since: dict[str, float] = {}
        # Cold requests queued ahead of the one being decided that wait for a model slot
        # (admission counts them during each pass over its queue).
        self.slot_waiters = 0
        self.load_s = load_s_guess
        self.infer_s = infer_s_guess
        self._load_seen = False
        self._infer_seen = False

    def frequency(self, model_id: str) -> int:
        return self.counts.get(model_id, 0)

    def arrived(self, model_id: str) -> None:
        """A request for `model_id` came in (count it once, however often it is re-offered)."""
        if not model_id:
            return
        self.version += 1
        self.counts[model_id] = self.counts.get(model_id, 0) + 1
        self._arrivals_in_window += 1
        if self._arrivals_in_window >= self.window:
            self._age()

    def _age(self) -> None:
        self._arrivals_in_window //= 2
        self.counts = {m: c >> 1 for m, c in self.counts.items() if c > 1}

    def wait_started(self, model_id: str, now: float) -> None:
        count = self.waiting.get(model_id, 0)
        if count == 0:
            self.waiting_since[model_id] = now
        self.waiting[model_id] = count + 1

    def wait_ended(self, model_id: str) -> None:
        count = self.waiting.get(model_id, 0) - 1
        if count <= 0:
            self.waiting.pop(model_id, None)
            self.waiting_since.pop(model_id, None)
        else:
            self.waiting[model_id] = count

    def observe_inference(self, duration_s: float) -> None:
        """A warm request took `duration_s` from dispatch to answer."""
        if self._infer_seen:
            self.infer_s += _EWMA * (duration_s - self.infer_s)
        else:
            self.infer_s, self._infer_seen = duration_s, True

    def observe_load(self, duration_s: float) -> None:
        """A model load took `duration_s` (reported by a replica, or timed on a cold request)."""
        if self._load_seen:
            self.load_s += _EWMA * (duration_s - self.load_s)
        else:
            self.load_s, self._load_seen = duration_s, True
