"""The delivery decisions, without a database: what a failed attempt makes of a delivery."""

from __future__ import annotations

from broker.delivery.failure import (
    HISTORY_MAX_ATTEMPTS,
    FailingLease,
    Failure,
    after_failure,
    retry_delay_us,
)
from broker.delivery.records import DeliveryKey
from broker.domain import (
    AttemptOutcome,
    AttemptRecord,
    DeadReason,
    DeliveryState,
    StartPosition,
    Subscription,
)

S = 1_000_000
NOW = 1_800_000_000 * S


def subscription(**overrides: object) -> Subscription:
    values: dict[str, object] = {
        "name": "jobs",
        "filters": ("job.*",),
        "ack_deadline_us": 30 * S,
        "max_attempts": 3,
        "min_backoff_us": 1 * S,
        "max_backoff_us": 60 * S,
        "max_in_flight": 0,
        "ordered": False,
        "retention_us": 7 * 24 * 3600 * S,
        "start_position": StartPosition.NEW,
        "id": 7,
    } | overrides
    return Subscription(**values)  # type: ignore[arg-type]


def lease(attempt: int = 1, history: tuple[AttemptRecord, ...] = ()) -> FailingLease:
    return FailingLease(
        key=DeliveryKey(7, 11),
        attempt=attempt,
        leased_at_us=NOW - 2 * S,
        consumer="worker#1",
        history=history,
        ordering_key="k",
    )


def highest(low: int, high: int) -> int:
    return high


def test_a_nack_is_retried_after_the_backoff_and_recorded() -> None:
    after = after_failure(
        lease(), Failure(AttemptOutcome.NACKED, "boom"), subscription(), NOW, highest
    )
    assert (after.state, after.ready_at_us, after.dead_reason) == (
        DeliveryState.SCHEDULED,
        NOW + 1 * S,
        DeadReason.NONE,
    )
    (record,) = after.history
    assert (record.attempt, record.outcome, record.error, record.consumer) == (
        1,
        AttemptOutcome.NACKED,
        "boom",
        "worker#1",
    )
    assert record.delivered_at_us == NOW - 2 * S and record.ended_at_us == NOW
    assert after.error == "boom"


def test_the_last_attempt_dies_exhausted_and_a_terminal_nack_dies_at_once() -> None:
    nack = Failure(AttemptOutcome.NACKED)
    assert after_failure(lease(3), nack, subscription(), NOW, highest).dead_reason == (
        DeadReason.ATTEMPTS_EXHAUSTED
    )
    terminal = after_failure(
        lease(1), Failure(AttemptOutcome.NACKED, terminal=True), subscription(), NOW, highest
    )
    assert (terminal.state, terminal.dead_reason) == (
        DeliveryState.DEAD,
        DeadReason.NACKED_TERMINAL,
    )


def test_a_departed_consumer_gives_back_at_once_and_an_explicit_delay_wins() -> None:
    released = Failure(AttemptOutcome.RELEASED, immediate=True)
    after = after_failure(lease(), released, subscription(), NOW, highest)
    assert (after.state, after.ready_at_us) == (DeliveryState.READY, NOW)
    delayed = Failure(AttemptOutcome.NACKED, delay_us=30 * S)
    assert after_failure(lease(), delayed, subscription(), NOW, highest).ready_at_us == NOW + 30 * S


def test_a_retry_table_replaces_the_backoff_and_its_last_entry_repeats() -> None:
    table = subscription(retry_delays_us=(5 * S, 60 * S), max_attempts=10)
    expired = Failure(AttemptOutcome.EXPIRED)
    delays = [
        after_failure(lease(n), expired, table, NOW, highest).ready_at_us - NOW for n in (1, 2, 5)
    ]
    assert delays == [5 * S, 60 * S, 60 * S]


def test_a_deleted_subscription_dead_letters_and_the_history_keeps_the_latest() -> None:
    old = tuple(
        AttemptRecord(n, NOW, NOW, "w", AttemptOutcome.EXPIRED) for n in range(HISTORY_MAX_ATTEMPTS)
    )
    after = after_failure(lease(21, old), Failure(AttemptOutcome.EXPIRED), None, NOW, highest)
    assert after.state is DeliveryState.DEAD
    assert len(after.history) == HISTORY_MAX_ATTEMPTS and after.history[-1].attempt == 21


def test_only_a_nack_is_too_late_for_an_expired_lease() -> None:
    assert not Failure(AttemptOutcome.NACKED).takes_expired_leases
    assert Failure(AttemptOutcome.EXPIRED).takes_expired_leases
    assert Failure(AttemptOutcome.RELEASED).takes_expired_leases


def test_backoff_doubles_within_its_bounds_with_jitter_drawn_by_the_caller() -> None:
    assert [retry_delay_us(n, S, 600 * S, highest) for n in (1, 2, 3, 4)] == [
        S,
        2 * S,
        4 * S,
        8 * S,
    ]
    assert retry_delay_us(4, S, 600 * S, lambda low, high: low) == 4 * S  # equal jitter: half
    assert retry_delay_us(100, S, 600 * S, highest) == 600 * S
