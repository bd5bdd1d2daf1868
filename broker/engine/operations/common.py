"""What several operations share: parsing ack ids, and the key gate."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from broker.delivery.ordering import gate
from broker.delivery.records import DeliveryKey
from broker.domain import AckId, DeliveryState, LegacyAckId, Subscription
from broker.storage.interface import StorageTx


@dataclass(frozen=True, slots=True)
class ParsedAckIds:
    """Ack ids as the caller wrote them, and what each names (None: nothing)."""

    texts: Sequence[str]
    named: dict[str, AckId]

    @property
    def ids(self) -> list[AckId]:
        """The distinct ack ids named, sorted (rows are touched in one order: no deadlocks)."""
        return sorted(set(self.named.values()), key=_order)

    def split(self, live: Iterable[AckId]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The texts applied (naming a live lease) and the others, in the caller's order."""
        found = set(live)
        applied = tuple(t for t in self.texts if self.named.get(t) in found)
        return applied, tuple(t for t in self.texts if self.named.get(t) not in found)


def _order(ack: AckId) -> tuple[int, int, int]:
    return (ack.subscription_id, ack.seq, ack.attempt)


def parse_ack_ids(tx: StorageTx, texts: Sequence[str]) -> ParsedAckIds:
    """Parse ack ids; earlier ones (a row id and an attempt) are looked up in storage."""
    named: dict[str, AckId] = {}
    legacy: dict[str, LegacyAckId] = {}
    for text in texts:
        parsed = AckId.parse(text)
        if isinstance(parsed, AckId):
            named[text] = parsed
        elif parsed is not None:
            legacy[text] = parsed
    if legacy:
        resolved = tx.delivery_resolve(list(set(legacy.values())))
        for text, old in legacy.items():
            if old in resolved:
                named[text] = resolved[old]
    return ParsedAckIds(texts, named)


def earliest(a: int | None, b: int | None) -> int | None:
    """The earlier of two optional times."""
    if a is None:
        return b
    return a if b is None else min(a, b)


#: Blocked deliveries of a key read past its cap at a time: the gate lets at most
#: the cap through, and passes over those not yet due.
GATE_WINDOW_SLACK = 32


def gate_keys(
    tx: StorageTx,
    keys: Iterable[tuple[int, str]],
    now_us: int,
    entering: Collection[DeliveryKey] = (),
) -> tuple[set[int], int | None]:
    """Run the gate on each key; the subscriptions made ready, the next due time.

    `entering`: rows this transaction has just made ready (redriven, or
    retries come due under a cap), which must wait for a free slot of their
    key like the blocked ones.
    """
    ready: set[int] = set()
    due: int | None = None
    subscriptions = tx.subscriptions_by_id()
    for subscription_id, key in sorted(set(keys)):
        sub = subscriptions.get(subscription_id)
        # A key's rows outlive a change of settings: a subscription no longer
        # keyed lets them all through.
        cap = sub.key_cap if sub is not None else None
        tx.ordering_key_lock(subscription_id, key)
        new = {k.seq for k in entering if k.subscription_id == subscription_id}
        # A key's backlog may be long: read the blocked ones a window at a time,
        # and read on only while the gate is letting them through.
        window = None if cap is None else cap + GATE_WINDOW_SLACK
        while True:
            open_deliveries = tx.delivery_keyed_list(subscription_id, key, window)
            decision = gate(
                subscription_id,
                open_deliveries,
                cap,
                now_us,
                new,
                scheduled_holds=sub is None or sub.ordered,
            )
            if decision.changes:
                tx.delivery_set_states(decision.changes, now_us)
            if decision.ready:
                ready.add(subscription_id)
            due = earliest(due, decision.due_us)
            blocked = sum(1 for d in open_deliveries if d.state is DeliveryState.BLOCKED)
            if window is None or blocked < window or not decision.changes:
                break
            new = set()
    return ready, due


def capped_keys(
    subscriptions: dict[int, Subscription], keyed: Iterable[tuple[DeliveryKey, str]]
) -> list[tuple[DeliveryKey, str]]:
    """Those of these keyed deliveries whose subscription caps keys without ordering them.

    Under such a cap a scheduled delivery holds no slot: one that becomes
    scheduled frees a slot, and one that comes due must take one (the gate).
    """
    return [
        (delivery, key)
        for delivery, key in keyed
        if (sub := subscriptions.get(delivery.subscription_id)) is not None
        and not sub.ordered
        and sub.max_in_flight_per_key > 0
    ]


def with_limits(
    subscriptions: dict[int, Subscription], subscription_ids: Iterable[int]
) -> set[int]:
    """Those of the subscriptions that have a concurrency limit (a settled lease frees a slot)."""
    return {
        sid
        for sid in subscription_ids
        if (sub := subscriptions.get(sid)) is not None and sub.max_in_flight > 0
    }
