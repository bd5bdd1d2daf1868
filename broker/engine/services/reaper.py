"""The lease reaper: leases whose deadline passed are failed (retried or dead-lettered).

Each step expires up to `EXPIRE_BATCH` leases in one transaction, at once
again when the batch was full. With several brokers on one database another
broker's reaper may get to a lease held here first; so the reaper also looks
up the leases this process holds past their deadline and reports those no
longer live as lost, which returns their consumers' credit.
"""

from __future__ import annotations

import asyncio
import logging

from broker.domain import SettleOutcome
from broker.engine import backoff
from broker.engine.committer import Committer
from broker.engine.dispatchers import Dispatchers
from broker.engine.operations import settle
from broker.engine.services.base import Clock, Outcomes, Service
from broker.storage.interface import Storage

_log = logging.getLogger(__name__)

EXPIRE_BATCH = 500


class LeaseReaper(Service):
    """Expires leases past their deadline, and notices the ones another broker expired."""

    name = "lease-reaper"

    def __init__(
        self,
        committer: Committer,
        storage: Storage,
        dispatchers: Dispatchers,
        outcomes: Outcomes,
        clock: Clock,
        interval_s: float,
    ) -> None:
        super().__init__(clock, interval_s)
        self._committer = committer
        self._storage = storage
        self._dispatchers = dispatchers
        self._outcomes = outcomes

    async def step(self) -> float | None:
        """Expire one batch; look for lost leases; again at once when the batch was full."""
        expired = await self.expire()
        await self.release_lost()
        return 0.0 if expired >= EXPIRE_BATCH else None

    async def expire(self) -> int:
        """Fail up to a batch of leases past their deadline; how many were found."""
        ack_ids, outcome = await self._committer.run(
            lambda tx, now: settle.expire(tx, now, EXPIRE_BATCH, backoff.draw)
        )
        if ack_ids:
            # Settled meanwhile (a late ack, another broker's reaper) is not counted.
            if outcome.applied:
                _log.info("lease deadline passed for %d deliveries", len(outcome.applied))
            self._outcomes.settled(ack_ids, outcome)
        return len(ack_ids)

    async def release_lost(self) -> None:
        """Report leases held here past their deadline that are no longer live.

        One still live was extended through another broker: it is looked at
        again an interval later.
        """
        now = self.clock()
        overdue = self._dispatchers.overdue(now)
        if not overdue:
            return

        def live() -> set[str]:
            with self._storage.read() as tx:
                return settle.live(tx, overdue)

        still = await asyncio.to_thread(live)
        self._dispatchers.extended(list(still), now + int(self.interval_s * 1_000_000))
        lost = [ack_id for ack_id in overdue if ack_id not in still]
        if lost:
            _log.info("%d leases held here were expired by another broker", len(lost))
            self._outcomes.settled(lost, SettleOutcome((), tuple(lost)))
