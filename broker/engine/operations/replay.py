"""Seek and redrive: a person's requests to deliver again or to skip."""

from __future__ import annotations

from dataclasses import dataclass

from broker.delivery.replay import plan_seek
from broker.domain import DeadReason
from broker.engine.operations.common import gate_keys
from broker.names import matches
from broker.storage.interface import DeadSelectParams, LogTallyParams, StorageTx

#: Later than any publish time: a tally up to here counts everything.
TIME_MAX_US = 2**63 - 1


@dataclass(frozen=True, slots=True)
class SeekOutcome:
    """How many deliveries a seek made ready again, and how many it skipped."""

    replayed: int
    skipped: int


def seek(tx: StorageTx, now_us: int, subscription_id: int, time_us: int) -> SeekOutcome:
    """Deliver again what was published since `time_us`; skip what was published before.

    Rows are changed as `plan_seek` decides; the position moves to the time,
    so the log serves again (or skips) the events without a row: a forgotten
    row's event among them.
    """
    sub = tx.subscriptions_by_id().get(subscription_id)
    if sub is None or tx.cursor_lock(subscription_id, wait=True) is None:
        return SeekOutcome(0, 0)
    since = {subscription_id: 0}
    skipped_log = tx.log_tally(LogTallyParams(since, False, time_us, now_us))[subscription_id]
    since = {subscription_id: time_us}
    replayed_log = tx.log_tally(LogTallyParams(since, True, TIME_MAX_US, now_us))[subscription_id]
    plan = plan_seek(tx.delivery_seek_list(subscription_id), time_us)
    if plan.skip:
        tx.delivery_set_states(plan.skip, now_us)
        # A skipped delivery that held its key's slot frees it for the key's next one.
        keys = tx.delivery_keys_of([change.key for change in plan.skip])
        if keys:
            gate_keys(tx, keys, now_us)
    if plan.forget:
        tx.delivery_delete(plan.forget)
    tx.log_seek(subscription_id, time_us)
    return SeekOutcome(
        replayed=len(plan.forget)
        + sum(t.count for t in replayed_log if matches(sub.filters, t.name)),
        skipped=len(plan.skip) + sum(t.count for t in skipped_log if matches(sub.filters, t.name)),
    )


@dataclass(frozen=True, slots=True)
class RedriveSelection:
    """Which dead letters a redrive takes (no event ids: all matching name and reason)."""

    event_ids: tuple[str, ...] = ()
    name: str | None = None
    reason: DeadReason | None = None


def redrive(
    tx: StorageTx, now_us: int, subscription_id: int, selection: RedriveSelection, limit: int
) -> int:
    """Make up to `limit` dead letters ready again as new first attempts; how many."""
    dead = tx.delivery_dead_select(
        DeadSelectParams(
            subscription_id, limit, selection.event_ids, selection.name, selection.reason
        )
    )
    if dead:
        tx.delivery_restart(dead, now_us)
        keys = tx.delivery_keys_of(dead)
        if keys:
            # Redriven, they wait for a free slot of their key like the blocked ones.
            gate_keys(tx, keys, now_us, entering=dead)
    return len(dead)
