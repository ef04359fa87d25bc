"""When the supervisor restarts a child that exited on its own: the restart backoff, kept pure.

Invariants:
- The first restart waits `INITIAL_RESTART_DELAY_S`; each further one doubles the wait, up to
  `MAX_RESTART_DELAY_S`; a child that stayed up `STABLE_UPTIME_S` starts afresh.
- A child that exited with `CONFIG_ERROR_EXIT_CODE` waits at least
  `CONFIG_ERROR_RESTART_DELAY_S`: it will fail the same way until someone edits something.
"""

from __future__ import annotations

__all__ = ["CONFIG_ERROR_EXIT_CODE", "restart_delay_s"]

CONFIG_ERROR_EXIT_CODE = 2  # a child's "bad config or import error": restarting soon won't help

INITIAL_RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
# A child that stayed up this long was serving, not crash-looping: its backoff starts afresh.
# (The router is the only public port; one that dies after serving must come back at once.)
STABLE_UPTIME_S = 10.0
CONFIG_ERROR_RESTART_DELAY_S = 5.0


def restart_delay_s(previous_delay_s: float | None, *, uptime_s: float, exit_code: int) -> float:
    """How long to wait before restarting a child that exited on its own.

    0.5 s doubling to 30 s; a child that stayed up 10 s starts again at 0.5 s. A config or
    import error (exit code 2) waits at least 5 s: it will fail the same way until someone acts.
    """
    if previous_delay_s is None or uptime_s >= STABLE_UPTIME_S:
        delay = INITIAL_RESTART_DELAY_S
    else:
        delay = min(previous_delay_s * 2, MAX_RESTART_DELAY_S)
    if exit_code == CONFIG_ERROR_EXIT_CODE:
        delay = max(delay, CONFIG_ERROR_RESTART_DELAY_S)
    return delay
