"""Publishing: events stored once, with the rows only some subscriptions need at once."""

from __future__ import annotations

from collections.abc import Sequence

from broker.delivery.records import NewDelivery
from broker.delivery.routing import route_stored
from broker.domain import EventDraft, PublishOutcome, StoredEvent
from broker.engine.operations.common import gate_keys
from broker.storage.interface import DedupParams, EventAppendParams, StorageTx


def publish(
    tx: StorageTx, now_us: int, drafts: Sequence[EventDraft], dedup_window_us: int
) -> list[PublishOutcome]:
    """Store events all or none; a dedup id seen inside its window stores nothing."""
    dedup_ids = sorted({d.dedup_id for d in drafts if d.dedup_id})
    existing: dict[str, str] = {}
    if dedup_ids:
        # Two brokers publishing one dedup id at once: the second waits, then sees it.
        tx.dedup_lock(dedup_ids)
        existing = tx.dedup_find(DedupParams(dedup_ids, now_us))
    subscriptions = list(tx.subscriptions_by_id().values())
    events: list[StoredEvent] = []
    rows: list[NewDelivery] = []
    dedup_rows: list[tuple[str, str, int]] = []
    keys: set[tuple[int, str]] = set()
    outcomes: list[PublishOutcome] = []
    for draft in drafts:
        if draft.dedup_id:
            first = existing.get(draft.dedup_id)
            if first is not None:
                outcomes.append(PublishOutcome(first, duplicate=True))
                continue
            existing[draft.dedup_id] = draft.event_id
            dedup_rows.append((draft.dedup_id, draft.event_id, now_us + dedup_window_us))
        route = route_stored(draft, subscriptions, now_us)
        events.append(draft.stored_at(now_us))
        rows += route.rows
        keys |= route.keys
        outcomes.append(
            PublishOutcome(
                draft.event_id,
                duplicate=False,
                ready_subscription_ids=route.wake,
                next_scheduled_us=route.next_scheduled_us,
                matched=route.matched,
            )
        )
    for subscription_id, key in sorted(keys):
        # Taken before the rows exist, so that a key's deliveries are gated in the
        # order their transactions commit, whichever broker wrote them.
        tx.ordering_key_lock(subscription_id, key)
    if dedup_rows:
        # A row left for one of these ids is past its window (a live one made the
        # publish a duplicate above, under the ids' locks): it is replaced.
        tx.dedup_put(dedup_rows)
    if events:
        tx.event_append(EventAppendParams(events, rows))
    if keys:
        gate_keys(tx, keys, now_us)
    return outcomes
