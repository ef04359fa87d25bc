"""The supervisor's restart backoff."""

from __future__ import annotations

from router.launch._backoff import restart_delay_s


def test_restart_backoff_doubles_up_to_30_s() -> None:
    delays = []
    delay = None
    for _ in range(10):
        delay = restart_delay_s(delay, uptime_s=1.0, exit_code=1)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_restart_backoff_resets_after_ten_seconds_up() -> None:
    assert restart_delay_s(30.0, uptime_s=9.9, exit_code=1) == 30.0
    assert restart_delay_s(30.0, uptime_s=10.0, exit_code=1) == 0.5


def test_config_errors_back_off_longer() -> None:
    assert restart_delay_s(None, uptime_s=0.1, exit_code=2) == 5.0
    assert restart_delay_s(5.0, uptime_s=0.1, exit_code=2) == 10.0
