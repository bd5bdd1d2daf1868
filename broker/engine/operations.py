"""Group-commit operations that compose storage with what the engine knows and decides.

Storage reads and writes and decides nothing; here, inside one transaction,
its answers meet the delivery decisions (`broker.transitions`) and the
engine's memory of recent events. The engine runs these as group-commit
operations; the storage tests run them as the engine does.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from broker.domain import (
    LeasedDelivery,
    LeaseRequest,
    SettleOutcome,
    StoredEvent,
    Subscription,
)
from broker.storage.interface import (
    DeliveryFailingParams,
    DeliveryFailParams,
    DeliveryLeaseParams,
    StorageTx,
)
from broker.transitions import Draw, Failure, after_failure


def fail_leases(
    tx: StorageTx, now_us: int, ack_ids: Sequence[str], failure: Failure, draw: Draw
) -> SettleOutcome:
    """Retry or dead-letter the live leases among `ack_ids`; report the others not applied."""
    unexpired_at = None if failure.takes_expired_leases else now_us
    failing = tx.delivery_failing(DeliveryFailingParams(ack_ids, unexpired_at))
    if not failing.leases:
        return SettleOutcome(failing.applied, failing.not_applied)
    subscriptions: dict[int, Subscription | None] = {}
    changes = []
    for lease in failing.leases:
        if lease.subscription_id not in subscriptions:
            subscriptions[lease.subscription_id] = tx.subscription_get_by_id(lease.subscription_id)
        subscription = subscriptions[lease.subscription_id]
        changes.append(after_failure(lease, failure, subscription, now_us, draw))
    written = tx.delivery_fail(DeliveryFailParams(changes, now_us))
    return SettleOutcome(
        failing.applied,
        failing.not_applied,
        written.ready_subscription_ids,
        written.next_scheduled_us,
    )


#: Events the engine still holds in memory, by id (those it does not are left out).
KnownEvents = Callable[[Collection[str]], Mapping[str, StoredEvent]]


def lease_deliveries(
    tx: StorageTx,
    now_us: int,
    subscription: str,
    subscription_id: int,
    requests: Sequence[LeaseRequest],
    known: KnownEvents,
) -> dict[str, list[LeasedDelivery]]:
    """Claim ready deliveries for consumers and attach their events.

    Recently published events come from memory; only the others are read.
    """
    claims = tx.delivery_lease(DeliveryLeaseParams(subscription_id, requests, now_us))
    wanted = {c.event_id for batch in claims.values() for c in batch}
    if not wanted:
        return {}
    events = dict(known(wanted))
    if len(events) < len(wanted):
        events.update(tx.event_get_many(wanted - events.keys()))
    return {
        consumer: [
            LeasedDelivery(c.ack_id, subscription, events[c.event_id], c.attempt, c.ack_deadline_us)
            for c in batch
        ]
        for consumer, batch in claims.items()
    }
