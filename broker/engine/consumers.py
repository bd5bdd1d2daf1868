"""A consumer attached to this broker: its credit, the leases it holds here, and its outbox.

Its dispatcher owns it: the dispatcher hands it deliveries and tells it which
of its leases ended; the gRPC stream reads its outbox.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from broker.domain import LeasedDelivery

_consumer_ids = itertools.count(1)


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
    #: The leases it holds, by ack id, with their deadlines as known here.
    held: dict[str, int] = field(default_factory=dict)
    #: Deliveries queued in the outbox or being written to the stream.
    unsent: int = 0
    #: Credit promised to a standing request (posted, or taken by a publish).
    reserved: int = 0
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
        return self.max_outstanding - max(len(self.held), self.unsent) - self.reserved

    def send(self, deliveries: list[LeasedDelivery]) -> None:
        """Hold these leases and queue them as stream messages of at most max_batch_size."""
        for delivery in deliveries:
            self.held[delivery.ack_id] = delivery.ack_deadline_us
        self.unsent += len(deliveries)
        for start in range(0, len(deliveries), self.max_batch_size):
            self.outbox.put_nowait(deliveries[start : start + self.max_batch_size])

    def ended(self, ack_ids: Iterable[str]) -> int:
        """These leases ended (settled, expired, given back): how many were held here."""
        was_counted = max(len(self.held), self.unsent)
        found = 0
        for ack_id in ack_ids:
            if self.held.pop(ack_id, None) is not None:
                found += 1
        if found and max(len(self.held), self.unsent) < was_counted:
            self.wake()
        return found

    def extended(self, ack_ids: Iterable[str], until_us: int) -> None:
        """These leases (those held here) now last until `until_us`."""
        for ack_id in ack_ids:
            if ack_id in self.held:
                self.held[ack_id] = until_us

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
        live = [d for d in batch if d.ack_id in self.held and d.ack_deadline_us > now]
        return live, len(batch)

    def written(self, count: int) -> None:
        """`count` deliveries left the outbox: their room counts as credit again."""
        was_counted = max(len(self.held), self.unsent)
        self.unsent -= count
        if max(len(self.held), self.unsent) < was_counted:
            self.wake()

    def end(self, reason: str) -> None:
        """End the stream after what is queued."""
        if not self.closed:
            self.closed = True
            self.end_reason = reason
            self.outbox.put_nowait(None)
