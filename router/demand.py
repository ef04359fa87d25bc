"""What the router learns about demand: how often each model is asked for, which models have
requests waiting and since when, and how long loads and inferences take.

Pure: the router (or the simulator) feeds it arrivals, waits and completions with their
times; the policy reads it. Frequencies are exact counts over a sliding window that halves
every `window` arrivals (TinyLFU's aging), so memory stays bounded by the models seen recently
and an old favourite fades out within a few windows. A model's frequency is the larger of this
router's count and the hits a replica last reported for it (`observe_hits`, remembered after
the model leaves): with several routers, each counts only its share of the traffic, but the
replicas count all of it, so every router knows a favourite it has seen little of. Requests
per minute (`ArrivalRate`, for operators; the policy does not read it) are counted once
`track_rates` gives it a clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

__all__ = ["ArrivalRate", "Demand"]

_EWMA = 0.1


class Demand:
    _rates: ArrivalRate | None = None
    _clock: Callable[[], float] | None = None

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
        self.reported: dict[str, int] = {}  # model -> hits a replica last reported for it
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
        count = self.counts.get(model_id, 0)
        reported = self.reported.get(model_id, 0)
        return reported if reported > count else count

    def observe_hits(self, model_id: str, hits: float) -> None:
        """A replica reported `hits` for `model_id` (every router's requests for it there)."""
        if hits >= 1.0:
            self.reported[model_id] = int(hits)

    def arrived(self, model_id: str) -> None:
        """A request for `model_id` came in (count it once, however often it is re-offered)."""
        if not model_id:
            return
        self.version += 1
        self.counts[model_id] = self.counts.get(model_id, 0) + 1
        if self._rates is not None and self._clock is not None:
            self._rates.arrived(model_id, self._clock())
        self._arrivals_in_window += 1
        if self._arrivals_in_window >= self.window:
            self._age()

    def _age(self) -> None:
        self._arrivals_in_window //= 2
        self.counts = {m: c >> 1 for m, c in self.counts.items() if c > 1}
        self.reported = {m: c >> 1 for m, c in self.reported.items() if c > 1}

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

    def track_rates(self, clock: Callable[[], float], *, window_s: float = 60.0) -> ArrivalRate:
        """Count each model's arrivals over the last `window_s` too, timed on `clock`
        (seconds); the counter, which `per_minute` reads."""
        if self._rates is None:
            self._rates, self._clock = ArrivalRate(window_s=window_s), clock
        return self._rates

    def per_minute(self, now: float) -> dict[str, float]:
        """Requests per minute of each model asked for recently ({} without `track_rates`)."""
        return {} if self._rates is None else self._rates.per_minute(now)


class ArrivalRate:
    """Arrivals of each model over a sliding window, in `buckets` buckets of time.

    Pure: arrivals and readings carry their time (seconds, any epoch). A rate is the count of
    the buckets that overlap the last `window_s`, scaled to a minute: exact to a bucket. Memory
    is bounded by the models asked for within the window, at most `buckets` counts each.
    """

    def __init__(self, *, window_s: float = 60.0, buckets: int = 6) -> None:
        if window_s <= 0 or buckets < 1:
            raise ValueError(f"window_s must be positive and buckets >= 1: {window_s}, {buckets}")
        self.window_s = window_s
        self.buckets = buckets
        self._bucket_s = window_s / buckets
        self._counts: dict[str, deque[list[int]]] = {}  # model id -> [bucket index, count]
        self._swept_at = -math.inf

    def arrived(self, model_id: str, now: float) -> None:
        index = math.floor(now / self._bucket_s)
        counts = self._counts.get(model_id)
        if counts is None:
            counts = self._counts[model_id] = deque()
        if counts and counts[-1][0] == index:
            counts[-1][1] += 1
        else:
            counts.append([index, 1])
            while counts[0][0] <= index - self.buckets:
                counts.popleft()
        if now - self._swept_at >= self.window_s:
            self._sweep(index)
            self._swept_at = now

    def per_minute(self, now: float) -> dict[str, float]:
        """Each model with arrivals in the window: its arrivals per minute."""
        index = math.floor(now / self._bucket_s)
        self._sweep(index)
        scale = 60.0 / self.window_s
        return {
            model_id: scale * sum(n for i, n in counts if i > index - self.buckets)
            for model_id, counts in self._counts.items()
        }

    def _sweep(self, index: int) -> None:
        """Forget the models with no arrival in the window ending at bucket `index`."""
        oldest = index - self.buckets
        for model_id in [m for m, counts in self._counts.items() if counts[-1][0] <= oldest]:
            del self._counts[model_id]
