"""The background services, each alone, on storage in memory and a clock the test moves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.domain import (
    AttemptOutcome,
    DeliveryState,
    LeaseRequest,
    SettleOutcome,
)
from broker.engine.committer import Committer
from broker.engine.consumers import ConsumerStream
from broker.engine.dispatcher import DispatchSetup, SubscriptionDispatcher
from broker.engine.dispatchers import Dispatchers, Signals
from broker.engine.operations.lease import LeaseResult
from broker.engine.services import LeaseReaper, Retention, Scheduler, Service
from broker.engine.stats import Stats
from broker.storage import Storage
from broker.storage.interface import StorageUnavailableError
from broker.storage.memory import MemoryStorage
from tests.storage.test_storage import (
    T0,
    S,
    ack,
    create,
    draft,
    extend,
    fail,
    lease,
    leased,
    publish,
    states,
    sub,
)


@dataclass
class Clock:
    now_us: int = T0

    def __call__(self) -> int:
        return self.now_us


@dataclass
class Reported:
    """What the services told the engine."""

    ready_ids: list[int] = field(default_factory=list)
    settled_ids: list[str] = field(default_factory=list)

    def ready(self, subscription_ids: Collection[int], due_us: int | None = None) -> None:
        self.ready_ids.extend(subscription_ids)

    def settled(self, ack_ids: Sequence[str], outcome: SettleOutcome) -> None:
        self.settled_ids.extend(ack_ids)


Scenario = Callable[[Storage, Committer, Clock, Reported], Coroutine[Any, Any, None]]


def run(scenario: Scenario) -> None:
    """Run a scenario on storage in memory, with group commit and the test's clock."""
    storage = MemoryStorage()
    clock = Clock()
    committer = Committer(storage, clock)
    committer.start()
    try:
        asyncio.run(scenario(storage, committer, clock, Reported()))
    finally:
        committer.stop()
        storage.close()


def test_the_scheduler_promotes_when_due_and_sleeps_until_then() -> None:
    async def scenario(storage: Storage, committer: Committer, clock: Clock, got: Reported) -> None:
        s = create(storage, sub())
        # A priority gives the delayed event its row at once (a plain one waits in the
        # log until a lease's scan gives it one).
        (event_id,) = publish(storage, draft(deliver_at=T0 + 10 * S, priority=1))
        scheduler = Scheduler(committer, got, clock, poll_interval_s=60.0)
        scheduler.schedule(T0 + 10 * S)
        assert await scheduler.step() == 10.0  # nothing due yet: sleep until it is
        assert states(storage, event_id) == {"billing": DeliveryState.SCHEDULED}
        clock.now_us = T0 + 10 * S
        assert await scheduler.step() == 60.0  # promoted; nothing else known: poll
        assert states(storage, event_id) == {"billing": DeliveryState.READY}
        assert got.ready_ids == [s.id]

    run(scenario)


def test_the_reaper_expires_at_the_deadline_and_reports_the_credit() -> None:
    async def scenario(storage: Storage, committer: Committer, clock: Clock, got: Reported) -> None:
        s = create(storage, sub(ack_deadline_us=30 * S))
        (event_id,) = publish(storage, draft())
        (ack_id,) = _lease(storage, s.id)
        reaper = LeaseReaper(committer, storage, Dispatchers(), got, clock, interval_s=0.5)
        clock.now_us = T0 + 29 * S
        await reaper.step()
        assert got.settled_ids == [] and states(storage, event_id)["billing"] is (
            DeliveryState.IN_FLIGHT
        )
        clock.now_us = T0 + 30 * S
        await reaper.step()
        assert got.settled_ids == [ack_id]
        assert states(storage, event_id)["billing"] is DeliveryState.SCHEDULED  # backoff

    run(scenario)


def test_the_reaper_notices_a_lease_another_broker_expired() -> None:
    async def scenario(storage: Storage, committer: Committer, clock: Clock, got: Reported) -> None:
        s = create(storage, sub(ack_deadline_us=30 * S))
        publish(storage, draft(), draft())
        lost, kept = leased(storage, s.id, 2)["c1"]
        dispatchers = Dispatchers()
        dispatcher = _dispatcher(s.id)
        dispatchers.add(dispatcher)
        consumer = ConsumerStream("billing", "c1", 10, 10)
        dispatcher.consumers.append(consumer)
        consumer.send([lost, kept])
        # another broker expires one; the other was extended there
        fail(storage, [lost.ack_id], T0 + 30 * S, outcome=AttemptOutcome.EXPIRED)
        extend(storage, [kept.ack_id], 60 * S, T0 + 29 * S)
        reaper = LeaseReaper(committer, storage, dispatchers, got, clock, interval_s=0.5)
        clock.now_us = T0 + 31 * S
        await reaper.release_lost()
        assert got.settled_ids == [lost.ack_id]
        # The live one is looked at again an interval later, not at every step.
        assert kept.ack_id not in dispatchers.overdue(T0 + 31 * S + S // 2)
        assert kept.ack_id in dispatchers.overdue(T0 + 31 * S + S // 2 + 1)

    run(scenario)


def _dispatcher(subscription_id: int) -> SubscriptionDispatcher:
    async def no_lease(subscription_id: int, requests: Sequence[LeaseRequest]) -> LeaseResult:
        return LeaseResult()

    async def no_release(ack_ids: Sequence[str]) -> SettleOutcome:
        return SettleOutcome((), tuple(ack_ids))

    setup = DispatchSetup(
        no_lease, no_release, Stats(), Signals(Dispatchers()), lambda: T0, poll_interval_s=1.0
    )
    return SubscriptionDispatcher(subscription_id, "billing", setup)


def _ignore(*args: object) -> None:
    return None


def _lease(storage: Storage, subscription_id: int) -> list[str]:
    return lease(storage, subscription_id, 1)


def test_retention_deletes_acked_deliveries_and_their_events_past_retention() -> None:
    async def scenario(storage: Storage, committer: Committer, clock: Clock, got: Reported) -> None:
        s = create(storage, sub(retention_us=60 * S))
        (event_id,) = publish(storage, draft())
        fail(storage, _lease(storage, s.id))  # a retried delivery keeps its row when acked
        (ack_id,) = _lease(storage, s.id)
        assert ack(storage, [ack_id]).applied == (ack_id,)
        retention = Retention(committer, clock, interval_s=10.0, event_retention_us=60 * S)
        clock.now_us = T0 + 59 * S
        await retention.step()
        assert states(storage, event_id) == {"billing": DeliveryState.ACKED}
        clock.now_us = T0 + 61 * S
        await retention.step()
        assert states(storage, event_id) == {}
        with storage.read() as tx:
            assert tx.event_get(event_id) is None

    run(scenario)


class Flaky(Service):
    """A service whose first step finds the database away."""

    name = "flaky"

    def __init__(self) -> None:
        super().__init__(Clock(), interval_s=0.01)
        self.done = asyncio.Event()

    async def step(self) -> float | None:
        if self.steps == 1:
            raise StorageUnavailableError("the database is away")
        self.done.set()
        return 60.0


def test_a_failing_step_is_retried_an_interval_later_and_stop_ends_the_wait() -> None:
    async def scenario() -> None:
        service = Flaky()
        service.start()
        await asyncio.wait_for(service.done.wait(), 10)
        assert service.steps == 2
        await asyncio.wait_for(service.stop(), 10)  # not the 60 s the step asked for

    asyncio.run(scenario())
