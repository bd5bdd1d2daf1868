"""Upkeep: maximum ages dead-letter, retention deletes, in bounded batches."""

from __future__ import annotations

from dataclasses import dataclass

from broker.delivery.upkeep import (
    age_limit_us,
    deletable_events,
    expire_by_age,
    expire_log,
    settled_cutoff_us,
)
from broker.engine.operations.common import gate_keys
from broker.storage.interface import (
    LogScanParams,
    OldEventsParams,
    SettledDeleteParams,
    StorageTx,
)


@dataclass(frozen=True, slots=True)
class UpkeepOutcome:
    """What one pass did, and where the next one looks for old events."""

    expired: int
    deliveries_deleted: int
    events_deleted: int
    #: Old events are looked for past this place in the log next time (0: from the start).
    next_after_seq: int


def upkeep(
    tx: StorageTx, now_us: int, event_retention_us: int, limit: int, after_seq: int = 0
) -> UpkeepOutcome:
    """Apply maximum ages and retention, up to `limit` of each per subscription."""
    subscriptions = tx.subscriptions_by_id()
    expired = deleted = 0
    for sub in subscriptions.values():
        cutoff = age_limit_us(sub, now_us)
        if cutoff is not None:
            keys = tx.delivery_waiting_list(sub.id, cutoff, limit)
            if keys:
                tx.delivery_set_states(expire_by_age(keys), now_us)
                gate_keys(tx, tx.delivery_keys_of(keys), now_us)
                expired += len(keys)
            position = tx.cursor_lock(sub.id)
            if position is not None:  # else a lease routes what is too old itself
                key_header = sub.key_header if sub.keyed else ""
                scan = tx.log_scan(LogScanParams(sub.id, position, limit, key_header))
                passed = expire_log(sub, scan, now_us)
                if passed.rows:
                    tx.delivery_insert(passed.rows)
                    expired += len(passed.rows)
                if passed.position is not None:
                    tx.log_advance(sub.id, passed.position)
        deleted += tx.delivery_settled_delete(
            SettledDeleteParams(sub.id, settled_cutoff_us(sub, now_us), limit)
        )
    deleted += tx.delivery_orphans_delete(limit)
    old = tx.event_old_list(OldEventsParams(now_us - event_retention_us, after_seq, limit))
    gone = deletable_events([event for _, event in old], subscriptions, now_us)
    events_deleted = tx.event_delete(gone) if gone else 0
    next_after = old[-1][0] if len(old) >= limit else 0
    return UpkeepOutcome(expired, deleted, events_deleted, next_after)
