"""Routing: which subscriptions an event goes to, and which of them need a row for it.

An event is stored once, in the log. A subscription reads the log from its
position on, so most deliveries need no row of their own until they are
leased. Two kinds do need one as the event is stored, because the log's order
cannot serve them: an event with a priority (it must overtake what waits
ahead of it) and an event with a key in a keyed subscription (ordered, or
capped per key: the gate holds it until its key has a free slot, whatever its
priority).
Everything else is routed when a lease's scan of the log reaches it
(`route_scanned`): leased at once, or given a row when it must wait for its
time, its key or its age.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from broker.delivery.ordering import event_key
from broker.delivery.records import DeliveryKey, LogEntry, NewDelivery
from broker.domain import DeadReason, DeliveryState, EventDraft, Subscription
from broker.names import matches


def rank_of(priority: int) -> int:
    """The order rows are leased in: ascending rank, so the highest priority first."""
    return -priority


def needs_row_when_stored(priority: int, key: str | None) -> bool:
    """Whether a subscription gets a delivery row as the event is stored.

    `key` is the event's key in the subscription (`ordering.event_key`).
    """
    return priority != 0 or key is not None


@dataclass(frozen=True, slots=True)
class EventRoute:
    """Where one stored event goes."""

    #: Rows to write with the event (their `seq` is filled in by storage).
    rows: list[NewDelivery]
    #: Subscriptions whose filters match the event.
    matched: int
    #: Subscriptions that may have something to do now: a row ready, or the log to read.
    wake: frozenset[int]
    #: The earliest time a row made here becomes due, if one is scheduled.
    next_scheduled_us: int | None
    #: Keys of keyed subscriptions that got a row (for the gate).
    keys: frozenset[tuple[int, str]] = field(default_factory=frozenset)


def route_stored(
    draft: EventDraft, subscriptions: Iterable[Subscription], now_us: int
) -> EventRoute:
    """Route an event as it is stored at `now_us`."""
    deliver_at = max(draft.deliver_at_us, now_us)
    scheduled = deliver_at > now_us
    rows: list[NewDelivery] = []
    wake: set[int] = set()
    keys: set[tuple[int, str]] = set()
    matched = 0
    for sub in subscriptions:
        if not matches(sub.filters, draft.name):
            continue
        matched += 1
        key = event_key(sub, draft.ordering_key, draft.headers)
        if not needs_row_when_stored(draft.priority, key):
            wake.add(sub.id)  # its scan of the log routes the event (scheduled ones too)
            continue
        if key is not None:
            state = DeliveryState.BLOCKED  # until the gate lets it through
        else:
            state = DeliveryState.SCHEDULED if scheduled else DeliveryState.READY
        rows.append(
            NewDelivery(
                subscription_id=sub.id,
                event_id=draft.event_id,
                seq=None,
                state=state,
                rank=rank_of(draft.priority),
                ordering_key=key,
                ready_at_us=deliver_at,
            )
        )
        if key is not None:
            keys.add((sub.id, key))
        if not scheduled:
            wake.add(sub.id)
    return EventRoute(
        rows=rows,
        matched=matched,
        wake=frozenset(wake),
        next_scheduled_us=deliver_at if scheduled and rows else None,
        keys=frozenset(keys),
    )


class ScanRoute(Enum):
    """What a lease does with an event its scan of the log reached."""

    SKIP = "skip"
    """Not this subscription's, or it has a row already: only the position moves on."""
    LEASE = "lease"
    """Leased now, straight from the log."""
    ROW = "row"
    """Given a row that waits (its time, its key) or is dead (too old)."""


@dataclass(frozen=True, slots=True)
class Scanned:
    """The decision for one scanned event."""

    route: ScanRoute
    row: NewDelivery | None = None


_SKIP = Scanned(ScanRoute.SKIP)
_LEASE = Scanned(ScanRoute.LEASE)


def route_scanned(sub: Subscription, entry: LogEntry, now_us: int) -> Scanned:
    """Route an event a lease's scan of the log reached, at `now_us`.

    An event that matches and has no row yet is leased, unless it must wait:
    for its time (scheduled), for its key (the gate decides), or
    it is older than the subscription's maximum age (dead). A priority gets a
    row too: the event predates the subscription's present filters, so it
    could not have got one when stored.
    """
    if entry.has_row or not matches(sub.filters, entry.name):
        return _SKIP
    key = entry.ordering_key if sub.keyed else None
    if sub.max_age_us and entry.published_at_us < now_us - sub.max_age_us:
        state, reason = DeliveryState.DEAD, DeadReason.EXPIRED
    elif key is not None:
        state, reason = DeliveryState.BLOCKED, DeadReason.NONE  # until the gate lets it through
    elif entry.deliver_at_us > now_us:
        state, reason = DeliveryState.SCHEDULED, DeadReason.NONE
    elif entry.priority != 0:
        state, reason = DeliveryState.READY, DeadReason.NONE
    else:
        return _LEASE
    return Scanned(
        ScanRoute.ROW,
        NewDelivery(
            subscription_id=sub.id,
            event_id=entry.event_id,
            seq=entry.seq,
            state=state,
            rank=rank_of(entry.priority),
            ordering_key=key,
            ready_at_us=max(entry.deliver_at_us, now_us),
            dead_reason=reason,
        ),
    )


def keys_of(rows: Sequence[NewDelivery]) -> set[tuple[int, str]]:
    """The (subscription, ordering key) pairs these rows open or join."""
    return {(r.subscription_id, r.ordering_key) for r in rows if r.ordering_key is not None}


def delivery_key(row: NewDelivery) -> DeliveryKey:
    """The key of a row whose place in the log is known."""
    assert row.seq is not None
    return DeliveryKey(row.subscription_id, row.seq)
