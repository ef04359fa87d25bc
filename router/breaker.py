"""Per-replica circuit breaking and the retry budget: how the router stops leaning on a
replica that keeps failing, and keeps its retries from multiplying load during an outage.

Pure and synchronous; time is passed in. Rules they keep:
- a breaker opens after `failure_threshold` consecutive failures (a refused or broken
  connection, a request timeout; an HTTP error answer is the deployment's, not a failure of the
  replica), whatever its reports say, and stays open for a cool-down that doubles with each
  opening in a row, up to `max_cooldown_s`;
- after the cool-down it is half-open: one request at a time probes the replica; the probe's
  success closes the breaker, its failure opens it again for the next, longer cool-down;
- a success resets the count of consecutive failures; a new incarnation of the replica (a
  restarted process) starts with a closed breaker;
- retries stay within `ratio` of the requests that arrived over the last `window_s`, plus
  `min_per_s` retries a second that are always allowed (Finagle's RetryBudget: 20 %, 10 a
  second, over 10 s). The reserve absorbs the burst of retries when one replica dies with
  requests in flight; the ratio caps a storm when every attempt fails.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

__all__ = ["BreakerState", "CircuitBreaker", "RetryBudget"]


class BreakerState(enum.Enum):
    CLOSED = "closed"  # routable as its reports say
    OPEN = "open"  # out of routing until the cool-down ends
    HALF_OPEN = "half_open"  # one probe request at a time


@dataclass(slots=True)
class CircuitBreaker:
    failure_threshold: int = 5
    cooldown_s: float = 2.0
    max_cooldown_s: float = 30.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0  # consecutive, since the last success
    openings: int = 0  # in a row, without a closing between
    open_until: float = 0.0

    def failed(self, now: float) -> bool:
        """A request to the replica failed; True if that opened the breaker."""
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.failures >= self.failure_threshold
        ):
            self._open(now)
            return True
        return False

    def succeeded(self) -> bool:
        """The replica answered a request; True if that closed the breaker (a probe did)."""
        self.failures = 0
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.CLOSED
            self.openings = 0
            return True
        return False  # an answer to a request sent before it opened proves little

    def cooled_down(self, now: float) -> bool:
        """Half-open the breaker if its cool-down is over; True if it just did."""
        if self.state is BreakerState.OPEN and now >= self.open_until:
            self.state = BreakerState.HALF_OPEN
            return True
        return False

    def reset(self) -> None:
        """A new process behind the replica: nothing of the old one's failures applies."""
        self.state = BreakerState.CLOSED
        self.failures = self.openings = 0
        self.open_until = 0.0

    def _open(self, now: float) -> None:
        cooldown = min(self.max_cooldown_s, self.cooldown_s * 2**self.openings)
        self.state = BreakerState.OPEN
        self.openings += 1
        self.open_until = now + cooldown


@dataclass(slots=True)
class RetryBudget:
    ratio: float = 0.2
    min_per_s: float = 10.0
    window_s: int = 10
    # Per whole second of the window, oldest first: [second, requests, retries].
    _seconds: deque[list[int]] = field(default_factory=deque)
    _requests: int = 0  # sums over the window
    _retries: int = 0

    def requested(self, now: float) -> None:
        """A request arrived (a retry is not a new request)."""
        self._bucket(now)[1] += 1
        self._requests += 1

    def try_retry(self, now: float) -> bool:
        """Whether a failed request may be tried again now; if so the retry is counted."""
        bucket = self._bucket(now)
        allowed = self.min_per_s * self.window_s + self.ratio * self._requests
        if self._retries + 1 > allowed:
            return False
        bucket[2] += 1
        self._retries += 1
        return True

    def _bucket(self, now: float) -> list[int]:
        second = int(now)
        seconds = self._seconds
        while seconds and seconds[0][0] <= second - self.window_s:
            _, requests, retries = seconds.popleft()
            self._requests -= requests
            self._retries -= retries
        if not seconds or seconds[-1][0] < second:
            seconds.append([second, 0, 0])
        return seconds[-1]
