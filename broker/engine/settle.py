"""Failing leases inside one transaction: storage finds them, the decisions say what they become.

The one place where `broker.transitions` (pure decisions) meets storage (which
applies them): the engine runs it as a group-commit operation, the storage
tests run it as the engine does.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.domain import SettleOutcome, Subscription
from broker.storage.interface import DeliveryFailingParams, DeliveryFailParams, StorageTx
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
