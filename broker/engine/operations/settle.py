"""Settling leases: acks, failures (nacks, expiries, consumers that left), extensions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from broker.delivery.failure import Draw, Failure, after_failure
from broker.domain import AckId, AttemptOutcome, DeliveryState, SettleOutcome
from broker.engine.operations.common import (
    capped_keys,
    earliest,
    gate_keys,
    parse_ack_ids,
    with_limits,
)
from broker.storage.interface import (
    AckParams,
    ExtendParams,
    FailingParams,
    FailParams,
    PromoteOutcome,
    PromoteParams,
    StorageTx,
)

EXPIRED = Failure(AttemptOutcome.EXPIRED)


def ack(tx: StorageTx, now_us: int, ack_ids: Sequence[str]) -> SettleOutcome:
    """Acknowledge live leases; the others are reported not applied.

    An acked delivery lets its ordering key move on and frees a slot of its
    subscription's concurrency limit.
    """
    parsed = parse_ack_ids(tx, ack_ids)
    ids = parsed.ids
    settled = tx.delivery_ack(AckParams(ids, now_us)) if ids else []
    applied, not_applied = parsed.split(
        AckId(s.key.subscription_id, s.key.seq, s.attempt) for s in settled
    )
    keys = {(s.key.subscription_id, s.ordering_key) for s in settled if s.ordering_key}
    ready, due = gate_keys(tx, keys, now_us) if keys else (set(), None)
    ready |= with_limits(tx.subscriptions_by_id(), {s.key.subscription_id for s in settled})
    return SettleOutcome(applied, not_applied, frozenset(ready), due)


def fail(
    tx: StorageTx, now_us: int, ack_ids: Sequence[str], failure: Failure, draw: Draw
) -> SettleOutcome:
    """Retry or dead-letter the live leases among `ack_ids`; report the others not applied."""
    parsed = parse_ack_ids(tx, ack_ids)
    ids = parsed.ids
    unexpired_at = None if failure.takes_expired_leases else now_us
    leases = tx.delivery_failing(FailingParams(ids, unexpired_at)) if ids else []
    applied, not_applied = parsed.split(
        AckId(lease.key.subscription_id, lease.key.seq, lease.attempt) for lease in leases
    )
    if not leases:
        return SettleOutcome(applied, not_applied)
    subscriptions = tx.subscriptions_by_id()
    changes = [
        after_failure(lease, failure, subscriptions.get(lease.key.subscription_id), now_us, draw)
        for lease in leases
    ]
    tx.delivery_fail(FailParams(changes, now_us))
    ready = {c.key.subscription_id for c in changes if c.state is DeliveryState.READY}
    due = min((c.ready_at_us for c in changes if c.state is DeliveryState.SCHEDULED), default=None)
    # A dead delivery frees its key's slot; so does a retry that backs off under a cap.
    backing_off = {
        (c.key, c.ordering_key)
        for c in changes
        if c.state is DeliveryState.SCHEDULED and c.ordering_key
    }
    freed = {
        (c.key.subscription_id, c.ordering_key)
        for c in changes
        if c.state is DeliveryState.DEAD and c.ordering_key
    } | {(d.subscription_id, key) for d, key in capped_keys(subscriptions, backing_off)}
    if freed:
        unblocked, key_due = gate_keys(tx, freed, now_us)
        ready |= unblocked
        due = earliest(due, key_due)
    ready |= with_limits(subscriptions, {c.key.subscription_id for c in changes})
    return SettleOutcome(applied, not_applied, frozenset(ready), due)


def extend(tx: StorageTx, now_us: int, ack_ids: Sequence[str], extension_us: int) -> SettleOutcome:
    """Move the deadlines of live leases to now + extension."""
    parsed = parse_ack_ids(tx, ack_ids)
    ids = parsed.ids
    extended = tx.delivery_extend(ExtendParams(ids, now_us + extension_us, now_us)) if ids else []
    applied, not_applied = parsed.split(extended)
    return SettleOutcome(applied, not_applied)


def expire(tx: StorageTx, now_us: int, limit: int, draw: Draw) -> tuple[list[str], SettleOutcome]:
    """Fail up to `limit` leases past their deadline; their ack ids, and the outcome."""
    found = [str(a) for a in tx.delivery_expired_list(now_us, limit)]
    return found, fail(tx, now_us, found, EXPIRED, draw)


def live(tx: StorageTx, ack_ids: Sequence[str]) -> set[str]:
    """Which of these ack ids are still live leases (in flight, same attempt)."""
    parsed = parse_ack_ids(tx, ack_ids)
    ids = parsed.ids
    still = tx.delivery_live(ids) if ids else set()
    return set(parsed.split(still)[0])


def promote(tx: StorageTx, now_us: int, limit: int) -> PromoteOutcome:
    """Make scheduled deliveries whose time has come ready.

    Under a cap per key, one that comes due takes a free slot of its key, or
    waits blocked for one.
    """
    outcome = tx.delivery_promote(PromoteParams(now_us, limit))
    entering = capped_keys(tx.subscriptions_by_id(), outcome.keyed)
    if not entering:
        return outcome
    _, due = gate_keys(
        tx,
        {(d.subscription_id, key) for d, key in entering},
        now_us,
        entering=[d for d, _ in entering],
    )
    return replace(outcome, next_scheduled_us=earliest(outcome.next_scheduled_us, due))
