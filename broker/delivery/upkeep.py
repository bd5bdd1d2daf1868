"""Upkeep: maximum ages and retention, decided in bounded batches.

A delivery still waiting when its event is older than the subscription's
maximum age is dead-lettered (EXPIRED). Acked and dead rows go once past the
subscription's retention. An event goes once no subscription still needs it:
none of those it matches waits for it, and it is past the event retention and
the retention of each of them (what was acked stays queryable that long).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from broker.delivery.records import DeliveryKey, LogScan, NewDelivery, Position, StateChange
from broker.delivery.routing import route_scanned
from broker.domain import DeadReason, DeliveryState, Subscription
from broker.names import matches


def age_limit_us(sub: Subscription, now_us: int) -> int | None:
    """Events published before this time are too old for the subscription (None: no limit)."""
    return now_us - sub.max_age_us if sub.max_age_us else None


def expire_by_age(keys: Iterable[DeliveryKey]) -> list[StateChange]:
    """Waiting deliveries of too old events, dead-lettered."""
    return [StateChange(key, DeliveryState.DEAD, DeadReason.EXPIRED) for key in keys]


@dataclass(frozen=True, slots=True)
class LogExpiry:
    """Dead rows for too old events at the head of a subscription's log, and the position after."""

    rows: list[NewDelivery]
    position: Position | None


def expire_log(sub: Subscription, scan: LogScan, now_us: int) -> LogExpiry:
    """Pass the scanned events older than the maximum age: the subscription's get a dead row.

    Stops at the first event young enough: the rest is the leases' to route.
    """
    limit = age_limit_us(sub, now_us)
    rows: list[NewDelivery] = []
    position: Position | None = None
    for entry in scan.entries:
        if limit is None or entry.published_at_us >= limit:
            return LogExpiry(rows, position)
        routed = route_scanned(sub, entry, now_us)
        if routed.row is not None:
            rows.append(routed.row)
        position = entry.position
    return LogExpiry(rows, scan.end if scan.entries else position)


def settled_cutoff_us(sub: Subscription, now_us: int) -> int:
    """Acked and dead rows last changed before this time are past retention."""
    return now_us - sub.retention_us


@dataclass(frozen=True, slots=True)
class OldEvent:
    """An event past the event retention that no delivery row refers to."""

    event_id: str
    name: str
    published_at_us: int
    #: Subscriptions whose position has not passed it yet.
    waiting_in: frozenset[int]


def deletable_events(
    events: Iterable[OldEvent], subscriptions: Mapping[int, Subscription], now_us: int
) -> list[str]:
    """The events no subscription needs any more."""
    gone: list[str] = []
    for event in events:
        keep = False
        for sub in subscriptions.values():
            if not matches(sub.filters, event.name):
                continue
            if sub.id in event.waiting_in or event.published_at_us >= now_us - sub.retention_us:
                keep = True
                break
        if not keep:
            gone.append(event.event_id)
    return gone
