"""What several operations share: parsing ack ids, and the ordering-key gate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from broker.delivery.ordering import gate
from broker.domain import AckId, LegacyAckId, Subscription
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


def gate_keys(
    tx: StorageTx, keys: Iterable[tuple[int, str]], now_us: int
) -> tuple[set[int], int | None]:
    """Run the gate on each ordering key; the subscriptions made ready, the next due time."""
    ready: set[int] = set()
    due: int | None = None
    for subscription_id, key in sorted(set(keys)):
        tx.ordering_key_lock(subscription_id, key)
        decision = gate(subscription_id, tx.delivery_keyed_list(subscription_id, key), now_us)
        if decision.changes:
            tx.delivery_set_states(decision.changes, now_us)
        if decision.ready:
            ready.add(subscription_id)
        due = earliest(due, decision.due_us)
    return ready, due


def with_limits(
    subscriptions: dict[int, Subscription], subscription_ids: Iterable[int]
) -> set[int]:
    """Those of the subscriptions that have a concurrency limit (a settled lease frees a slot)."""
    return {
        sid
        for sid in subscription_ids
        if (sub := subscriptions.get(sid)) is not None and sub.max_in_flight > 0
    }
