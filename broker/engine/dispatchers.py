"""The dispatchers of this process, and who is told when deliveries may move.

`Dispatchers` finds the dispatcher that owns a lease from the lease's ack id
(it names the subscription), so an ack, a nack or an expiry returns the credit
of the consumer that held it. `Signals` is where news goes that deliveries
may be leased (a publish, a settled lease, a retry coming due, another
broker's message): the dispatchers here, the scheduler, and the other brokers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from broker.domain import AckId, SettleOutcome

if TYPE_CHECKING:
    from broker.engine.dispatcher import SubscriptionDispatcher


class Remote(Protocol):
    """The other brokers on the database (`Wakeups`)."""

    def ready(self, subscription_ids: Iterable[int], due_us: int | None = None) -> None:
        """Tell them these subscriptions may deliver more, and a delivery comes due then."""
        ...


class Timer(Protocol):
    """The scheduler: wakes when a scheduled delivery comes due."""

    def schedule(self, due_us: int) -> None:
        """A delivery becomes ready at `due_us`."""
        ...


class Dispatchers:
    """The dispatchers of this process, by subscription id."""

    def __init__(self) -> None:
        self._by_id: dict[int, SubscriptionDispatcher] = {}

    def __iter__(self) -> Iterator[SubscriptionDispatcher]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, subscription_id: int) -> SubscriptionDispatcher | None:
        """The dispatcher of a subscription, if it has consumers here."""
        return self._by_id.get(subscription_id)

    def add(self, dispatcher: SubscriptionDispatcher) -> None:
        """A new dispatcher."""
        self._by_id[dispatcher.subscription_id] = dispatcher

    def pop(self, subscription_id: int) -> SubscriptionDispatcher | None:
        """Forget a subscription's dispatcher (it was deleted); the dispatcher, if there was one."""
        return self._by_id.pop(subscription_id, None)

    def wake(self, subscription_ids: Iterable[int]) -> None:
        """These subscriptions may deliver more."""
        for subscription_id in subscription_ids:
            dispatcher = self._by_id.get(subscription_id)
            if dispatcher is not None:
                dispatcher.wake()

    def ended(self, ack_ids: Iterable[str], *, acked: bool = False) -> None:
        """These leases ended: each dispatcher holding some returns their consumers' credit."""
        by_subscription: dict[int | None, list[str]] = {}
        for ack_id in ack_ids:
            parsed = AckId.parse(ack_id)
            key = parsed.subscription_id if isinstance(parsed, AckId) else None
            by_subscription.setdefault(key, []).append(ack_id)
        for subscription_id, ids in by_subscription.items():
            if subscription_id is None:  # an ack id of before the log: any dispatcher's
                for any_dispatcher in self:
                    any_dispatcher.ended(ids, acked=acked)
            elif (owner := self._by_id.get(subscription_id)) is not None:
                owner.ended(ids, acked=acked)

    def extended(self, ack_ids: Sequence[str], until_us: int) -> None:
        """These leases (those held here) now last until `until_us`."""
        for dispatcher in self:
            dispatcher.extended(ack_ids, until_us)

    def overdue(self, now_us: int) -> list[str]:
        """Ack ids held here past their deadline, as far as this process knows."""
        return [ack_id for dispatcher in self for ack_id in dispatcher.overdue(now_us)]

    def held(self) -> list[str]:
        """Every lease consumers here hold."""
        return [ack_id for dispatcher in self for ack_id in dispatcher.held()]


class Signals:
    """Tells whoever may deliver more: the dispatchers here, the scheduler, the other brokers."""

    def __init__(self, dispatchers: Dispatchers) -> None:
        self.dispatchers = dispatchers
        #: Set once built: the scheduler, and the other brokers (PostgreSQL).
        self.timer: Timer | None = None
        self.remote: Remote | None = None

    def ready(
        self,
        subscription_ids: Collection[int],
        due_us: int | None = None,
        *,
        served: Collection[int] = (),
    ) -> None:
        """These subscriptions may deliver more now; a delivery comes due at `due_us`.

        Dispatchers here whose standing requests were `served` by the same
        transaction know what it left, and are not woken.
        """
        self.dispatchers.wake(s for s in subscription_ids if s not in served)
        if due_us is not None and self.timer is not None:
            self.timer.schedule(due_us)
        if self.remote is not None:
            self.remote.ready(subscription_ids, due_us)

    def settled(
        self, ack_ids: Sequence[str], outcome: SettleOutcome, *, acked: bool = False
    ) -> None:
        """These leases ended (settled, expired, lost): credit back, and who may deliver more."""
        self.dispatchers.ended(ack_ids, acked=acked)
        self.ready(outcome.ready_subscription_ids, outcome.next_scheduled_us)

    def heard(self, subscription_ids: frozenset[int] | None, due_us: int | None) -> None:
        """Another broker made deliveries ready (None: perhaps anything) or scheduled one."""
        if subscription_ids is None:
            for dispatcher in self.dispatchers:
                dispatcher.wake()
            if self.timer is not None:
                self.timer.schedule(0)
        else:
            self.dispatchers.wake(subscription_ids)
        if due_us is not None and self.timer is not None:
            self.timer.schedule(due_us)
