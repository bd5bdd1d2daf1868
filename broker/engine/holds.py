"""Who holds which lease in this broker process, and until when.

Every lease a dispatcher hands out here is recorded with its consumer, its
dispatcher and its deadline, so that settling an ack id (an ack, a nack, an
expiry, another broker's reaper) returns that consumer's credit and wakes its
dispatcher. The database knows the lease too; this is the process's index of
the ones its own consumers hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from broker.domain import LeasedDelivery
from broker.engine.dispatcher import ConsumerStream, SubscriptionDispatcher


@dataclass(slots=True)
class Hold:
    """One lease held by a consumer of this process."""

    consumer: ConsumerStream
    dispatcher: SubscriptionDispatcher
    until_us: int


class Holds:
    """The leases held by this process's consumers, by ack id."""

    def __init__(self) -> None:
        self._by_ack_id: dict[str, Hold] = {}

    def __len__(self) -> int:
        return len(self._by_ack_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_ack_id)

    def add(
        self,
        dispatcher: SubscriptionDispatcher,
        consumer: ConsumerStream,
        deliveries: Iterable[LeasedDelivery],
    ) -> None:
        """Deliveries leased to a consumer."""
        for delivery in deliveries:
            self._by_ack_id[delivery.ack_id] = Hold(consumer, dispatcher, delivery.ack_deadline_us)

    def pop(self, ack_id: str) -> Hold | None:
        """Forget a lease that ended; its hold, if it was held here."""
        return self._by_ack_id.pop(ack_id, None)

    def extend(self, ack_ids: Iterable[str], until_us: int) -> None:
        """Leases extended (or to be looked at again) until `until_us`."""
        for ack_id in ack_ids:
            hold = self._by_ack_id.get(ack_id)
            if hold is not None:
                hold.until_us = until_us

    def overdue(self, now_us: int) -> list[str]:
        """Ack ids held past their deadline, as far as this process knows."""
        return [ack_id for ack_id, hold in self._by_ack_id.items() if hold.until_us < now_us]

    def forget(self, dispatcher: SubscriptionDispatcher) -> None:
        """Drop every lease of a dispatcher (its subscription was deleted)."""
        for ack_id in [a for a, h in self._by_ack_id.items() if h.dispatcher is dispatcher]:
            del self._by_ack_id[ack_id]
