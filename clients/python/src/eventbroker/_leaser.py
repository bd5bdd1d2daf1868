"""Lease renewal for the consumer runtime: keep a delivery while its handlers run.

A handler may take longer than the subscription's ack deadline; without help
the broker would hand its delivery to another consumer mid-run. The leaser
holds the lease of every delivery whose handlers are running and renews it
before it ends, as Pub/Sub's client does: each lease is renewed once
`RENEW_AT_FRACTION` of it has passed (less a little jitter, so that leases
received together do not all come due at the same instant), and every lease
coming due within the next `BATCH_FRACTION` of its length is renewed in the
same `ExtendAckDeadline` call. A renewal extends by the lease's own length: the
subscription's ack deadline, or what the handler last asked for through
`Context.extend`. The handler timeout, not the leaser, bounds how long a
handler may run.

Times are measured on the event loop's monotonic clock; a delivery's remaining
lease is read once, on receipt, from its deadline (which assumes the consumer's
and the broker's clocks agree to well under a second, as NTP keeps them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from eventbroker.durations import ACK_DEADLINE_MAX_S, ACK_DEADLINE_MIN_S
from eventbroker.errors import BrokerError
from eventbroker.types import AckResult, Message

_log = logging.getLogger("eventbroker.consumer")

#: A lease is renewed once this fraction of it has passed.
RENEW_AT_FRACTION = 0.75
#: Leases due within this fraction of their length are renewed together with the first.
BATCH_FRACTION = 0.1
#: Up to this fraction of a lease is taken off its renewal time at random.
JITTER_FRACTION = 0.05
#: The client's own generator: the application's shared `random` is left alone.
_jitter = random.Random()
#: The shortest and longest lease the broker grants (`ExtendAckDeadline` limits).
MIN_LEASE_S = float(ACK_DEADLINE_MIN_S)
MAX_LEASE_S = float(ACK_DEADLINE_MAX_S)
#: After a failed renewal call, try again this soon (or at the lease's end, if sooner).
RETRY_AFTER_FAILURE_S = 0.25

ExtendMany = Callable[[list[str], timedelta], Awaitable[AckResult]]


@dataclass(slots=True)
class _Lease:
    length_s: float
    renew_at: float
    not_before: float = 0.0  # after a failed call: no new attempt before this

    def due(self, now: float) -> bool:
        """Whether to renew now: due, or due soon enough to share a call with one that is."""
        return now >= self.not_before and now >= self.renew_at - BATCH_FRACTION * self.length_s

    def wake_at(self) -> float:
        return max(self.renew_at, self.not_before)


class Leaser:
    """Renews the leases of deliveries in progress, in batches, until each is released."""

    def __init__(self, extend: ExtendMany) -> None:
        """Create a leaser that renews through `extend(ack_ids, extension)`."""
        self._extend = extend
        self._leases: dict[str, _Lease] = {}
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.renewals = 0
        """How many `ExtendAckDeadline` calls the leaser made (for tests and logs)."""

    def __len__(self) -> int:
        return len(self._leases)

    def hold(self, message: Message) -> None:
        """Start keeping `message`'s lease (a no-op for deliveries without one)."""
        if not message.ack_id or message.ack_deadline is None:
            return
        remaining_s = (message.ack_deadline - datetime.now(UTC)).total_seconds()
        length_s = _lease_length(remaining_s)
        self._track(message.ack_id, length_s, self._loop.time() + remaining_s)

    def release(self, ack_id: str) -> None:
        """Stop keeping a lease: its handlers are done (it is about to be acked or nacked)."""
        self._leases.pop(ack_id, None)

    async def extend(self, ack_id: str, extension: timedelta) -> AckResult:
        """Extend one lease now (for `Context.extend`); later renewals keep that length."""
        result = await self._extend([ack_id], extension)
        if ack_id in result.not_applied:
            self.release(ack_id)
        elif ack_id in self._leases:
            length_s = _lease_length(extension.total_seconds())
            self._track(ack_id, length_s, self._loop.time() + extension.total_seconds())
        return result

    def _track(self, ack_id: str, length_s: float, ends_at: float) -> None:
        jitter_s = _jitter.uniform(0.0, JITTER_FRACTION * length_s)
        renew_at = ends_at - (1.0 - RENEW_AT_FRACTION) * length_s - jitter_s
        self._leases[ack_id] = _Lease(length_s=length_s, renew_at=renew_at)
        self._changed.set()

    async def run(self) -> None:
        """Renew leases as they come due, until cancelled."""
        while True:
            now = self._loop.time()
            due = [(ack_id, lease) for ack_id, lease in self._leases.items() if lease.due(now)]
            if due:
                await self._renew(due)
                continue
            self._changed.clear()
            next_at = min((lease.wake_at() for lease in self._leases.values()), default=None)
            timeout = None if next_at is None else max(0.0, next_at - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    async def _renew(self, due: list[tuple[str, _Lease]]) -> None:
        by_length: defaultdict[float, list[str]] = defaultdict(list)
        for ack_id, lease in due:
            by_length[lease.length_s].append(ack_id)
        for length_s, ack_ids in by_length.items():
            started = self._loop.time()
            self.renewals += 1
            try:
                result = await self._extend(ack_ids, timedelta(seconds=length_s))
            except BrokerError as error:
                _log.warning("could not renew %d leases (%s); retrying", len(ack_ids), error)
                retry_at = self._loop.time() + min(RETRY_AFTER_FAILURE_S, 0.1 * length_s)
                for ack_id in ack_ids:
                    if ack_id in self._leases:
                        self._leases[ack_id].not_before = retry_at
                continue
            lost = set(result.not_applied)
            if lost:
                _log.warning(
                    "%d leases were lost before renewal (expired or given to another consumer); "
                    "those deliveries will come again",
                    len(lost),
                )
            for ack_id in ack_ids:
                if ack_id in lost:
                    self.release(ack_id)
                elif ack_id in self._leases:
                    self._track(ack_id, length_s, started + length_s)


def _lease_length(seconds: float) -> float:
    """A lease length the broker accepts, in whole seconds, from a measured remainder."""
    return min(MAX_LEASE_S, max(MIN_LEASE_S, float(math.ceil(seconds - 0.05))))
