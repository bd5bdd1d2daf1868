"""Leasing: ready rows and the log past the position, merged, split between consumers."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from broker.delivery.leasing import lease_budget, plan_lease, scan_limit
from broker.delivery.routing import keys_of
from broker.domain import (
    DeliveryState,
    LeasedDelivery,
    LeaseRequest,
    StoredEvent,
    ack_id_text,
)
from broker.engine.operations.common import earliest, gate_keys
from broker.storage.interface import ClaimParams, LogScanParams, StorageTx

#: Events the engine still holds in memory, by id (those it does not are left out).
KnownEvents = Callable[[Collection[str]], Mapping[str, StoredEvent]]


@dataclass(frozen=True)
class LeaseResult:
    """What a lease handed out, and what its dispatcher should do next."""

    leased: dict[str, list[LeasedDelivery]] = field(default_factory=dict)
    #: More may be ready now: lease again before waiting.
    more: bool = False
    #: Another transaction was leasing for the subscription: try again shortly.
    contended: bool = False
    #: A delivery the lease scheduled becomes due then.
    next_scheduled_us: int | None = None


_GONE = LeaseResult()


def lease(
    tx: StorageTx,
    now_us: int,
    subscription_id: int,
    requests: Sequence[LeaseRequest],
    known: KnownEvents,
) -> LeaseResult:
    """Lease up to each consumer's count of a subscription's deliveries, best first.

    Events come from `known` when the engine still holds them (recently
    published here); only the others are read.
    """
    sub = tx.subscriptions_by_id().get(subscription_id)
    if sub is None:  # made just now on another broker, or gone
        sub = tx.subscriptions_by_id(fresh=True).get(subscription_id)
    if sub is None:
        return _GONE
    position = tx.cursor_lock(subscription_id)
    if position is None and sub.max_in_flight > 0:
        return LeaseResult(more=True, contended=True)  # the count needs the cursor's lock
    in_flight = tx.delivery_in_flight_count(subscription_id) if sub.max_in_flight > 0 else None
    budget = lease_budget(requests, sub, in_flight)
    if budget == 0:
        return _GONE
    ready = tx.delivery_ready_list(subscription_id, budget)
    # Another transaction holds the cursor (it reads the log for this subscription):
    # lease the ready rows meanwhile, and the log a moment later.
    scan = (
        tx.log_scan(
            LogScanParams(
                subscription_id,
                position,
                scan_limit(budget),
                sub.key_header if sub.keyed else "",
            )
        )
        if position is not None
        else None
    )
    plan = plan_lease(sub, requests, budget, ready, scan, now_us)
    expires = now_us + sub.ack_deadline_us
    claimed = (
        tx.delivery_claim(ClaimParams(subscription_id, plan.claims, now_us, expires))
        if plan.claims
        else []
    )
    if plan.new_leases or plan.new_rows:
        tx.delivery_insert([*plan.new_leases, *plan.new_rows])
    if plan.position is not None:
        tx.log_advance(subscription_id, plan.position)
    more = plan.more or any(r.state is DeliveryState.READY for r in plan.new_rows)
    due = min(
        (r.ready_at_us for r in plan.new_rows if r.state is DeliveryState.SCHEDULED),
        default=None,
    )
    keys = keys_of(plan.new_rows)
    if keys:
        made_ready, key_due = gate_keys(tx, keys, now_us)
        more = more or bool(made_ready)
        due = earliest(due, key_due)
    attempts = {c.seq: c.attempt for c in claimed}
    events = _events_of({item.event_id for item in plan.leased}, tx, known)
    leased: dict[str, list[LeasedDelivery]] = {}
    name = sub.name
    for item in plan.leased:
        attempt = 1 if item.from_log else attempts.get(item.seq)
        if attempt is None:
            continue  # no longer ready (settled meanwhile on another broker)
        leased.setdefault(item.consumer, []).append(
            LeasedDelivery(
                ack_id_text(subscription_id, item.seq, attempt),
                name,
                events[item.event_id],
                attempt,
                expires,
            )
        )
    return LeaseResult(leased, more or position is None, position is None, due)


def _events_of(event_ids: set[str], tx: StorageTx, known: KnownEvents) -> Mapping[str, StoredEvent]:
    if not event_ids:
        return {}
    events = dict(known(event_ids))
    if len(events) < len(event_ids):
        events.update(tx.event_get_many(event_ids - events.keys()))
    return events
