"""A dispatcher's standing requests, without a database: when it leases, posts and takes back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from broker.domain import LeasedDelivery, LeaseRequest, SettleOutcome, StoredEvent
from broker.engine.consumers import ConsumerStream
from broker.engine.dispatcher import DispatchSetup, SubscriptionDispatcher
from broker.engine.dispatchers import Dispatchers, Signals
from broker.engine.operations.lease import LeaseResult
from broker.engine.stats import Stats

T0 = 1_700_000_000_000_000


def _delivery(n: int) -> LeasedDelivery:
    event = StoredEvent(
        event_id=f"e{n}",
        name="order.placed",
        payload=b"{}",
        content_type="application/json",
        headers={},
        dedup_id="",
        priority=0,
        ordering_key="",
        published_at_us=T0,
        deliver_at_us=T0,
        delay_us=0,
    )
    return LeasedDelivery(f"{n}-1", "orders", event, 1, T0 + 30_000_000)


class Fake:
    """A dispatcher on a lease function that finds nothing ready, and what it was told."""

    def __init__(self) -> None:
        self.leases: list[list[LeaseRequest]] = []
        self.released: list[str] = []
        setup = DispatchSetup(
            lease=self._lease,
            release=self._release,
            stats=Stats(),
            signals=Signals(Dispatchers()),
            clock=lambda: T0,
            poll_interval_s=600.0,
        )
        self.dispatcher = SubscriptionDispatcher(1, "orders", setup, ("order.*",))
        self.consumer = ConsumerStream("orders", "c", max_outstanding=5, max_batch_size=10)

    async def _lease(self, subscription_id: int, requests: Sequence[LeaseRequest]) -> LeaseResult:
        self.leases.append(list(requests))
        return LeaseResult()

    async def _release(self, ack_ids: Sequence[str]) -> SettleOutcome:
        self.released.extend(ack_ids)
        return SettleOutcome(tuple(ack_ids), ())

    async def start(self) -> None:
        self.dispatcher.start()
        self.dispatcher.add(self.consumer)
        await until(lambda: self.dispatcher.has_standing)


async def until(condition: Callable[[], bool]) -> None:
    """Let the dispatcher's task run until the condition holds (no clock involved)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def settle() -> None:
    """Let every ready task run to its next wait."""
    for _ in range(50):
        await asyncio.sleep(0)


def test_a_caught_up_dispatcher_offers_freed_credit_without_leasing() -> None:
    async def scenario() -> None:
        fake = Fake()
        await fake.start()
        assert len(fake.leases) == 1  # the first look found nothing ready
        assert fake.consumer.free == 0  # all of it reserved for the standing request
        lease = fake.dispatcher.take()
        assert lease is not None and lease.requests == (LeaseRequest(fake.consumer.id, 5),)
        fake.dispatcher.accept(LeaseResult({fake.consumer.id: [_delivery(1)]}))
        await until(lambda: fake.dispatcher.has_standing)
        assert set(fake.consumer.held) == {"1-1"}
        taken = fake.dispatcher.take()
        assert taken is not None and taken.requests == (LeaseRequest(fake.consumer.id, 4),)
        fake.dispatcher.accept(LeaseResult())
        await until(lambda: fake.dispatcher.has_standing)
        sent = await fake.consumer.next_batch(lambda: T0)
        assert sent is not None and [d.ack_id for d in sent[0]] == ["1-1"]
        fake.consumer.written(sent[1])
        fake.consumer.held.clear()
        fake.dispatcher.credit_freed()  # an ack: nothing was made ready, so no lease
        await settle()
        assert len(fake.leases) == 1
        taken = fake.dispatcher.take()
        assert taken is not None and taken.requests == (LeaseRequest(fake.consumer.id, 5),)
        fake.dispatcher.accept(LeaseResult())
        await fake.dispatcher.stop("done")

    asyncio.run(scenario())


def test_deliveries_made_ready_elsewhere_are_leased_not_waited_for() -> None:
    async def scenario() -> None:
        fake = Fake()
        await fake.start()
        fake.dispatcher.wake()  # a retry came due, another broker published ...
        await until(lambda: len(fake.leases) == 2)
        await until(lambda: fake.dispatcher.has_standing)
        await fake.dispatcher.stop("done")

    asyncio.run(scenario())


def test_a_wake_while_a_publish_holds_the_request_leases_after_it() -> None:
    async def scenario() -> None:
        fake = Fake()
        await fake.start()
        assert fake.dispatcher.take() is not None
        fake.dispatcher.wake()
        await settle()
        assert len(fake.leases) == 1  # not while the publish holds the consumer's credit
        assert not fake.dispatcher.has_standing
        fake.dispatcher.accept(LeaseResult())
        await until(lambda: len(fake.leases) == 2)
        assert fake.leases[1] == [LeaseRequest(fake.consumer.id, 5)]
        await fake.dispatcher.stop("done")

    asyncio.run(scenario())


def test_a_failed_publish_gives_the_request_back_and_the_dispatcher_looks_again() -> None:
    async def scenario() -> None:
        fake = Fake()
        await fake.start()
        assert fake.dispatcher.take() is not None
        fake.dispatcher.accept(None)
        await until(lambda: len(fake.leases) == 2)
        assert fake.consumer.reserved == 5  # reserved again, for the new standing request
        await until(lambda: fake.dispatcher.has_standing)
        await fake.dispatcher.stop("done")
        assert fake.consumer.reserved == 0

    asyncio.run(scenario())


def test_what_a_publish_leased_for_a_consumer_that_left_is_given_back() -> None:
    async def scenario() -> None:
        fake = Fake()
        await fake.start()
        assert fake.dispatcher.take() is not None
        fake.consumer.closed = True
        fake.dispatcher.remove(fake.consumer)
        fake.dispatcher.accept(LeaseResult({fake.consumer.id: [_delivery(1), _delivery(2)]}))
        await settle()
        assert fake.released == ["1-1", "2-1"]
        assert fake.consumer.reserved == 0
        await settle()
        assert not fake.dispatcher.has_standing  # nobody left to offer credit for
        await fake.dispatcher.stop("done")

    asyncio.run(scenario())


def test_a_request_of_consumers_that_all_left_is_not_taken() -> None:
    async def scenario() -> None:
        fake = Fake()
        await fake.start()
        fake.consumer.closed = True
        assert fake.dispatcher.take() is None
        assert fake.consumer.reserved == 0
        await fake.dispatcher.stop("done")

    asyncio.run(scenario())


def test_what_a_consumer_that_left_held_is_given_back_after_the_lease_on_its_way() -> None:
    async def scenario() -> None:
        fake = Fake()
        await fake.start()
        assert fake.dispatcher.take() is not None  # a publish is leasing for the consumer
        fake.consumer.closed = True
        fake.dispatcher.remove(fake.consumer)
        # Given back now, the publish's lease could take these again for the consumer
        # that left, and give them back once more: an attempt each for nothing.
        fake.dispatcher.give_back(["7-1", "8-1"])
        await settle()
        assert fake.released == []
        fake.dispatcher.accept(LeaseResult())
        await settle()
        assert fake.released == ["7-1", "8-1"]
        fake.dispatcher.give_back(["9-1"])  # nothing on its way: at once
        await settle()
        assert fake.released == ["7-1", "8-1", "9-1"]
        await fake.dispatcher.stop("done")

    asyncio.run(scenario())
