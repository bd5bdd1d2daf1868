"""One dispatch task per subscription, feeding its connected consumers.

The task sleeps until something may be deliverable (a publish, a retry coming
due, a consumer with free credit, or the polling fallback), then leases at
most each consumer's free credit in one group-committed operation and hands
each consumer its share as batched stream messages. It never asks for more than
the consumers can take, so nothing it leases waits in a buffer of the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from broker.domain import LeasedDelivery, LeaseRequest
from broker.storage.interface import StorageUnavailableError

_log = logging.getLogger(__name__)
_consumer_ids = itertools.count(1)
#: The broker's own generator: drawing from the shared `random` would move the
#: sequence of an application (or a test) that embeds the broker and seeds it.
_jitter = random.Random()

#: Leases for the subscription: (subscription id, requests) -> deliveries per consumer.
LeaseFn = Callable[[int, Sequence[LeaseRequest]], Awaitable[dict[str, list[LeasedDelivery]]]]
#: Gives ack ids back at once (their consumer left before they arrived).
ReleaseFn = Callable[[Sequence[str]], None]


@dataclass(eq=False)
class ConsumerStream:
    """One connected consumer: its credit, what it holds, and its outbox.

    Credit counts what the consumer holds and what waits to be written to its
    stream, whichever is more: a lease that expires while its delivery still
    waits in the outbox frees no credit until the delivery has left. So a
    consumer that stops reading holds at most its credit in the broker's
    memory, however many of its leases expire.
    """

    subscription: str
    label: str
    max_outstanding: int
    max_batch_size: int
    json_as_binary: bool = False
    id: str = field(init=False)
    outstanding: set[str] = field(default_factory=set)
    #: Deliveries queued in the outbox or being written to the stream.
    unsent: int = 0
    #: Batches to send; None ends the stream (shutdown or subscription deleted).
    outbox: asyncio.Queue[list[LeasedDelivery] | None] = field(default_factory=asyncio.Queue)
    closed: bool = False
    end_reason: str = ""
    #: Tells the dispatcher that credit came free (set when it is attached).
    wake: Callable[[], None] = lambda: None

    def __post_init__(self) -> None:
        self.id = f"{self.label}#{next(_consumer_ids)}"

    @property
    def free(self) -> int:
        """How many more deliveries this consumer may be sent now."""
        if self.closed:
            return 0
        return self.max_outstanding - max(len(self.outstanding), self.unsent)

    def send(self, deliveries: list[LeasedDelivery]) -> None:
        """Queue deliveries as stream messages of at most max_batch_size each."""
        self.outstanding.update(d.ack_id for d in deliveries)
        self.unsent += len(deliveries)
        for start in range(0, len(deliveries), self.max_batch_size):
            self.outbox.put_nowait(deliveries[start : start + self.max_batch_size])

    async def next_batch(self, clock: Callable[[], int]) -> tuple[list[LeasedDelivery], int] | None:
        """The next batch to write (None: the stream ends), and how many it took off the outbox.

        Deliveries whose lease ended while they waited are left out: given back
        or expired, or past their deadline already (a commit that hung across a
        database outage), their ack ids are dead and the reaper retries them.
        Call `written` with the count once the batch is written.
        """
        batch = await self.outbox.get()
        if batch is None:
            return None
        now = clock()
        live = [d for d in batch if d.ack_id in self.outstanding and d.ack_deadline_us > now]
        return live, len(batch)

    def written(self, count: int) -> None:
        """`count` deliveries left the outbox: their room counts as credit again."""
        was_counted = max(len(self.outstanding), self.unsent)
        self.unsent -= count
        if max(len(self.outstanding), self.unsent) < was_counted:
            self.wake()

    def end(self, reason: str) -> None:
        """End the stream after what is queued."""
        if not self.closed:
            self.closed = True
            self.end_reason = reason
            self.outbox.put_nowait(None)


class SubscriptionDispatcher:
    """Leases ready deliveries of one subscription for its consumers."""

    def __init__(
        self,
        subscription_id: int,
        name: str,
        lease: LeaseFn,
        release: ReleaseFn,
        on_leased: Callable[[SubscriptionDispatcher, ConsumerStream, list[LeasedDelivery]], None],
        poll_interval_s: float,
    ) -> None:
        self.subscription_id = subscription_id
        self.name = name
        self.consumers: list[ConsumerStream] = []
        self._lease = lease
        self._release = release
        self._on_leased = on_leased
        self._poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._turn = 0

    def start(self) -> None:
        """Start the dispatch task."""
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"dispatch:{self.name}"
        )

    def wake(self) -> None:
        """Something may be deliverable: look again."""
        self._wake.set()

    def add(self, consumer: ConsumerStream) -> None:
        """Attach a consumer and look for deliveries for it."""
        consumer.wake = self.wake
        self.consumers.append(consumer)
        self.wake()

    def remove(self, consumer: ConsumerStream) -> None:
        """Detach a consumer."""
        if consumer in self.consumers:
            self.consumers.remove(consumer)

    async def stop(self, reason: str) -> None:
        """End every consumer's stream and stop the task, leaving no lease stranded."""
        self._stopping = True
        for consumer in list(self.consumers):
            consumer.end(reason)
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stopping:
            # Jittered polling fallback, so brokers sharing a database don't poll in step.
            timeout = self._poll_interval_s * _jitter.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self._fill()
            except StorageUnavailableError as error:
                _log.warning(
                    "dispatch of subscription %s waits for the database: %s", self.name, error
                )
                await asyncio.sleep(self._poll_interval_s)
            except Exception:
                _log.exception("dispatch of subscription %s failed; retrying", self.name)
                await asyncio.sleep(self._poll_interval_s)

    async def _fill(self) -> None:
        """Lease until every consumer's credit is used or nothing more is ready."""
        while not self._stopping:
            wanting = [c for c in self.consumers if c.free > 0]
            if not wanting:
                return
            # Whoever came first last time comes last now: a concurrency limit's
            # free slots go to each consumer in turn (see share_credit).
            self._turn = (self._turn + 1) % len(wanting)
            wanting = wanting[self._turn :] + wanting[: self._turn]
            requests = [LeaseRequest(c.id, c.free) for c in wanting]
            leased = await self._lease(self.subscription_id, requests)
            got = 0
            for consumer in wanting:
                deliveries = leased.get(consumer.id)
                if not deliveries:
                    continue
                got += len(deliveries)
                if consumer.closed:
                    self._release([d.ack_id for d in deliveries])
                    continue
                consumer.send(deliveries)
                self._on_leased(self, consumer, deliveries)
            if got < sum(r.count for r in requests):
                return
