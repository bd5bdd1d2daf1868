"""The delivery engine: what the API calls, over storage, group commit and dispatchers.

It composes the parts of one broker process: the dispatcher of each
subscription with consumers here, who holds which lease (`Holds`), the
ephemeral tails, the background services (lease reaper, scheduler, retention,
dedup pruning) and the rates; settling a lease returns its consumer's credit
and wakes whoever may deliver more. Everything durable is in the storage; the
engine can be restarted at any moment and loses nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from broker.config import Settings
from broker.delivery.failure import Failure
from broker.domain import (
    AttemptOutcome,
    DeadReason,
    DeliveryInfo,
    DeliveryState,
    EventDraft,
    LeasedDelivery,
    LeaseRequest,
    PublishOutcome,
    SettleOutcome,
    StoredEvent,
    Subscription,
    SubscriptionCounts,
)
from broker.engine import backoff
from broker.engine.committer import Coalescer, Committer
from broker.engine.dispatcher import ConsumerStream, StandingLease, SubscriptionDispatcher
from broker.engine.holds import Holds
from broker.engine.metrics import BrokerMetrics
from broker.engine.operations import inspect, lease, publish, replay, settle
from broker.engine.operations.lease import LeaseResult
from broker.engine.operations.replay import RedriveSelection, SeekOutcome
from broker.engine.rates import RateMeter
from broker.engine.recent import RecentEvents
from broker.engine.services import DedupPruner, LeaseReaper, Retention, Scheduler, Service
from broker.engine.wakeups import Wakeups
from broker.names import matches
from broker.storage.interface import Storage, StorageTx

_log = logging.getLogger(__name__)
T = TypeVar("T")

EXPIRE_BATCH = 500
REDRIVE_BATCH = 1000
MAINTENANCE_BATCH = 1000
PROMOTE_BATCH = 1000
TAIL_QUEUE_MAX = 10_000
#: Most events that many publish calls put into one joined insert.
PUBLISH_JOIN_MAX_EVENTS = 2000
DEDUP_PRUNE_BATCH = 1000
EXPIRED = Failure(AttemptOutcome.EXPIRED)


def wall_clock_us() -> int:
    """The current time in microseconds since the epoch."""
    return time.time_ns() // 1000


@dataclass(frozen=True)
class PublishCall:
    """One publish call's events, and the standing requests it serves."""

    drafts: tuple[EventDraft, ...]
    leases: tuple[StandingLease, ...] = ()


@dataclass(frozen=True)
class Published:
    """A publish call's outcomes, and what it leased per subscription id."""

    outcomes: list[PublishOutcome]
    leased: dict[int, LeaseResult]


def _hand_over(dispatchers: list[SubscriptionDispatcher], task: asyncio.Future[Published]) -> None:
    """Give each dispatcher what the publish leased for it (nothing if it failed)."""
    published = None if task.cancelled() or task.exception() else task.result()
    for dispatcher in dispatchers:
        leased = None if published is None else published.leased[dispatcher.subscription_id]
        dispatcher.accept(leased)


@dataclass(eq=False)
class TailStream:
    """An ephemeral tail: new events matching a filter, no acks, nothing stored."""

    filters: tuple[str, ...]
    outbox: asyncio.Queue[StoredEvent] = field(
        default_factory=lambda: asyncio.Queue(maxsize=TAIL_QUEUE_MAX)
    )
    dropped: int = 0


@dataclass
class Rates:
    """Rates measured by this broker process, for GetStats."""

    published: RateMeter = field(default_factory=RateMeter)
    delivered: dict[str, RateMeter] = field(default_factory=dict)
    acked: dict[str, RateMeter] = field(default_factory=dict)


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
        self._publishes: Coalescer[PublishCall, Published] = Coalescer(
            self.committer,
            self._insert_events,
            max_size=PUBLISH_JOIN_MAX_EVENTS,
            size_of=lambda call: len(call.drafts),
        )
        self.recent_events = RecentEvents()
        self.metrics = BrokerMetrics()
        self.rates = Rates()
        self._dispatchers: dict[int, SubscriptionDispatcher] = {}
        self.holds = Holds()
        self._tails: list[TailStream] = []
        #: Ids of the consumers attached here and not yet detached (the consumers gauge).
        self._attached: set[str] = set()
        self.reaper = LeaseReaper(
            self.committer, storage, self.holds, self, clock, settings.reaper_interval_s
        )
        self.scheduler = Scheduler(self.committer, self, clock, settings.poll_interval_s)
        self._services: list[Service] = [
            self.reaper,
            self.scheduler,
            Retention(
                self.committer,
                clock,
                settings.maintenance_interval_s,
                int(settings.event_retention_s * 1_000_000),
            ),
            DedupPruner(self.committer, clock, settings.maintenance_interval_s),
        ]
        self._background: set[asyncio.Task[object]] = set()
        self._stopping = False
        self._wakeups: Wakeups | None = None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start group commit and the timers for leases and scheduled deliveries."""
        self.committer.start()
        notifier = self.storage.notifier()
        if notifier is not None:
            self._wakeups = Wakeups(notifier, self._on_remote_wake, self._on_remote_delete)
            self._wakeups.start()
        for service in self._services:
            service.start()

    async def end_streams(self) -> None:
        """End every consumer stream and stop dispatching (first step of a shutdown).

        What the consumers hold stays theirs: they may still ack, nack or extend it
        until `stop()` gives back whatever is left.
        """
        self._stopping = True
        for dispatcher in list(self._dispatchers.values()):
            await dispatcher.stop("broker shutting down")

    @property
    def draining(self) -> bool:
        """True once shutdown began: nothing new is delivered, held leases may still settle."""
        return self._stopping

    def leases_held(self) -> int:
        """How many deliveries consumers of this process hold, not yet settled."""
        return len(self.holds)

    async def stop(self) -> None:
        """Give every lease held here back, stop the timers, then group commit."""
        await self.end_streams()
        held = list(self.holds)
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

    # -- publishing ----------------------------------------------------------

    async def publish(self, drafts: Sequence[EventDraft]) -> list[PublishOutcome]:
        """Store events all or none, then wake the subscriptions they are ready in.

        Caught-up dispatchers whose subscriptions match these events have their
        standing requests served in the same transaction: the new deliveries
        are leased with the events' own commit, and no dispatcher needs waking.
        """
        taken = self._take_standing(drafts)
        call = PublishCall(tuple(drafts), tuple(lease for _, lease in taken))
        if not taken:
            published = await self._publishes.run(call)
        else:
            task = asyncio.ensure_future(self._publishes.run(call))
            # Handed over even if this caller is cancelled: the leases are in the database.
            task.add_done_callback(partial(_hand_over, [d for d, _ in taken]))
            published = await asyncio.shield(task)
        outcomes = published.outcomes
        new = sum(1 for o in outcomes if not o.duplicate)
        self.rates.published.add(new)
        self.metrics.events_published.inc(new)
        if new < len(outcomes):
            self.metrics.events_duplicate.inc(len(outcomes) - new)
        now = self.clock()
        served = frozenset(lease.subscription_id for _, lease in taken)
        for draft, outcome in zip(drafts, outcomes, strict=True):
            if outcome.duplicate:
                continue
            self.ready(outcome.ready_subscription_ids, outcome.next_scheduled_us, served=served)
            if self._tails:
                self._feed_tails(draft, now)
        return outcomes

    def _take_standing(
        self, drafts: Sequence[EventDraft]
    ) -> list[tuple[SubscriptionDispatcher, StandingLease]]:
        """The standing requests of caught-up dispatchers that these events are ready for."""
        standing = [d for d in self._dispatchers.values() if d.has_standing]
        if not standing:
            return []
        now = self.clock()
        names = {d.name for d in drafts if d.deliver_at_us <= now}
        taken = []
        for dispatcher in standing:
            if any(dispatcher.matches(n) for n in names):
                lease = dispatcher.take()
                if lease is not None:
                    taken.append((dispatcher, lease))
        return taken

    def _insert_events(self, tx: StorageTx, now: int, calls: list[PublishCall]) -> list[Published]:
        """Insert the events of many publish calls with one statement per table.

        Then serve the standing requests the calls took, in the same transaction.
        """
        drafts = [draft for call in calls for draft in call.drafts]
        outcomes = publish.publish(tx, now, drafts, self.settings.dedup_window_us)
        # Remembered for their first lease: only events ready now in some subscription.
        self.recent_events.put_many(
            draft.stored_at(now)
            for draft, outcome in zip(drafts, outcomes, strict=True)
            if outcome.matched and draft.deliver_at_us <= now
        )
        known = self.recent_events.get_many
        published: list[Published] = []
        start = 0
        for call in calls:
            leased = {
                standing.subscription_id: lease.lease(
                    tx, now, standing.subscription_id, standing.requests, known
                )
                for standing in call.leases
            }
            published.append(Published(outcomes[start : start + len(call.drafts)], leased))
            start += len(call.drafts)
        return published

    def _feed_tails(self, draft: EventDraft, now_us: int) -> None:
        event = draft.stored_at(now_us)
        for tail in self._tails:
            if matches(tail.filters, draft.name):
                try:
                    tail.outbox.put_nowait(event)
                except asyncio.QueueFull:
                    tail.dropped += 1

    # -- consumers -----------------------------------------------------------

    def attach(self, subscription: Subscription, consumer: ConsumerStream) -> None:
        """Attach a consumer to a subscription's dispatcher (made on first use).

        Once shutdown began the stream is ended at once: nothing more is delivered here.
        """
        if self._stopping:
            consumer.end("broker shutting down")
            return
        dispatcher = self._dispatchers.get(subscription.id)
        if dispatcher is None:
            dispatcher = SubscriptionDispatcher(
                subscription.id,
                subscription.name,
                self._lease,
                self._release_soon,
                self._on_leased,
                self.settings.poll_interval_s,
                subscription.filters,
                standing_requests=self.storage.reads_own_log,
            )
            self._dispatchers[subscription.id] = dispatcher
            dispatcher.start()
        dispatcher.add(consumer)
        self._attached.add(consumer.id)
        self.metrics.consumer_attached(subscription.name)

    def detach(self, subscription_id: int, consumer: ConsumerStream) -> None:
        """A consumer left: give back what it holds, at once (attempt counted).

        Not while shutting down: the stream was ended by the broker, and the consumer's
        running handlers may still settle what it holds (`stop()` gives back the rest).
        """
        consumer.closed = True
        dispatcher = self._dispatchers.get(subscription_id)
        if dispatcher is not None:
            dispatcher.remove(consumer)
        if consumer.id in self._attached:
            self._attached.remove(consumer.id)
            self.metrics.consumer_detached(consumer.subscription)
        if consumer.outstanding and not self._stopping:
            give_back = self._release_soon if dispatcher is None else dispatcher.give_back
            give_back(list(consumer.outstanding))

    def tail(self, filters: tuple[str, ...]) -> TailStream:
        """Start an ephemeral tail."""
        stream = TailStream(filters)
        self._tails.append(stream)
        return stream

    def untail(self, stream: TailStream) -> None:
        """End an ephemeral tail."""
        if stream in self._tails:
            self._tails.remove(stream)

    def consumer_count(self, subscription: str) -> int:
        """Consumers of a subscription connected to this process."""
        return sum(len(d.consumers) for d in self._dispatchers.values() if d.name == subscription)

    async def _lease(self, subscription_id: int, requests: Sequence[LeaseRequest]) -> LeaseResult:
        known = self.recent_events.get_many
        result = await self.committer.run(
            lambda tx, now: lease.lease(tx, now, subscription_id, requests, known)
        )
        if result.next_scheduled_us is not None:
            self.ready((), result.next_scheduled_us)
        return result

    def _on_leased(
        self,
        dispatcher: SubscriptionDispatcher,
        consumer: ConsumerStream,
        deliveries: list[LeasedDelivery],
    ) -> None:
        self.holds.add(dispatcher, consumer, deliveries)
        self.rates.delivered.setdefault(consumer.subscription, RateMeter()).add(len(deliveries))
        self.metrics.deliveries.labels(consumer.subscription).inc(len(deliveries))
        now = self.clock()
        latency = self.metrics.delivery_latency.labels(consumer.subscription)
        for delivery in deliveries:
            if delivery.attempt == 1:
                latency.observe(max(0, now - delivery.event.deliver_at_us) / 1_000_000)

    def _release_soon(self, ack_ids: Sequence[str]) -> None:
        """Give leases back in the background (called where awaiting is not possible)."""
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
            self._fail(list(ack_ids), AttemptOutcome.RELEASED, immediate=True)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- settling ------------------------------------------------------------

    async def ack(self, ack_ids: Sequence[str]) -> SettleOutcome:
        """Acknowledge leases."""
        outcome = await self.committer.run(lambda tx, now: settle.ack(tx, now, ack_ids))
        self.settled(ack_ids, outcome, acked=True)
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
        self.settled(outcome.not_applied, outcome)
        self.holds.extend(outcome.applied, self.clock() + extension_us)
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
        self.settled(ack_ids, outcome)
        return outcome

    def settled(
        self, ack_ids: Sequence[str], outcome: SettleOutcome, *, acked: bool = False
    ) -> None:
        """Return the credit of settled ack ids and wake whoever may now deliver."""
        woken: set[int] = set()
        for ack_id in ack_ids:
            hold = self.holds.pop(ack_id)
            if hold is None:
                continue
            consumer, dispatcher = hold.consumer, hold.dispatcher
            consumer.outstanding.discard(ack_id)
            if acked:
                self.rates.acked.setdefault(consumer.subscription, RateMeter()).add()
                self.metrics.acks.labels(consumer.subscription).inc()
            if dispatcher.subscription_id not in woken:
                woken.add(dispatcher.subscription_id)
                dispatcher.credit_freed()
        self.ready(outcome.ready_subscription_ids, outcome.next_scheduled_us)

    def ready(
        self,
        subscription_ids: Collection[int],
        due_us: int | None = None,
        *,
        served: Collection[int] = (),
    ) -> None:
        """Wake these subscriptions' dispatchers and the scheduler here and on other brokers.

        The subscriptions may deliver more now; a delivery comes due at `due_us`.
        Dispatchers here whose standing requests were `served` in the same
        transaction know what it left, and are not woken.
        """
        for subscription_id in subscription_ids:
            if subscription_id not in served:
                self._wake(subscription_id)
        if due_us is not None:
            self.scheduler.schedule(due_us)
        if self._wakeups is not None:
            self._wakeups.ready(subscription_ids, due_us)

    def _wake(self, subscription_id: int) -> None:
        dispatcher = self._dispatchers.get(subscription_id)
        if dispatcher is not None:
            dispatcher.wake()

    def _on_remote_wake(self, subscription_ids: frozenset[int] | None, due_us: int | None) -> None:
        """Another broker made deliveries ready (None: perhaps anything) or scheduled one."""
        if subscription_ids is None:
            for dispatcher in self._dispatchers.values():
                dispatcher.wake()
            self.scheduler.wake()
        else:
            for subscription_id in subscription_ids:
                self._wake(subscription_id)
        if due_us is not None:
            self.scheduler.schedule(due_us)

    def _on_remote_delete(self, subscription_ids: frozenset[int]) -> None:
        """Another broker deleted subscriptions: end their streams here too."""
        for subscription_id in subscription_ids:
            dispatcher = self._dispatchers.get(subscription_id)
            if dispatcher is not None:
                task = asyncio.get_running_loop().create_task(
                    self._forget(subscription_id, "the subscription was deleted")
                )
                self._background.add(task)
                task.add_done_callback(self._background.discard)

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
            self.ready([subscription.id])
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
        self.ready([subscription.id])
        return outcome

    # -- subscriptions and inspection ----------------------------------------

    async def create_subscription(self, subscription: Subscription) -> Subscription:
        """Create a subscription (raises SubscriptionExistsError)."""
        return await self.committer.run(lambda tx, now: tx.subscription_create(subscription))

    async def update_subscription(self, subscription: Subscription) -> Subscription | None:
        """Replace a subscription's settings; they apply to the next lease."""
        updated = await self.committer.run(lambda tx, now: tx.subscription_update(subscription))
        if updated is not None:
            dispatcher = self._dispatchers.get(updated.id)
            if dispatcher is not None:
                dispatcher.set_filters(updated.filters)
            self.ready([updated.id])
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

    async def _forget(self, subscription_id: int, reason: str) -> None:
        """End a deleted subscription's streams here and forget its leases."""
        dispatcher = self._dispatchers.pop(subscription_id, None)
        if dispatcher is not None:
            self.holds.forget(dispatcher)
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
