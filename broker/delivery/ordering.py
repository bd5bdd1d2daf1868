"""The ordering-key gate of ordered subscriptions: one delivery of a key moves at a time.

The earliest open delivery of a key (not yet acked or dead) holds it: it is
ready, scheduled or in flight; every later one is BLOCKED until the one before
it is settled. Priorities do not reorder a key's queue: the log's order does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from broker.delivery.records import DeliveryKey, KeyedDelivery, StateChange
from broker.domain import DeliveryState

#: States a delivery can still move from: the first of a key's in these holds it.
OPEN_STATES = (
    DeliveryState.SCHEDULED,
    DeliveryState.READY,
    DeliveryState.IN_FLIGHT,
    DeliveryState.BLOCKED,
)
_WAITING = (DeliveryState.READY, DeliveryState.SCHEDULED)


@dataclass(frozen=True, slots=True)
class GateDecision:
    """What the gate changes for one key."""

    changes: list[StateChange]
    #: The key's head was made ready: its subscription may deliver.
    ready: bool
    #: The key's head was made scheduled for this time.
    due_us: int | None


def gate(
    subscription_id: int, open_deliveries: Sequence[KeyedDelivery], now_us: int
) -> GateDecision:
    """Let only the earliest open delivery of a key move; block the ones behind it.

    `open_deliveries` are the key's deliveries in open states, in log order.
    """
    if not open_deliveries:
        return GateDecision([], False, None)
    head, *rest = open_deliveries
    changes: list[StateChange] = []
    ready, due = False, None
    if head.state is DeliveryState.BLOCKED:
        if head.ready_at_us <= now_us:
            state, ready = DeliveryState.READY, True
        else:
            state, due = DeliveryState.SCHEDULED, head.ready_at_us
        changes.append(StateChange(DeliveryKey(subscription_id, head.seq), state))
    changes += [
        StateChange(DeliveryKey(subscription_id, d.seq), DeliveryState.BLOCKED)
        for d in rest
        if d.state in _WAITING
    ]
    return GateDecision(changes, ready, due)
