from __future__ import annotations

from broker.engine.backoff import retry_delay_us

S = 1_000_000


def test_grows_exponentially_within_jitter_and_is_capped() -> None:
    for attempt, ceiling in [(1, 1 * S), (2, 2 * S), (3, 4 * S), (5, 16 * S), (30, 600 * S)]:
        for _ in range(50):
            delay = retry_delay_us(attempt, 1 * S, 600 * S)
            assert max(1 * S, ceiling // 2) <= delay <= ceiling


def test_never_below_the_minimum() -> None:
    assert min(retry_delay_us(2, 5 * S, 600 * S) for _ in range(100)) >= 5 * S


def test_zero_backoff_is_zero() -> None:
    assert retry_delay_us(7, 0, 0) == 0


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert retry_delay_us(10_000, S, 600 * S) <= 600 * S
