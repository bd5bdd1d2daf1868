"""Changing a subscription's settings, with what a change means for waiting deliveries."""

from __future__ import annotations

from dataclasses import dataclass

from broker.domain import Subscription
from broker.engine.operations.common import gate_keys
from broker.storage.interface import StorageTx


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """The subscription as updated (None: it does not exist), and whether it may deliver more."""

    subscription: Subscription | None
    #: A raised cap let blocked deliveries through.
    ready: bool = False
    #: ... and one of them becomes due then.
    due_us: int | None = None


def update(tx: StorageTx, now_us: int, subscription: Subscription) -> UpdateOutcome:
    """Replace a subscription's settings; a changed cap per key re-runs the gate on its keys.

    A raised cap (or none) lets blocked deliveries through at once; a lowered
    one takes no slot back, its keys drain down to it.
    """
    before = tx.subscription_get(subscription.name)
    updated = tx.subscription_update(subscription)
    if updated is None or before is None or before.key_cap == updated.key_cap:
        return UpdateOutcome(updated)
    keys = [(updated.id, key) for key in tx.delivery_blocked_keys(updated.id)]
    ready, due = gate_keys(tx, keys, now_us) if keys else (set(), None)
    return UpdateOutcome(updated, bool(ready), due)
