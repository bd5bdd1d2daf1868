"""The scheduler: scheduled deliveries whose time has come are made ready.

It sleeps until the earliest due time it knows of (told by `schedule` when a
publish, a nack or another broker schedules one), or the polling interval at
most, then promotes up to `PROMOTE_BATCH` due deliveries in one transaction,
at once again when the batch was full.
"""

from __future__ import annotations

from broker.engine.committer import Committer
from broker.engine.operations import settle
from broker.engine.services.base import Clock, Outcomes, Service

PROMOTE_BATCH = 1000
US_PER_S = 1_000_000


class Scheduler(Service):
    """Promotes due scheduled deliveries, waking when the next one is due."""

    name = "scheduler"

    def __init__(
        self, committer: Committer, outcomes: Outcomes, clock: Clock, poll_interval_s: float
    ) -> None:
        super().__init__(clock, poll_interval_s)
        self._committer = committer
        self._outcomes = outcomes
        self.next_due_us: int | None = None
        """The earliest due time known; None: none known, poll."""

    def schedule(self, due_us: int) -> None:
        """A delivery becomes ready at `due_us`: wake then, if that is earlier than planned."""
        if self.next_due_us is None or due_us < self.next_due_us:
            self.next_due_us = due_us
            self.wake()

    async def step(self) -> float | None:
        """Promote what is due (nothing if woken early); the wait until the next due time."""
        now = self.clock()
        if self.next_due_us is None or self.next_due_us <= now:
            result = await self._committer.run(
                lambda tx, now: settle.promote(tx, now, PROMOTE_BATCH)
            )
            now = self.clock()
            self.next_due_us = now if result.promoted >= PROMOTE_BATCH else result.next_scheduled_us
            if result.ready_subscription_ids:
                self._outcomes.ready(result.ready_subscription_ids)
        poll_us = int(self.interval_s * US_PER_S)
        due = self.next_due_us if self.next_due_us is not None else now + poll_us
        return max(0, min(due - now, poll_us)) / US_PER_S
