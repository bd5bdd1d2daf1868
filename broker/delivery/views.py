"""What a subscription's rows and log say to a person: an event's state, the counts.

A delivery without a row is read off the log: past the subscription's
position it was acked on its first attempt (a delivery that failed keeps its
row), before the position it waits, scheduled or ready.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from broker.delivery.ordering import event_key
from broker.domain import (
    DeadReason,
    DeliveryInfo,
    DeliveryState,
    StoredEvent,
    Subscription,
    SubscriptionCounts,
)
from broker.names import matches


def implied_delivery(
    sub: Subscription, event: StoredEvent, passed: bool, now_us: int
) -> DeliveryInfo | None:
    """An event's delivery in a subscription that has no row for it (None: not shown).

    An acked one is shown while within the subscription's retention, as an
    acked row would be.
    """
    if not matches(sub.filters, event.name):
        return None
    if passed:
        if event.published_at_us < now_us - sub.retention_us:
            return None
        state, attempts, next_time = DeliveryState.ACKED, 1, None
    else:
        due = event.deliver_at_us > now_us
        state = DeliveryState.SCHEDULED if due else DeliveryState.READY
        attempts, next_time = 0, event.deliver_at_us
    return DeliveryInfo(
        subscription=sub.name,
        state=state,
        attempts=attempts,
        next_time_us=next_time,
        consumer="",
        dead_reason=DeadReason.NONE,
        last_error="",
        ordering_key=event_key(sub, event.ordering_key, event.headers),
    )


@dataclass(frozen=True, slots=True)
class NameTally:
    """Events of one name without a row in a subscription, counted."""

    name: str
    count: int
    #: Of them, those due later than now.
    scheduled: int
    #: The earliest publish time among those not scheduled.
    oldest_ready_us: int | None


@dataclass(frozen=True, slots=True)
class RowCounts:
    """A subscription's delivery rows by state, and its oldest ready one."""

    by_state: Mapping[DeliveryState, int]
    oldest_ready_us: int | None


def subscription_counts(
    sub: Subscription,
    rows: RowCounts,
    waiting: Iterable[NameTally],
    acked: Iterable[NameTally],
) -> SubscriptionCounts:
    """A subscription's counts: its rows, and its log before (waiting) and past (acked) it."""
    scheduled = rows.by_state.get(DeliveryState.SCHEDULED, 0)
    ready = rows.by_state.get(DeliveryState.READY, 0)
    oldest = rows.oldest_ready_us
    for tally in waiting:
        if not matches(sub.filters, tally.name):
            continue
        scheduled += tally.scheduled
        ready += tally.count - tally.scheduled
        if tally.oldest_ready_us is not None:
            oldest = tally.oldest_ready_us if oldest is None else min(oldest, tally.oldest_ready_us)
    acked_total = rows.by_state.get(DeliveryState.ACKED, 0)
    acked_total += sum(t.count for t in acked if matches(sub.filters, t.name))
    return SubscriptionCounts(
        subscription=sub.name,
        scheduled=scheduled,
        ready=ready,
        in_flight=rows.by_state.get(DeliveryState.IN_FLIGHT, 0),
        acked=acked_total,
        dead=rows.by_state.get(DeliveryState.DEAD, 0),
        oldest_waiting_us=oldest,
    )
