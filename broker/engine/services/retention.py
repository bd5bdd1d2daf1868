"""Retention: maximum ages and the retention of acked and dead deliveries, applied in batches.

Deliveries of events older than their subscription's maximum age are
dead-lettered; acked and dead deliveries and then their events are deleted
once past retention. A bounded batch per transaction keeps every transaction
short; batches follow each other at once while there is more to do.
"""

from __future__ import annotations

import logging

from broker.engine.committer import Committer
from broker.engine.operations.upkeep import upkeep
from broker.engine.services.base import Clock, Service

_log = logging.getLogger(__name__)

MAINTENANCE_BATCH = 1000


class Retention(Service):
    """Applies maximum ages and retention in small batches."""

    name = "retention"

    def __init__(
        self, committer: Committer, clock: Clock, interval_s: float, event_retention_us: int
    ) -> None:
        super().__init__(clock, interval_s)
        self._committer = committer
        self._event_retention_us = event_retention_us
        #: Where the next pass looks for old events (0: from the start of the log).
        self._after_seq = 0

    async def step(self) -> float | None:
        """One batch; at once again when it was full."""
        after = self._after_seq
        outcome = await self._committer.run(
            lambda tx, now: upkeep(tx, now, self._event_retention_us, MAINTENANCE_BATCH, after)
        )
        self._after_seq = outcome.next_after_seq
        if outcome.expired or outcome.deliveries_deleted or outcome.events_deleted:
            _log.info(
                "retention: %d expired by age, %d deliveries and %d events past retention deleted",
                outcome.expired,
                outcome.deliveries_deleted,
                outcome.events_deleted,
            )
        busiest = max(outcome.expired, outcome.deliveries_deleted, outcome.events_deleted)
        return 0.0 if busiest >= MAINTENANCE_BATCH or outcome.next_after_seq else None
