"""Reads for people: an event's deliveries, a subscription's counts."""

from __future__ import annotations

from dataclasses import replace

from broker.delivery.ordering import key_wait
from broker.delivery.views import implied_delivery, subscription_counts
from broker.domain import DeliveryInfo, DeliveryState, StoredEvent, SubscriptionCounts
from broker.names import matches
from broker.storage.interface import LogTallyParams, StorageTx

#: Later than any publish time: a tally up to here counts everything.
TIME_MAX_US = 2**63 - 1


def event_deliveries(
    tx: StorageTx, now_us: int, event_id: str
) -> tuple[StoredEvent | None, list[DeliveryInfo]]:
    """An event and its delivery in each subscription, by subscription name.

    Rows say where a delivery stands; a subscription without a row for the
    event is answered from its position in the log.
    """
    event = tx.event_get(event_id)
    if event is None:
        return None, []
    infos = [_with_key_wait(tx, info) for info in tx.delivery_list_for_event(event_id)]
    have = {info.subscription for info in infos}
    candidates = [
        sub
        for sub in tx.subscriptions_by_id().values()
        if sub.name not in have and matches(sub.filters, event.name)
    ]
    if candidates:
        passed = tx.log_passed(event_id, [sub.id for sub in candidates])
        for sub in candidates:
            if sub.id in passed:
                info = implied_delivery(sub, event, passed[sub.id], now_us)
                if info is not None:
                    infos.append(info)
    return event, sorted(infos, key=lambda info: info.subscription)


def _with_key_wait(tx: StorageTx, info: DeliveryInfo) -> DeliveryInfo:
    """A blocked delivery with what holds its key's slots."""
    if info.state is not DeliveryState.BLOCKED or info.ordering_key is None:
        return info
    sub = next((s for s in tx.subscriptions_by_id().values() if s.name == info.subscription), None)
    if sub is None:
        return info
    holding = tx.delivery_keyed_list(sub.id, info.ordering_key, blocked_limit=0)
    wait = key_wait(sub, info.ordering_key, holding)
    return replace(info, key_wait=wait)


def counts(tx: StorageTx, now_us: int, name: str | None) -> list[SubscriptionCounts]:
    """Delivery counts of one subscription, or of all, by name."""
    subs = [s for s in tx.subscriptions_by_id().values() if name is None or s.name == name]
    waiting = tx.log_tally(LogTallyParams({sub.id: 0 for sub in subs}, False, TIME_MAX_US, now_us))
    acked = tx.log_tally(
        LogTallyParams(
            {sub.id: now_us - sub.retention_us for sub in subs}, True, TIME_MAX_US, now_us
        )
    )
    return [
        subscription_counts(
            sub, tx.delivery_counts(sub.id), waiting.get(sub.id, []), acked.get(sub.id, [])
        )
        for sub in sorted(subs, key=lambda s: s.name)
    ]
