from hypothesis import given
from hypothesis import strategies as st

from router.breaker import BreakerState, CircuitBreaker, RetryBudget


def test_the_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3)
    assert not breaker.failed(0.0)
    assert not breaker.failed(0.1)
    breaker.succeeded()  # a success in between: the count starts again
    assert not breaker.failed(0.2)
    assert not breaker.failed(0.3)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failed(0.4)
    assert breaker.state is BreakerState.OPEN
    assert breaker.open_until == 0.4 + breaker.cooldown_s


def test_after_the_cooldown_one_probe_decides() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=2.0, max_cooldown_s=5.0)
    assert breaker.failed(10.0)
    assert not breaker.cooled_down(11.9)
    assert breaker.cooled_down(12.0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.cooled_down(12.5)  # once
    assert breaker.failed(12.5)  # the probe failed: open again, for twice as long
    assert breaker.open_until == 16.5
    assert breaker.cooled_down(16.5)
    assert breaker.failed(16.6)
    assert breaker.open_until == 21.6  # capped at max_cooldown_s
    assert breaker.cooled_down(21.6)
    assert breaker.succeeded()  # the probe answered: closed, and the cool-down starts over
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failed(30.0)
    assert breaker.open_until == 32.0


def test_a_late_answer_does_not_close_an_open_breaker_and_reset_does() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    breaker.failed(0.0)
    assert not breaker.succeeded()
    assert breaker.state is BreakerState.OPEN
    breaker.reset()
    assert breaker == CircuitBreaker(failure_threshold=1)


@given(st.lists(st.sampled_from(["fail", "ok", "tick"]), max_size=60))
def test_the_breaker_is_open_exactly_when_failures_say_so(events: list[str]) -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=1.0, max_cooldown_s=4.0)
    now = 0.0
    for event in events:
        now += 0.5
        before = breaker.state
        if event == "fail":
            opened = breaker.failed(now)
            assert opened is (
                breaker.state is BreakerState.OPEN and before is not BreakerState.OPEN
            )
        elif event == "ok":
            closed = breaker.succeeded()
            assert closed is (before is BreakerState.HALF_OPEN)
            assert breaker.failures == 0
        else:
            breaker.cooled_down(now)
            assert breaker.state is not BreakerState.OPEN or now < breaker.open_until
        if breaker.state is BreakerState.OPEN:
            assert breaker.open_until <= now + 4.0
        if breaker.state is BreakerState.CLOSED:
            assert breaker.failures < 3


def test_the_retry_budget_has_a_reserve_then_a_share_of_the_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=0.3, window_s=10)  # a reserve of 3 retries
    assert [budget.try_retry(0.0) for _ in range(4)] == [True, True, True, False]
    for _ in range(10):
        budget.requested(1.0)
    assert [budget.try_retry(1.5) for _ in range(3)] == [True, True, False]  # 20 % of 10
    assert not budget.try_retry(9.9)
    assert budget.try_retry(10.0)  # the first second's retries left the window
    assert budget.try_retry(10.0)
    assert budget.try_retry(10.0)
    assert not budget.try_retry(10.0)


@given(st.lists(st.tuples(st.floats(0, 0.9), st.booleans()), max_size=200))
def test_a_retry_is_allowed_only_within_the_reserve_plus_the_share_of_its_window(
    events: list[tuple[float, bool]],
) -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=0.5, window_s=5)
    now = 0.0
    log: list[tuple[float, str]] = []
    for step, is_retry in events:
        now += step
        if not is_retry:
            budget.requested(now)
            log.append((now, "request"))
        elif budget.try_retry(now):
            log.append((now, "retry"))
            window = [kind for t, kind in log if int(t) > int(now) - 5]
            assert window.count("retry") <= 0.5 * 5 + 0.2 * window.count("request")
