"""Dedup pruning: dedup ids whose window has passed are forgotten, a batch per transaction."""

from __future__ import annotations

from broker.engine.committer import Committer
from broker.engine.services.base import Clock, Service

DEDUP_PRUNE_BATCH = 1000


class DedupPruner(Service):
    """Forgets expired dedup ids, at once again while a batch comes back full."""

    name = "dedup-pruner"

    def __init__(self, committer: Committer, clock: Clock, interval_s: float) -> None:
        super().__init__(clock, interval_s)
        self._committer = committer

    async def step(self) -> float | None:
        """One batch; at once again when it was full."""
        pruned = await self._committer.run(lambda tx, now: tx.dedup_prune(now, DEDUP_PRUNE_BATCH))
        return 0.0 if pruned >= DEDUP_PRUNE_BATCH else None
