"""One dispatch task per subscription, feeding its connected consumers.

The task sleeps until something may be deliverable (a publish, a retry coming
due, a consumer with free credit, or the polling fallback), then leases at
most each consumer's free credit in one group-committed operation and hands
each consumer its share as batched stream messages. It never asks for more than
the consumers can take, so nothing it leases waits in a buffer of the broker.

A dispatcher that is caught up (its last lease found fewer deliveries ready
than its consumers could take, and nothing was made ready since) does not look
again when credit comes free: it leaves a *standing request* for its
consumers' free credit instead. The next publish whose events it matches takes
the request and leases in its own transaction, so a new event is stored and
leased with one durable commit, and the deliveries come back to `accept`.
The credit of a request posted or taken is reserved, never counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from broker.domain import LeasedDelivery, LeaseRequest, SettleOutcome
from broker.engine.consumers import ConsumerStream
from broker.engine.dispatchers import Signals
from broker.engine.operations.lease import LeaseResult
from broker.engine.stats import Stats
from broker.names import matches
from broker.storage.interface import StorageUnavailableError

_log = logging.getLogger(__name__)
#: The broker's own generator: drawing from the shared `random` would move the
#: sequence of an application (or a test) that embeds the broker and seeds it.
_jitter = random.Random()

#: Event names whose match a dispatcher remembers (cleared when full).
MATCH_CACHE_MAX = 1024
#: A lease that met another transaction leasing for the subscription is tried again
#: after about this long (jittered).
CONTENDED_RETRY_S = 0.005
#: Leases for the subscription: (subscription id, requests) -> what it handed out.
LeaseFn = Callable[[int, Sequence[LeaseRequest]], Awaitable[LeaseResult]]
#: Gives leases back, ready again at once (their consumer left): what that changed.
ReleaseFn = Callable[[Sequence[str]], Awaitable[SettleOutcome]]
#: The current time in microseconds since the epoch.
Clock = Callable[[], int]


@dataclass(frozen=True)
class StandingLease:
    """A caught-up dispatcher's request, taken by a publish to lease in its transaction."""

    subscription_id: int
    subscription: str
    requests: tuple[LeaseRequest, ...]


@dataclass(frozen=True)
class DispatchSetup:
    """What every dispatcher of a process works with."""

    #: Leases deliveries in a group-committed transaction.
    lease: LeaseFn
    #: Gives leases back in a group-committed transaction.
    release: ReleaseFn
    stats: Stats
    signals: Signals
    clock: Clock
    poll_interval_s: float
    #: Whether a caught-up dispatcher offers its credit to the next publish (where
    #: a publish's transaction can lease its own new events).
    standing_requests: bool = True


class SubscriptionDispatcher:
    """Leases ready deliveries of one subscription for its consumers, and owns those leases.

    Every lease a consumer here holds is in that consumer's `held`; when a lease
    ends (an ack, a nack, an expiry, another broker's reaper) `ended` returns
    its credit.
    """

    def __init__(
        self,
        subscription_id: int,
        name: str,
        setup: DispatchSetup,
        filters: tuple[str, ...] = (),
    ) -> None:
        self.subscription_id = subscription_id
        self.name = name
        self.filters = filters
        self.consumers: list[ConsumerStream] = []
        self._setup = setup
        self._lease = setup.lease
        self._poll_interval_s = setup.poll_interval_s
        self._standing_requests = setup.standing_requests
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Advanced after every lease that got something: who came first comes last next.
        self._turn = 0
        #: True while the last lease found less than was asked and nothing was made ready since.
        self._caught_up = False
        #: Counts `wake` calls: a lease that began before the last one may have missed something.
        self._readies = 0
        #: The consumers' credit offered to the next publish (reserved on each consumer).
        self._standing: list[tuple[ConsumerStream, int]] | None = None
        #: The request a publish took, until `accept` (and `_readies` when it was taken).
        self._taken: list[tuple[ConsumerStream, int]] | None = None
        self._taken_at = 0
        self._filling = False
        #: Leases of consumers that left, given back once no lease is on its way.
        self._deferred: list[str] = []
        self._releases: set[asyncio.Task[None]] = set()
        #: Consumers that left while the broker shuts down, still holding leases.
        self._left: list[ConsumerStream] = []
        self._matches: dict[str, bool] = {}

    def start(self) -> None:
        """Start the dispatch task."""
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"dispatch:{self.name}"
        )

    def wake(self) -> None:
        """Deliveries may have been made ready: lease again."""
        self._readies += 1
        self._caught_up = False
        self._wake.set()

    def credit_freed(self) -> None:
        """A consumer has room for more: lease for it, or offer its credit if caught up."""
        self._wake.set()

    def add(self, consumer: ConsumerStream) -> None:
        """Attach a consumer and look for deliveries for it.

        A standing request posted before it came is taken back at once, so the
        next one offers its credit too.
        """
        consumer.wake = self.credit_freed
        self.consumers.append(consumer)
        self._withdraw()
        self.credit_freed()

    def remove(self, consumer: ConsumerStream, *, give_back: bool = True) -> None:
        """Detach a consumer: the standing request is taken back, to be posted anew.

        What it held goes back at once (attempt counted); without `give_back`
        (the broker is shutting down) it stays its to settle until given back.
        """
        if consumer in self.consumers:
            self.consumers.remove(consumer)
            self._withdraw()  # a standing request offers none of a consumer that left
            self.credit_freed()
        if not consumer.held:
            return
        if give_back:
            self.give_back(list(consumer.held))
        else:
            self._left.append(consumer)

    def give_back(self, ack_ids: Sequence[str]) -> None:
        """Give back what a consumer that left held, once no lease is on its way.

        A lease running meanwhile (a fill, or a publish serving the standing
        request) would find those deliveries ready again and lease them to the
        consumer that left, costing each an attempt for nothing.
        """
        if self._filling or self._taken is not None:
            self._deferred.extend(ack_ids)
        else:
            self._release(ack_ids)

    def _given_back(self) -> None:
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            self._release(deferred)

    def _release(self, ack_ids: Sequence[str]) -> None:
        """Give leases back in the background; who may deliver more is told once it is done."""
        task = asyncio.get_running_loop().create_task(self._released(list(ack_ids)))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _released(self, ack_ids: list[str]) -> None:
        try:
            outcome = await self._setup.release(ack_ids)
        except StorageUnavailableError as error:
            _log.warning("leases of a consumer that left wait for their deadline: %s", error)
            return
        self._setup.signals.settled(ack_ids, outcome)

    def ended(self, ack_ids: Iterable[str], *, acked: bool = False) -> None:
        """These leases ended: the consumers that held them get their credit back."""
        ids = list(ack_ids)
        found = sum(consumer.ended(ids) for consumer in self._holders())
        if found and acked:
            self._setup.stats.acked(self.name, found)

    def extended(self, ack_ids: Sequence[str], until_us: int) -> None:
        """These leases (those held here) now last until `until_us`."""
        for consumer in self._holders():
            consumer.extended(ack_ids, until_us)

    def overdue(self, now_us: int) -> list[str]:
        """Ack ids held here past their deadline, as far as this process knows."""
        return [
            ack_id
            for consumer in self._holders()
            for ack_id, until in consumer.held.items()
            if until < now_us
        ]

    def held(self) -> list[str]:
        """Every lease the consumers here hold."""
        return [ack_id for consumer in self._holders() for ack_id in consumer.held]

    def _holders(self) -> list[ConsumerStream]:
        return self.consumers + self._left if self._left else self.consumers

    def set_filters(self, filters: tuple[str, ...]) -> None:
        """The subscription's filters changed (a stale copy only misses a shortcut)."""
        self.filters = filters
        self._matches.clear()

    def matches(self, name: str) -> bool:
        """Whether events of this name are delivered to the subscription."""
        found = self._matches.get(name)
        if found is None:
            if len(self._matches) >= MATCH_CACHE_MAX:
                self._matches.clear()
            found = self._matches[name] = matches(self.filters, name)
        return found

    @property
    def has_standing(self) -> bool:
        """Whether a standing request is posted."""
        return self._standing is not None

    def take(self) -> StandingLease | None:
        """Take the standing request, if one is posted, for a publish to serve.

        The publish must hand the outcome to `accept`, whatever it is.
        """
        standing = self._standing
        if standing is None or self._stopping:
            return None
        self._standing = None
        live = []
        for consumer, count in standing:
            if consumer.closed:
                consumer.reserved -= count
            else:
                live.append((consumer, count))
        if not live:
            self._caught_up = False
            self._wake.set()
            return None
        self._taken = live
        self._taken_at = self._readies
        requests = tuple(LeaseRequest(c.id, n) for c, n in live)
        return StandingLease(self.subscription_id, self.name, requests)

    def accept(self, result: LeaseResult | None) -> None:
        """What a publish leased for the taken request (None: its transaction failed)."""
        taken, self._taken = self._taken or [], None
        got = 0
        for consumer, count in taken:
            consumer.reserved -= count
            got += self._hand_out(consumer, result.leased.get(consumer.id) if result else None)
        if got:
            self._turn += 1
        if result is None or result.more or self._readies != self._taken_at:
            self._caught_up = False
        self._given_back()
        self._wake.set()

    async def stop(self, reason: str) -> None:
        """End every consumer's stream and stop the task, leaving no lease stranded."""
        self._stopping = True
        self._withdraw()
        for consumer in list(self.consumers):
            consumer.end(reason)
        self._wake.set()
        if self._task is not None:
            await self._task
        for task in list(self._releases):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _post(self) -> None:
        """Offer the consumers' free credit to the next publish."""
        wanting = [c for c in self.consumers if c.free > 0]
        if not wanting:
            return
        self._standing = [(c, c.free) for c in self._in_turn(wanting)]
        for consumer, count in self._standing:
            consumer.reserved += count

    def _withdraw(self) -> None:
        """Take the standing request back, if no publish took it."""
        if self._standing is not None:
            for consumer, count in self._standing:
                consumer.reserved -= count
            self._standing = None

    async def _run(self) -> None:
        while not self._stopping:
            # Jittered polling fallback, so brokers sharing a database don't poll in step.
            timeout = self._poll_interval_s * _jitter.uniform(0.8, 1.2)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                self._caught_up = False  # the fallback looks again
            self._wake.clear()
            if self._stopping:
                return
            if self._taken is not None:
                continue  # `accept` looks again
            self._withdraw()
            try:
                if not self._caught_up:
                    readies = self._readies
                    self._filling = True
                    try:
                        caught_up = await self._fill()
                    finally:
                        self._filling = False
                        self._given_back()
                    self._caught_up = caught_up and readies == self._readies
                if self._caught_up and self._standing_requests and not self._stopping:
                    self._post()
            except StorageUnavailableError as error:
                self._caught_up = False
                _log.warning(
                    "dispatch of subscription %s waits for the database: %s", self.name, error
                )
                await asyncio.sleep(self._poll_interval_s)
            except Exception:
                self._caught_up = False
                _log.exception("dispatch of subscription %s failed; retrying", self.name)
                await asyncio.sleep(self._poll_interval_s)

    async def _fill(self) -> bool:
        """Lease until every consumer's credit is used or nothing more is ready.

        True when the last lease found nothing more ready: caught up.
        """
        contended = 0
        while not self._stopping:
            wanting = [c for c in self.consumers if c.free > 0]
            if not wanting:
                return False
            wanting = self._in_turn(wanting)
            requests = [LeaseRequest(c.id, c.free) for c in wanting]
            result = await self._lease(self.subscription_id, requests)
            got = sum(self._hand_out(c, result.leased.get(c.id)) for c in wanting)
            if got:
                self._turn += 1
            if result.contended:
                # Doubling while it lasts (a broker stuck mid-transaction holds the
                # cursor until the database ends its session), up to the poll interval.
                pause = min(CONTENDED_RETRY_S * 2**contended, self._poll_interval_s)
                contended += 1
                await asyncio.sleep(pause * _jitter.uniform(0.5, 1.5))
            elif not result.more:
                return True
            else:
                contended = 0
        return False

    def _hand_out(self, consumer: ConsumerStream, deliveries: list[LeasedDelivery] | None) -> int:
        """Send what was leased for a consumer (or give it back, if it left); how many."""
        if not deliveries:
            return 0
        if consumer.closed or self._stopping:
            self._release([d.ack_id for d in deliveries])
        else:
            consumer.send(deliveries)
            self._setup.stats.delivered(self.name, deliveries, self._setup.clock())
        return len(deliveries)

    def _in_turn(self, wanting: list[ConsumerStream]) -> list[ConsumerStream]:
        """The consumers in the order they are offered deliveries now.

        Whoever came first last time comes last now, so that neither ready
        deliveries nor a concurrency limit's free slots (see share_credit) go to
        one consumer every time.
        """
        turn = self._turn % len(wanting)
        return wanting[turn:] + wanting[:turn]
