"""Failure: what a delivery becomes when an attempt ends without an ack.

Pure functions of a lease's facts, what happened and the subscription's
settings (the jitter of a backoff is drawn through the function the caller
passes): retried after an explicit delay, at once (a consumer that left) or
after the subscription's backoff, or dead when terminal or out of attempts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from broker.delivery.records import DeliveryKey
from broker.domain import (
    AttemptOutcome,
    AttemptRecord,
    DeadReason,
    DeliveryState,
    Subscription,
)

#: The history keeps this many attempts, the latest.
HISTORY_MAX_ATTEMPTS = 20
#: Draws an integer in [low, high]: `random.Random.randint` of the caller's generator.
Draw = Callable[[int, int], int]


@dataclass(frozen=True, slots=True)
class Failure:
    """How an attempt ended without an ack.

    A consumer's nack (with an error, an explicit delay or `terminal`), a
    consumer that left (`immediate`: ready again at once), or a lease whose
    deadline passed.
    """

    outcome: AttemptOutcome
    error: str = ""
    delay_us: int | None = None
    terminal: bool = False
    immediate: bool = False

    @property
    def takes_expired_leases(self) -> bool:
        """Whether a lease past its deadline is still this failure's to settle.

        A consumer's nack comes too late once the deadline has passed; the
        reaper's expiry and a departing consumer's release take the lease
        whatever its deadline.
        """
        return self.outcome is not AttemptOutcome.NACKED


@dataclass(frozen=True, slots=True)
class FailingLease:
    """A live lease about to fail: what the decision needs to know of its delivery."""

    key: DeliveryKey
    attempt: int
    leased_at_us: int | None
    consumer: str
    history: tuple[AttemptRecord, ...]
    ordering_key: str | None


@dataclass(frozen=True, slots=True)
class AfterFailure:
    """What a delivery becomes: retried (scheduled or ready) or dead, with its history."""

    key: DeliveryKey
    ordering_key: str | None
    state: DeliveryState
    ready_at_us: int
    dead_reason: DeadReason
    error: str | None
    history: tuple[AttemptRecord, ...]


def retry_delay_us(attempt: int, min_us: int, max_us: int, draw: Draw) -> int:
    """Delay before attempt `attempt + 1`: min·2^(attempt-1), capped at max, jittered.

    The result lies between half the exponential value (but never below
    `min_us`) and the value itself ("equal jitter"), so that deliveries that
    failed together (a downstream outage) do not all come back at one instant.
    """
    exponent = max(attempt - 1, 0)
    ceiling = max_us if exponent >= 62 else min(max_us, min_us * (1 << exponent))
    floor = min(ceiling, max(min_us, ceiling // 2))
    return draw(floor, ceiling) if ceiling > floor else ceiling


def subscription_retry_delay_us(subscription: Subscription, attempt: int, draw: Draw) -> int:
    """The subscription's delay after a failed attempt: its table if it has one, else backoff."""
    table = subscription.retry_delays_us
    if table:
        return table[min(attempt, len(table)) - 1]
    return retry_delay_us(attempt, subscription.min_backoff_us, subscription.max_backoff_us, draw)


def after_failure(
    lease: FailingLease,
    failure: Failure,
    subscription: Subscription | None,
    now_us: int,
    draw: Draw,
) -> AfterFailure:
    """Dead when terminal or out of attempts (or the subscription is gone); else retried.

    A retry waits for the explicit delay, or none for a consumer that left,
    or the subscription's backoff; a retry due now is ready at once.
    """
    history = (
        *lease.history,
        AttemptRecord(
            attempt=lease.attempt,
            delivered_at_us=lease.leased_at_us or now_us,
            ended_at_us=now_us,
            consumer=lease.consumer,
            outcome=failure.outcome,
            error=failure.error,
        ),
    )[-HISTORY_MAX_ATTEMPTS:]
    state, ready_at, reason = DeliveryState.DEAD, now_us, DeadReason.NONE
    if failure.terminal:
        reason = DeadReason.NACKED_TERMINAL
    elif subscription is None or lease.attempt >= subscription.max_attempts:
        reason = DeadReason.ATTEMPTS_EXHAUSTED
    else:
        if failure.immediate:
            delay = 0
        elif failure.delay_us is not None:
            delay = failure.delay_us
        else:
            delay = subscription_retry_delay_us(subscription, lease.attempt, draw)
        ready_at = now_us + max(delay, 0)
        state = DeliveryState.SCHEDULED if ready_at > now_us else DeliveryState.READY
    return AfterFailure(
        key=lease.key,
        ordering_key=lease.ordering_key,
        state=state,
        ready_at_us=ready_at,
        dead_reason=reason,
        error=failure.error or None,
        history=history,
    )
