"""The delivery engine: what the API calls, over storage, group commit and dispatchers.

It owns the in-process state of one broker process: the dispatcher of each
subscription with consumers here, who holds which ack id (to return credit),
the ephemeral tails, the timers for scheduled deliveries and expired leases,
and the rates. Everything durable is in the storage; the engine can be
restarted at any moment and loses nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from broker.config import Settings
from broker.domain import (
    AttemptOutcome,
    DeadReason,
    DeliveryInfo,
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
from broker.engine.dispatcher import ConsumerStream, SubscriptionDispatcher
from broker.engine.metrics import BrokerMetrics
from broker.engine.rates import RateMeter
from broker.engine.recent import RecentEvents
from broker.engine.settle import fail_leases
from broker.engine.wakeups import Wakeups
from broker.names import matches
from broker.storage.interface import (
    DeliveryAckParams,
    DeliveryExpiredListParams,
    DeliveryExtendParams,
    DeliveryLeaseParams,
    DeliveryPromoteParams,
    DeliveryRedriveParams,
    EventInsertParams,
    MaintenanceParams,
    SeekOutcome,
    Storage,
    StorageTx,
    StorageUnavailableError,
    SubscriptionSeekParams,
    SubscriptionUpdateParams,
)
from broker.transitions import Failure

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
        )
        self._publishes: Coalescer[Sequence[EventDraft], list[PublishOutcome]] = Coalescer(
            self.committer, self._insert_events, max_size=PUBLISH_JOIN_MAX_EVENTS, size_of=len
        )
        self.recent_events = RecentEvents()
        self.metrics = BrokerMetrics()
        self.rates = Rates()
        self._dispatchers: dict[int, SubscriptionDispatcher] = {}
        self._holders: dict[str, tuple[ConsumerStream, SubscriptionDispatcher]] = {}
        #: When each lease held here ends, as far as this broker knows (µs).
        self._held_until: dict[str, int] = {}
        self._tails: list[TailStream] = []
        #: Ids of the consumers attached here and not yet detached (the consumers gauge).
        self._attached: set[str] = set()
        self._next_due_us: int | None = None
        self._timer_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
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
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._expire_loop(), name="lease-reaper"),
            loop.create_task(self._promote_loop(), name="scheduler"),
            loop.create_task(self._maintenance_loop(), name="maintenance"),
        ]

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
        return len(self._holders)

    async def stop(self) -> None:
        """Give every lease held here back, stop the timers, then group commit."""
        await self.end_streams()
        held = list(self._holders)
        if held:
            with contextlib.suppress(Exception):
                await self._fail(held, AttemptOutcome.RELEASED, immediate=True)
        for task in self._tasks:
            task.cancel()
        pending: list[asyncio.Task[Any]] = [*self._tasks, *self._background]
        for task in pending:
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
        """Store events all or none, then wake the subscriptions they are ready in."""
        outcomes = await self._publishes.run(drafts)
        new = sum(1 for o in outcomes if not o.duplicate)
        self.rates.published.add(new)
        self.metrics.events_published.inc(new)
        if new < len(outcomes):
            self.metrics.events_duplicate.inc(len(outcomes) - new)
        now = self.clock()
        for draft, outcome in zip(drafts, outcomes, strict=True):
            if outcome.duplicate:
                continue
            self._ready(outcome.ready_subscription_ids, outcome.next_scheduled_us)
            if self._tails:
                self._feed_tails(draft, now)
        return outcomes

    def _insert_events(
        self, tx: StorageTx, now: int, requests: list[Sequence[EventDraft]]
    ) -> list[list[PublishOutcome]]:
        """Insert the events of many publish calls with one statement per table."""
        drafts = [draft for request in requests for draft in request]
        params = EventInsertParams(drafts, now, self.settings.dedup_window_us)
        outcomes = tx.event_insert_many(params)
        self.recent_events.put_many(
            stored_event(draft, now)
            for draft, outcome in zip(drafts, outcomes, strict=True)
            if not outcome.duplicate and draft.deliver_at_us <= now
        )
        split: list[list[PublishOutcome]] = []
        start = 0
        for request in requests:
            split.append(outcomes[start : start + len(request)])
            start += len(request)
        return split

    def _feed_tails(self, draft: EventDraft, now_us: int) -> None:
        event = stored_event(draft, now_us)
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
            self._release_soon(list(consumer.outstanding))

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

    async def _lease(
        self, subscription_id: int, requests: Sequence[LeaseRequest]
    ) -> dict[str, list[LeasedDelivery]]:
        known = self.recent_events.get_many
        return await self.committer.run(
            lambda tx, now: tx.delivery_lease(
                DeliveryLeaseParams(subscription_id, requests, now, known_events=known)
            )
        )

    def _on_leased(
        self,
        dispatcher: SubscriptionDispatcher,
        consumer: ConsumerStream,
        deliveries: list[LeasedDelivery],
    ) -> None:
        for delivery in deliveries:
            self._holders[delivery.ack_id] = (consumer, dispatcher)
            self._held_until[delivery.ack_id] = delivery.ack_deadline_us
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
        outcome = await self.committer.run(
            lambda tx, now: tx.delivery_ack(DeliveryAckParams(ack_ids, now))
        )
        self._settled(ack_ids, outcome, acked=True)
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
            lambda tx, now: tx.delivery_extend(DeliveryExtendParams(ack_ids, extension_us, now))
        )
        # Ids that are no longer live are not held by anyone: return their credit.
        self._settled(outcome.not_applied, outcome)
        until = self.clock() + extension_us
        for ack_id in outcome.applied:
            if ack_id in self._held_until:
                self._held_until[ack_id] = until
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
            lambda tx, now: fail_leases(tx, now, ack_ids, failure, backoff.draw)
        )
        self._settled(ack_ids, outcome)
        return outcome

    def _settled(
        self, ack_ids: Sequence[str], outcome: SettleOutcome, *, acked: bool = False
    ) -> None:
        """Return the credit of settled ack ids and wake whoever may now deliver."""
        woken: set[int] = set()
        for ack_id in ack_ids:
            holder = self._holders.pop(ack_id, None)
            self._held_until.pop(ack_id, None)
            if holder is None:
                continue
            consumer, dispatcher = holder
            consumer.outstanding.discard(ack_id)
            if acked:
                self.rates.acked.setdefault(consumer.subscription, RateMeter()).add()
                self.metrics.acks.labels(consumer.subscription).inc()
            if dispatcher.subscription_id not in woken:
                woken.add(dispatcher.subscription_id)
                dispatcher.wake()
        self._ready(outcome.ready_subscription_ids, outcome.next_scheduled_us)

    def _ready(self, subscription_ids: Collection[int], due_us: int | None = None) -> None:
        """Wake these subscriptions' dispatchers and the scheduler here and on other brokers.

        The subscriptions may deliver more now; a delivery comes due at `due_us`.
        """
        for subscription_id in subscription_ids:
            self._wake(subscription_id)
        if due_us is not None:
            self._schedule(due_us)
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
            self._timer_wake.set()
        else:
            for subscription_id in subscription_ids:
                self._wake(subscription_id)
        if due_us is not None:
            self._schedule(due_us)

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

    # -- timers: scheduled deliveries and expired leases ---------------------

    def _schedule(self, due_us: int) -> None:
        """A delivery becomes ready at `due_us`: make sure the scheduler wakes then."""
        if self._next_due_us is None or due_us < self._next_due_us:
            self._next_due_us = due_us
            self._timer_wake.set()

    async def _promote_loop(self) -> None:
        while not self._stopping:
            now = self.clock()
            poll_us = int(self.settings.poll_interval_s * 1_000_000)
            due = self._next_due_us if self._next_due_us is not None else now + poll_us
            wait_s = max(0.0, min(due - now, poll_us) / 1_000_000)
            self._timer_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wake.wait(), wait_s)
            if self._next_due_us is not None and self._next_due_us > self.clock():
                continue  # woken early by a later-or-earlier schedule: recompute the wait
            try:
                result = await self.committer.run(
                    lambda tx, now: tx.delivery_promote(DeliveryPromoteParams(now, PROMOTE_BATCH))
                )
                await self.committer.run(lambda tx, now: tx.dedup_prune(now, DEDUP_PRUNE_BATCH))
            except StorageUnavailableError as error:
                _log.warning("promoting scheduled deliveries waits for the database: %s", error)
                await asyncio.sleep(self.settings.poll_interval_s)
                continue
            except Exception:
                _log.exception("promoting scheduled deliveries failed; retrying")
                await asyncio.sleep(self.settings.poll_interval_s)
                continue
            self._next_due_us = result.next_scheduled_us
            if result.promoted >= PROMOTE_BATCH:
                self._next_due_us = self.clock()
            self._ready(result.ready_subscription_ids)

    async def _expire_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.reaper_interval_s)
            try:
                await self._expire_once()
                await self._release_lost_leases()
            except StorageUnavailableError as error:
                _log.warning("expiring leases waits for the database: %s", error)
            except Exception:
                _log.exception("expiring leases failed; retrying")

    async def _expire_once(self) -> None:
        def expire(tx: StorageTx, now: int) -> tuple[list[str], SettleOutcome]:
            expired = [
                str(a)
                for a in tx.delivery_expired_list(DeliveryExpiredListParams(now, EXPIRE_BATCH))
            ]
            return expired, fail_leases(tx, now, expired, EXPIRED, backoff.draw)

        expired, outcome = await self.committer.run(expire)
        if expired:
            # Settled meanwhile (a late ack, another broker's reaper) is not counted.
            if outcome.applied:
                _log.info("lease deadline passed for %d deliveries", len(outcome.applied))
            self._settled(expired, outcome)

    async def _release_lost_leases(self) -> None:
        """Return the credit of leases held here that another broker expired.

        This broker's own reaper settles the leases it expires, but with several
        brokers on one database another's reaper may get there first; the
        consumer's slot would then stay taken until it acked that ack id. So
        leases held here past their deadline are looked up, and those no longer
        live are settled here too. One still live was extended through another
        broker: it is looked at again a reaper interval later.
        """
        now = self.clock()
        overdue = [ack_id for ack_id, until in self._held_until.items() if until < now]
        if not overdue:
            return
        live = await self.read(lambda tx: tx.delivery_live_leases(overdue))
        lost = [ack_id for ack_id in overdue if ack_id not in live]
        recheck = now + int(self.settings.reaper_interval_s * 1_000_000)
        for ack_id in live:
            if ack_id in self._held_until:
                self._held_until[ack_id] = recheck
        if lost:
            _log.info("%d leases held here were expired by another broker", len(lost))
            self._settled(lost, SettleOutcome((), tuple(lost)))

    async def _maintenance_loop(self) -> None:
        """Apply maximum ages and retention in small batches, so tables stay small."""
        retention_us = int(self.settings.event_retention_s * 1_000_000)
        while not self._stopping:
            await asyncio.sleep(self.settings.maintenance_interval_s)
            try:
                while True:
                    outcome = await self.committer.run(
                        lambda tx, now: tx.maintenance(
                            MaintenanceParams(now, retention_us, MAINTENANCE_BATCH)
                        )
                    )
                    if outcome.expired or outcome.deliveries_deleted or outcome.events_deleted:
                        _log.info(
                            "maintenance: %d expired by age, %d deliveries and %d events "
                            "past retention deleted",
                            outcome.expired,
                            outcome.deliveries_deleted,
                            outcome.events_deleted,
                        )
                    busiest = max(
                        outcome.expired, outcome.deliveries_deleted, outcome.events_deleted
                    )
                    if busiest < MAINTENANCE_BATCH or self._stopping:
                        break
            except StorageUnavailableError as error:
                _log.warning("maintenance waits for the database: %s", error)
            except Exception:
                _log.exception("maintenance failed; retrying")

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
        params = DeliveryRedriveParams(
            subscription.id, 0, REDRIVE_BATCH, tuple(event_ids), name, reason
        )
        while True:
            count = await self.committer.run(
                lambda tx, now: tx.delivery_redrive(dataclasses.replace(params, now_us=now))
            )
            total += count
            if count < REDRIVE_BATCH:
                break
        if total:
            _log.info("redrove %d dead letters of %s", total, subscription.name)
            self._ready([subscription.id])
        return total

    async def seek(self, subscription: Subscription, time_us: int) -> SeekOutcome:
        """Replay what was published since a time; skip what was published before it."""
        outcome = await self.committer.run(
            lambda tx, now: tx.subscription_seek(
                SubscriptionSeekParams(subscription.id, time_us, now)
            )
        )
        _log.info(
            "seek of %s: %d replayed, %d skipped",
            subscription.name,
            outcome.replayed,
            outcome.skipped,
        )
        self._ready([subscription.id])
        return outcome

    # -- subscriptions and inspection ----------------------------------------

    async def create_subscription(self, subscription: Subscription) -> Subscription:
        """Create a subscription (raises SubscriptionExistsError)."""
        return await self.committer.run(lambda tx, now: tx.subscription_create(subscription))

    async def update_subscription(self, subscription: Subscription) -> Subscription | None:
        """Replace a subscription's settings; they apply to the next lease."""
        updated = await self.committer.run(
            lambda tx, now: tx.subscription_update(SubscriptionUpdateParams(subscription))
        )
        if updated is not None:
            self._ready([updated.id])
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
            for ack_id, (_, holder) in list(self._holders.items()):
                if holder is dispatcher:
                    del self._holders[ack_id]
                    self._held_until.pop(ack_id, None)
            await dispatcher.stop(reason)

    async def subscription(self, name: str) -> Subscription | None:
        """One subscription by name."""
        return await self.read(lambda tx: tx.subscription_get(name))

    async def event_with_deliveries(
        self, event_id: str
    ) -> tuple[StoredEvent | None, list[DeliveryInfo]]:
        """An event and its delivery in each subscription."""

        def get(tx: StorageTx) -> tuple[StoredEvent | None, list[DeliveryInfo]]:
            return tx.event_get(event_id), tx.delivery_list_for_event(event_id)

        return await self.read(get)

    async def concurrency(self, names: set[str]) -> dict[str, tuple[int, int]]:
        """(in flight, max in flight) of those subscriptions that have a limit."""
        if not names:
            return {}

        def get(tx: StorageTx) -> dict[str, tuple[int, int]]:
            limits: dict[str, tuple[int, int]] = {}
            for name in names:
                sub = tx.subscription_get(name)
                if sub is not None and sub.max_in_flight > 0:
                    (counts,) = tx.subscription_counts(name)
                    limits[name] = (counts.in_flight, sub.max_in_flight)
            return limits

        return await self.read(get)

    async def counts(self, name: str | None) -> tuple[list[SubscriptionCounts], int]:
        """Delivery counts per subscription, and the number of stored events."""

        def get(tx: StorageTx) -> tuple[list[SubscriptionCounts], int]:
            return tx.subscription_counts(name), tx.event_count()

        return await self.read(get)


def stored_event(draft: EventDraft, now_us: int) -> StoredEvent:
    """The event as storage keeps it once `draft` is published at `now_us`."""
    return StoredEvent(
        event_id=draft.event_id,
        name=draft.name,
        payload=draft.payload,
        content_type=draft.content_type,
        headers=draft.headers,
        dedup_id=draft.dedup_id,
        priority=draft.priority,
        ordering_key=draft.ordering_key,
        published_at_us=now_us,
        deliver_at_us=max(draft.deliver_at_us, now_us),
        delay_us=draft.delay_us,
    )
