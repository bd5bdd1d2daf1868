"""Publishing: many callers' events joined into one insert, and the standing requests served.

A publish takes the standing requests of caught-up dispatchers whose
subscriptions its events match; the joined operation stores the events, then
leases for those requests in the same transaction, so a new event is stored
and leased with one durable commit and no dispatcher needs waking. The leases
go back to their dispatchers after the commit, whatever happens to the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from broker.domain import EventDraft, PublishOutcome
from broker.engine.committer import Coalescer, Committer
from broker.engine.dispatcher import StandingLease, SubscriptionDispatcher
from broker.engine.dispatchers import Dispatchers, Signals
from broker.engine.operations import lease, publish
from broker.engine.operations.lease import LeaseResult
from broker.engine.recent import RecentEvents
from broker.engine.stats import Stats
from broker.engine.tails import Tails
from broker.storage.interface import StorageTx

#: Most events that many publish calls put into one joined insert.
PUBLISH_JOIN_MAX_EVENTS = 2000


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


def publish_calls(
    tx: StorageTx, now: int, calls: list[PublishCall], dedup_window_us: int, recent: RecentEvents
) -> list[Published]:
    """Store the events of many publish calls with one statement per table.

    Then serve the standing requests the calls took, in the same transaction.
    Events ready now in some subscription are remembered for their first lease.
    """
    drafts = [draft for call in calls for draft in call.drafts]
    outcomes = publish.publish(tx, now, drafts, dedup_window_us)
    recent.put_many(
        draft.stored_at(now)
        for draft, outcome in zip(drafts, outcomes, strict=True)
        if outcome.matched and draft.deliver_at_us <= now
    )
    published: list[Published] = []
    start = 0
    for call in calls:
        leased = {
            standing.subscription_id: lease.lease(
                tx, now, standing.subscription_id, standing.requests, recent.get_many
            )
            for standing in call.leases
        }
        published.append(Published(outcomes[start : start + len(call.drafts)], leased))
        start += len(call.drafts)
    return published


def _hand_over(dispatchers: list[SubscriptionDispatcher], task: asyncio.Future[Published]) -> None:
    """Give each dispatcher what the publish leased for it (nothing if it failed)."""
    published = None if task.cancelled() or task.exception() else task.result()
    for dispatcher in dispatchers:
        leased = None if published is None else published.leased[dispatcher.subscription_id]
        dispatcher.accept(leased)


class Publisher:
    """Stores events for this broker's callers, joined, and tells who may deliver them."""

    def __init__(
        self,
        committer: Committer,
        dispatchers: Dispatchers,
        signals: Signals,
        stats: Stats,
        tails: Tails,
        recent: RecentEvents,
        dedup_window_us: int,
    ) -> None:
        self._dispatchers = dispatchers
        self._signals = signals
        self._stats = stats
        self._tails = tails
        self._coalescer: Coalescer[PublishCall, Published] = Coalescer(
            committer,
            partial(publish_calls, dedup_window_us=dedup_window_us, recent=recent),
            max_size=PUBLISH_JOIN_MAX_EVENTS,
            size_of=lambda call: len(call.drafts),
        )

    async def publish(self, drafts: Sequence[EventDraft], now_us: int) -> list[PublishOutcome]:
        """Store events all or none, then wake the subscriptions they are ready in."""
        taken = self._take_standing(drafts, now_us)
        call = PublishCall(tuple(drafts), tuple(standing for _, standing in taken))
        if not taken:
            published = await self._coalescer.run(call)
        else:
            task = asyncio.ensure_future(self._coalescer.run(call))
            # Handed over even if this caller is cancelled: the leases are in the database.
            task.add_done_callback(partial(_hand_over, [d for d, _ in taken]))
            published = await asyncio.shield(task)
        outcomes = published.outcomes
        new = [d for d, o in zip(drafts, outcomes, strict=True) if not o.duplicate]
        self._stats.published(len(new), len(outcomes) - len(new))
        served = frozenset(standing.subscription_id for _, standing in taken)
        for outcome in outcomes:
            if not outcome.duplicate:
                self._signals.ready(
                    outcome.ready_subscription_ids, outcome.next_scheduled_us, served=served
                )
        if self._tails:
            self._tails.feed(new, now_us)
        return outcomes

    def _take_standing(
        self, drafts: Sequence[EventDraft], now_us: int
    ) -> list[tuple[SubscriptionDispatcher, StandingLease]]:
        """The standing requests of caught-up dispatchers that these events are ready for."""
        standing = [d for d in self._dispatchers if d.has_standing]
        if not standing:
            return []
        names = {d.name for d in drafts if d.deliver_at_us <= now_us}
        taken = []
        for dispatcher in standing:
            if any(dispatcher.matches(n) for n in names):
                request = dispatcher.take()
                if request is not None:
                    taken.append((dispatcher, request))
        return taken
