"""The key gate: at most a subscription's cap of one key's deliveries move at once.

A keyed subscription (ordered, or with `max_in_flight_per_key`) gives each
event with a key a delivery row as it is stored, and gates the rows of each
key. A delivery let through holds one of its key's slots while it is in
flight or ready to be; the others are BLOCKED, and when a slot frees, the
earliest blocked one (in log order, whatever its priority) is let through.

An ordered subscription is the cap of 1, and there a delivery also holds the
slot while it is scheduled (backing off before a retry, or delayed): its key's
events move one at a time, in log order, each waiting for the one before it
to be acked or dead. Under a cap of N (`max_in_flight_per_key`), up to N are
in flight at once, in any order among themselves; a scheduled one holds no
slot, and comes back through the gate when it is due (`entering`).

The gate never takes a slot back: a delivery let through stays through, even
when the cap is lowered (the key drains down to the new cap), so that a row
another broker is leasing at that moment is never blocked under it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from broker.delivery.records import DeliveryKey, KeyedDelivery, StateChange
from broker.domain import DeliveryState, KeyWait, Subscription

#: States a delivery can still move from: a key's rows in these are its open ones.
OPEN_STATES = (
    DeliveryState.SCHEDULED,
    DeliveryState.READY,
    DeliveryState.IN_FLIGHT,
    DeliveryState.BLOCKED,
)
#: The longest key kept as it is; a longer header value is kept as its digest.
KEY_MAX_LENGTH = 255


@dataclass(frozen=True, slots=True)
class GateDecision:
    """What the gate changes for one key."""

    changes: list[StateChange]
    #: A delivery of the key was made ready: its subscription may deliver.
    ready: bool
    #: A delivery of the key was made scheduled for this time.
    due_us: int | None


def holds_slot(delivery: KeyedDelivery, scheduled_holds: bool) -> bool:
    """Whether an open delivery holds one of its key's slots (see the module's docstring)."""
    state = delivery.state
    if state is DeliveryState.BLOCKED:
        return False
    return scheduled_holds or state is not DeliveryState.SCHEDULED


def gate(
    subscription_id: int,
    open_deliveries: Sequence[KeyedDelivery],
    cap: int | None,
    now_us: int,
    entering: Collection[int] = (),
    *,
    scheduled_holds: bool = True,
) -> GateDecision:
    """Let the earliest waiting deliveries of a key through while it has free slots.

    `open_deliveries` are the key's deliveries in open states, in log order;
    `cap` how many may hold a slot at once (None: no cap, all go through).
    `entering` are the seqs of rows this transaction has just made ready
    (redriven dead letters, retries come due): they hold no slot yet, and are
    blocked if none is free. `scheduled_holds`: a scheduled delivery holds its
    slot (ordered subscriptions); if not, a blocked one not yet due is let
    through as scheduled without taking a slot.
    """
    holding = sum(
        1 for d in open_deliveries if d.seq not in entering and holds_slot(d, scheduled_holds)
    )
    free = None if cap is None else cap - holding
    changes: list[StateChange] = []
    ready, due = False, None
    for d in open_deliveries:
        is_entering = d.seq in entering
        if d.state is not DeliveryState.BLOCKED and not is_entering:
            continue
        if not scheduled_holds and d.state is DeliveryState.BLOCKED and d.ready_at_us > now_us:
            # Not due yet: it waits for its time without a slot, then comes back through.
            changes.append(
                StateChange(DeliveryKey(subscription_id, d.seq), DeliveryState.SCHEDULED)
            )
            due = d.ready_at_us if due is None else min(due, d.ready_at_us)
            continue
        if free is None or free > 0:
            if free is not None:
                free -= 1
            if d.state is DeliveryState.BLOCKED:
                if d.ready_at_us <= now_us:
                    state, ready = DeliveryState.READY, True
                else:
                    state = DeliveryState.SCHEDULED
                    due = d.ready_at_us if due is None else min(due, d.ready_at_us)
                changes.append(StateChange(DeliveryKey(subscription_id, d.seq), state))
            elif d.state is DeliveryState.READY:
                ready = True
        elif is_entering:
            changes.append(StateChange(DeliveryKey(subscription_id, d.seq), DeliveryState.BLOCKED))
    return GateDecision(changes, ready, due)


def key_wait(
    sub: Subscription, key: str, open_deliveries: Sequence[KeyedDelivery]
) -> KeyWait | None:
    """Why a blocked delivery of `key` waits: how many hold the key's slots, of how many."""
    cap = sub.key_cap
    if cap is None:
        return None
    holding = sum(1 for d in open_deliveries if holds_slot(d, sub.ordered))
    return KeyWait(key, holding, cap, sub.ordered)


def header_key(headers: Mapping[str, str], header: str) -> str | None:
    """An event's key taken from one of its headers (None: the event has no such header).

    A value longer than a key column holds, or one with a NUL character (which
    PostgreSQL's text cannot hold), is replaced by its SHA-256 digest, so that
    two such values share a key only if they are equal.
    """
    value = headers.get(header)
    if not value:
        return None
    if len(value) > KEY_MAX_LENGTH or "\x00" in value:
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    return value


def event_key(
    sub: Subscription, ordering_key: str | None, headers: Mapping[str, str]
) -> str | None:
    """An event's key in a subscription: None where the subscription does not gate keys."""
    if not sub.keyed:
        return None
    if sub.key_header:
        return header_key(headers, sub.key_header)
    return ordering_key
