"""The delivery engine: what the API calls, composed of group commit, dispatchers and services.

It builds the parts of one broker process and hands each what it works with:
group commit (`Committer`), the publisher, one dispatcher per subscription
with consumers here (each owning its consumers' leases), the ephemeral tails,
the background services (lease reaper, scheduler, retention, dedup pruning),
the wake-ups between brokers, and `Signals`, where news that deliveries may
move goes. The API's settle calls run their operation and tell `Signals`
what it changed. Everything durable is in the storage; the engine can be
restarted at any moment and loses nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from broker.config import Settings
from broker.delivery.failure import Failure
from broker.domain import (
    AttemptOutcome,
    DeadReason,
    DeliveryInfo,
    DeliveryState,
    EventDraft,
    LeaseRequest,
    PublishOutcome,
    SettleOutcome,
    StoredEvent,
    Subscription,
    SubscriptionCounts,
)
from broker.engine import backoff
from broker.engine.committer import Committer
from broker.engine.consumers import ConsumerStream
from broker.engine.dispatcher import DispatchSetup, SubscriptionDispatcher
from broker.engine.dispatchers import Dispatchers, Signals
from broker.engine.metrics import BrokerMetrics
from broker.engine.operations import inspect, lease, replay, settle
from broker.engine.operations.lease import LeaseResult
from broker.engine.operations.replay import RedriveSelection, SeekOutcome
from broker.engine.operations.subscriptions import update as update_subscription
from broker.engine.publishing import Publisher
from broker.engine.recent import RecentEvents
from broker.engine.services import DedupPruner, LeaseReaper, Retention, Scheduler, Service
from broker.engine.stats import Rates, Stats
from broker.engine.tails import Tails, TailStream
from broker.engine.wakeups import Wakeups
from broker.storage.interface import Storage, StorageTx

_log = logging.getLogger(__name__)
T = TypeVar("T")

REDRIVE_BATCH = 1000
US_PER_S = 1_000_000


def wall_clock_us() -> int:
    """The current time in microseconds since the epoch."""
    return time.time_ns() // 1000


class DeliveryEngine:
    """Publishes, dispatches and settles deliveries for one broker process."""

    def __init__(
        self,
        storage: Storage,
        settings: Settings,
        clock: Callable[[], int] = wall_clock_us,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.clock = clock
        self.committer = Committer(
            storage,
            clock,
            workers=storage.max_concurrent_writers,
            batch_max=settings.commit_batch_max,
            delay_s=settings.commit_delay_s,
        )
        self.recent_events = RecentEvents()
        self.stats = Stats(exemplars=settings.metrics_exemplars)
        self.dispatchers = Dispatchers()
        self.signals = Signals(self.dispatchers)
        self.tails = Tails()
        self.publisher = Publisher(
            self.committer,
            self.dispatchers,
            self.signals,
            self.stats,
            self.tails,
            self.recent_events,
            settings.dedup_window_us,
        )
        self._dispatch = DispatchSetup(
            lease=self._lease,
            release=self._release,
            stats=self.stats,
            signals=self.signals,
            clock=clock,
            poll_interval_s=settings.poll_interval_s,
            standing_requests=storage.reads_own_log,
        )
        #: Ids of the consumers attached here and not yet detached (the consumers gauge).
        self._attached: set[str] = set()
        self.reaper = LeaseReaper(
            self.committer,
            storage,
            self.dispatchers,
            self.signals,
            clock,
            settings.reaper_interval_s,
        )
        self.scheduler = Scheduler(self.committer, self.signals, clock, settings.poll_interval_s)
        self.signals.timer = self.scheduler
        self._services: list[Service] = [
            self.reaper,
            self.scheduler,
            Retention(
                self.committer,
                clock,
                settings.maintenance_interval_s,
                int(settings.event_retention_s * US_PER_S),
            ),
            DedupPruner(self.committer, clock, settings.maintenance_interval_s),
        ]
        self._background: set[asyncio.Task[object]] = set()
        self._stopping = False
        self._wakeups: Wakeups | None = None

    @property
    def metrics(self) -> BrokerMetrics:
        """The Prometheus metrics of this process."""
        return self.stats.metrics

    @property
    def rates(self) -> Rates:
        """The rates of this process, for GetStats."""
        return self.stats.rates

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start group commit, the background services, and wake-ups between brokers."""
        self.committer.start()
        notifier = self.storage.notifier()
        if notifier is not None:
            self._wakeups = Wakeups(notifier, self.signals.heard, self._deleted_elsewhere)
            self.signals.remote = self._wakeups
            self._wakeups.start()
        for service in self._services:
            service.start()

    async def end_streams(self) -> None:
        """End every consumer stream and stop dispatching (first step of a shutdown).

        What the consumers hold stays theirs: they may still ack, nack or extend it
        until `stop()` gives back whatever is left.
        """
        self._stopping = True
        for dispatcher in self.dispatchers:
            await dispatcher.stop("broker shutting down")

    @property
    def draining(self) -> bool:
        """True once shutdown began: nothing new is delivered, held leases may still settle."""
        return self._stopping

    def leases_held(self) -> int:
        """How many deliveries consumers of this process hold, not yet settled."""
        return len(self.dispatchers.held())

    async def stop(self) -> None:
        """Give every lease held here back, stop the services, then group commit."""
        await self.end_streams()
        held = self.dispatchers.held()
        if held:
            with contextlib.suppress(Exception):
                await self._fail(held, AttemptOutcome.RELEASED, immediate=True)
        for service in self._services:
            await service.stop()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._wakeups is not None:
            await self._wakeups.stop()
        self.committer.stop()

    async def read(self, operation: Callable[[StorageTx], T]) -> T:
        """Run a read-only operation on a reader connection, off the event loop."""

        def run() -> T:
            with self.storage.read() as tx:
                return operation(tx)

        return await asyncio.to_thread(run)

    # -- publishing and consumers ----------------------------------------------

    async def publish(self, drafts: Sequence[EventDraft]) -> list[PublishOutcome]:
        """Store events all or none, then wake the subscriptions they are ready in."""
        return await self.publisher.publish(drafts, self.clock())

    def attach(self, subscription: Subscription, consumer: ConsumerStream) -> None:
        """Attach a consumer to a subscription's dispatcher (made on first use).

        Once shutdown began the stream is ended at once: nothing more is delivered here.
        """
        if self._stopping:
            consumer.end("broker shutting down")
            return
        dispatcher = self.dispatchers.get(subscription.id)
        if dispatcher is None:
            dispatcher = SubscriptionDispatcher(
                subscription.id, subscription.name, self._dispatch, subscription.filters
            )
            self.dispatchers.add(dispatcher)
            dispatcher.start()
        dispatcher.add(consumer)
        self._attached.add(consumer.id)
        self.metrics.consumer_attached(subscription.name)

    def detach(self, subscription_id: int, consumer: ConsumerStream) -> None:
        """A consumer left: what it holds goes back at once (attempt counted).

        Not while shutting down: the stream was ended by the broker, and the consumer's
        running handlers may still settle what it holds (`stop()` gives back the rest).
        """
        consumer.closed = True
        dispatcher = self.dispatchers.get(subscription_id)
        if dispatcher is not None:
            dispatcher.remove(consumer, give_back=not self._stopping)
        if consumer.id in self._attached:
            self._attached.remove(consumer.id)
            self.metrics.consumer_detached(consumer.subscription)

    def tail(self, filters: tuple[str, ...]) -> TailStream:
        """Start an ephemeral tail."""
        return self.tails.open(filters)

    def untail(self, stream: TailStream) -> None:
        """End an ephemeral tail."""
        self.tails.close(stream)

    def consumer_count(self, subscription: str) -> int:
        """Consumers of a subscription connected to this process."""
        return sum(len(d.consumers) for d in self.dispatchers if d.name == subscription)

    async def _lease(self, subscription_id: int, requests: Sequence[LeaseRequest]) -> LeaseResult:
        """Lease for a dispatcher in the next group commit (a delivery it scheduled: the timer)."""
        known = self.recent_events.get_many
        result = await self.committer.run(
            lambda tx, now: lease.lease(tx, now, subscription_id, requests, known)
        )
        if result.next_scheduled_us is not None:
            self.signals.ready((), result.next_scheduled_us)
        return result

    async def _release(self, ack_ids: Sequence[str]) -> SettleOutcome:
        """Give leases back, ready again at once (attempt counted), for a dispatcher."""
        failure = Failure(AttemptOutcome.RELEASED, immediate=True)
        return await self.committer.run(
            lambda tx, now: settle.fail(tx, now, ack_ids, failure, backoff.draw)
        )

    # -- settling ------------------------------------------------------------

    async def ack(self, ack_ids: Sequence[str]) -> SettleOutcome:
        """Acknowledge leases."""
        outcome = await self.committer.run(lambda tx, now: settle.ack(tx, now, ack_ids))
        self.signals.settled(ack_ids, outcome, acked=True)
        return outcome

    async def nack(
        self,
        ack_ids: Sequence[str],
        *,
        delay_us: int | None,
        terminal: bool,
        error: str,
    ) -> SettleOutcome:
        """Give leases back for retry (after the backoff or `delay_us`) or dead-letter them."""
        return await self._fail(
            ack_ids, AttemptOutcome.NACKED, delay_us=delay_us, terminal=terminal, error=error
        )

    async def extend(self, ack_ids: Sequence[str], extension_us: int) -> SettleOutcome:
        """Extend leases to now + extension."""
        outcome = await self.committer.run(
            lambda tx, now: settle.extend(tx, now, ack_ids, extension_us)
        )
        # Ids that are no longer live are not held by anyone: return their credit.
        self.signals.settled(outcome.not_applied, outcome)
        self.dispatchers.extended(outcome.applied, self.clock() + extension_us)
        return outcome

    async def _fail(
        self,
        ack_ids: Sequence[str],
        outcome_kind: AttemptOutcome,
        *,
        delay_us: int | None = None,
        terminal: bool = False,
        immediate: bool = False,
        error: str = "",
    ) -> SettleOutcome:
        failure = Failure(outcome_kind, error, delay_us, terminal, immediate)
        outcome = await self.committer.run(
            lambda tx, now: settle.fail(tx, now, ack_ids, failure, backoff.draw)
        )
        self.signals.settled(ack_ids, outcome)
        return outcome

    # -- dead letters and replay -----------------------------------------------

    async def redrive(
        self,
        subscription: Subscription,
        *,
        event_ids: Sequence[str],
        name: str | None,
        reason: DeadReason | None,
    ) -> int:
        """Make dead letters ready again, in transactions of at most REDRIVE_BATCH."""
        total = 0
        selection = RedriveSelection(tuple(event_ids), name, reason)
        while True:
            count = await self.committer.run(
                lambda tx, now: replay.redrive(tx, now, subscription.id, selection, REDRIVE_BATCH)
            )
            total += count
            if count < REDRIVE_BATCH:
                break
        if total:
            _log.info("redrove %d dead letters of %s", total, subscription.name)
            self.signals.ready([subscription.id])
        return total

    async def seek(self, subscription: Subscription, time_us: int) -> SeekOutcome:
        """Replay what was published since a time; skip what was published before it."""
        outcome = await self.committer.run(
            lambda tx, now: replay.seek(tx, now, subscription.id, time_us)
        )
        _log.info(
            "seek of %s: %d replayed, %d skipped",
            subscription.name,
            outcome.replayed,
            outcome.skipped,
        )
        self.signals.ready([subscription.id])
        return outcome

    # -- subscriptions and inspection ----------------------------------------

    async def create_subscription(self, subscription: Subscription) -> Subscription:
        """Create a subscription (raises SubscriptionExistsError)."""
        return await self.committer.run(lambda tx, now: tx.subscription_create(subscription))

    async def update_subscription(self, subscription: Subscription) -> Subscription | None:
        """Replace a subscription's settings; they apply to the next lease."""
        outcome = await self.committer.run(
            lambda tx, now: update_subscription(tx, now, subscription)
        )
        updated = outcome.subscription
        if updated is not None:
            dispatcher = self.dispatchers.get(updated.id)
            if dispatcher is not None:
                dispatcher.set_filters(updated.filters)
            self.signals.ready([updated.id], outcome.due_us)
        return updated

    async def delete_subscription(self, name: str) -> bool:
        """Delete a subscription, end its streams here, forget its leases."""
        subscription = await self.read(lambda tx: tx.subscription_get(name))
        deleted = await self.committer.run(lambda tx, now: tx.subscription_delete(name))
        if deleted and subscription is not None:
            await self._forget(subscription.id, f"subscription {name!r} was deleted")
            if self._wakeups is not None:
                self._wakeups.deleted(subscription.id)
        return deleted

    def _deleted_elsewhere(self, subscription_ids: frozenset[int]) -> None:
        """Another broker deleted subscriptions: end their streams here too."""
        for subscription_id in subscription_ids:
            if self.dispatchers.get(subscription_id) is not None:
                task = asyncio.get_running_loop().create_task(
                    self._forget(subscription_id, "the subscription was deleted")
                )
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _forget(self, subscription_id: int, reason: str) -> None:
        """End a deleted subscription's streams here; its leases go with its dispatcher."""
        dispatcher = self.dispatchers.pop(subscription_id)
        if dispatcher is not None:
            await dispatcher.stop(reason)

    async def subscription(self, name: str) -> Subscription | None:
        """One subscription by name."""
        return await self.read(lambda tx: tx.subscription_get(name))

    async def event_with_deliveries(
        self, event_id: str
    ) -> tuple[StoredEvent | None, list[DeliveryInfo]]:
        """An event and its delivery in each subscription."""
        return await self.read(lambda tx: inspect.event_deliveries(tx, self.clock(), event_id))

    async def concurrency(self, names: set[str]) -> dict[str, tuple[int, int]]:
        """(in flight, max in flight) of those subscriptions that have a limit."""
        if not names:
            return {}

        def get(tx: StorageTx) -> dict[str, tuple[int, int]]:
            limits: dict[str, tuple[int, int]] = {}
            for name in names:
                sub = tx.subscription_get(name)
                if sub is not None and sub.max_in_flight > 0:
                    rows = tx.delivery_counts(sub.id)
                    in_flight = rows.by_state.get(DeliveryState.IN_FLIGHT, 0)
                    limits[name] = (in_flight, sub.max_in_flight)
            return limits

        return await self.read(get)

    async def counts(self, name: str | None) -> tuple[list[SubscriptionCounts], int]:
        """Delivery counts per subscription, and the number of stored events."""

        def get(tx: StorageTx) -> tuple[list[SubscriptionCounts], int]:
            return inspect.counts(tx, self.clock(), name), tx.event_count()

        return await self.read(get)
