"""Leasing: how many deliveries a lease may take, which ones, and for whom.

Ready rows (retries, priorities, keyed deliveries, redriven dead letters) and
the events past the subscription's position in the log are two queues of one
subscription. A lease merges them in delivery order (rank, then place in the
log: a higher priority first, equal priorities in publish order), takes no
more than the consumers' credit and the concurrency limit allow, and splits
what it took evenly between the consumers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from broker.delivery.records import (
    Claim,
    LogEntry,
    LogScan,
    NewDelivery,
    Position,
    ReadyDelivery,
)
from broker.delivery.routing import ScanRoute, route_scanned
from broker.domain import DeadReason, DeliveryState, LeaseRequest, Subscription

#: A lease scans at least this many log entries, so that a narrow filter skips
#: other events' entries in few round trips.
SCAN_MIN = 32
#: ... and at most this many.
SCAN_MAX = 2000


def share_credit(wants: Sequence[int], budget: int) -> list[int]:
    """Split `budget` deliveries among consumers wanting `wants`, evenly, in turn.

    Each gets an equal part of what is left (the first ones one more when it
    does not divide), and what a consumer cannot take goes to the others. The
    caller rotates the order between calls, so that a budget of one (a
    concurrency limit with one free slot) goes to each consumer in turn rather
    than always to the first.
    """
    given = [0] * len(wants)
    left = budget
    active = [i for i, want in enumerate(wants) if want > 0]
    while left > 0 and active:
        each = max(left // len(active), 1)
        still: list[int] = []
        for i in active:
            take = min(each, wants[i] - given[i], left)
            given[i] += take
            left -= take
            if given[i] < wants[i]:
                still.append(i)
            if left == 0:
                break
        active = still
    return given


def lease_budget(requests: Sequence[LeaseRequest], sub: Subscription, in_flight: int | None) -> int:
    """How many deliveries a lease may take: the credit asked, within the concurrency limit."""
    asked = sum(max(r.count, 0) for r in requests)
    if sub.max_in_flight > 0:
        asked = min(asked, sub.max_in_flight - (in_flight or 0))
    return max(asked, 0)


def scan_limit(budget: int) -> int:
    """How many log entries a lease of `budget` deliveries reads."""
    return min(max(budget, SCAN_MIN), SCAN_MAX)


class Leased(NamedTuple):
    """One delivery a lease takes, for a consumer: a ready row, or an event from the log."""

    consumer: str
    seq: int
    event_id: str
    #: Taken from the log (a first attempt), not a row to claim.
    from_log: bool


@dataclass(frozen=True, slots=True)
class LeasePlan:
    """What one lease writes, and what it hands out."""

    #: Every delivery taken, per consumer in delivery order.
    leased: list[Leased]
    #: Ready rows to claim.
    claims: list[Claim]
    #: Rows for events leased straight from the log (in flight from now on).
    new_leases: list[NewDelivery]
    #: Rows for scanned events that must wait or are dead.
    new_rows: list[NewDelivery]
    #: The subscription's position after the lease; None leaves it where it is.
    position: Position | None
    #: More may be ready now: a lease that took its whole budget, or stopped short.
    more: bool


def plan_lease(
    sub: Subscription,
    requests: Sequence[LeaseRequest],
    budget: int,
    ready: Sequence[ReadyDelivery],
    scan: LogScan | None,
    now_us: int,
) -> LeasePlan:
    """Take up to `budget` deliveries, best first, and split them between the requests.

    `ready` holds up to `budget` ready rows in delivery order; `scan` the log
    past the subscription's position (None: not read). Log entries used are
    passed: leased, given a row, or skipped; the position moves past them.
    """
    entries: Sequence[LogEntry] = scan.entries if scan is not None else ()
    #: What was taken, best first: (seq, event id, from the log).
    taken: list[tuple[int, str, bool]] = []
    new_rows: list[NewDelivery] = []
    position: Position | None = None
    i = j = 0
    while len(taken) < budget:
        # Route the log's entries up to the next one this lease can take.
        while j < len(entries):
            entry = entries[j]
            scanned = route_scanned(sub, entry, now_us)
            if scanned.route is ScanRoute.LEASE:
                break
            if scanned.row is not None:
                new_rows.append(scanned.row)
            position = entry.position
            j += 1
        row = ready[i] if i < len(ready) else None
        entry_next = entries[j] if j < len(entries) else None
        if row is None and entry_next is None:
            break
        if entry_next is None or (row is not None and (row.rank, row.seq) < (0, entry_next.seq)):
            assert row is not None
            taken.append((row.seq, row.event_id, False))
            i += 1
        else:
            taken.append((entry_next.seq, entry_next.event_id, True))
            position = entry_next.position
            j += 1
    if scan is not None and j == len(entries):
        position = scan.end
    rows_exhausted = i == len(ready) and len(ready) < budget
    log_exhausted = scan is None or (j == len(entries) and scan.exhausted)
    more = budget > 0 and (len(taken) >= budget or not (rows_exhausted and log_exhausted))
    return _hand_out(sub, requests, taken, new_rows, position, more, now_us)


def _hand_out(
    sub: Subscription,
    requests: Sequence[LeaseRequest],
    taken: list[tuple[int, str, bool]],
    new_rows: list[NewDelivery],
    position: Position | None,
    more: bool,
    now_us: int,
) -> LeasePlan:
    """Give each request its share of what was taken (best first), in turn."""
    shares = share_credit([r.count for r in requests], len(taken))
    expires = now_us + sub.ack_deadline_us
    leased: list[Leased] = []
    claims: list[Claim] = []
    new_leases: list[NewDelivery] = []
    start = 0
    in_flight = DeliveryState.IN_FLIGHT
    for request, share in zip(requests, shares, strict=True):
        consumer = request.consumer
        for seq, event_id, from_log in taken[start : start + share]:
            leased.append(Leased(consumer, seq, event_id, from_log))
            if from_log:
                new_leases.append(
                    NewDelivery(
                        sub.id,
                        event_id,
                        seq,
                        in_flight,
                        0,
                        None,
                        now_us,
                        1,
                        DeadReason.NONE,
                        now_us,
                        expires,
                        consumer,
                    )
                )
            else:
                claims.append(Claim(seq, consumer))
        start += share
    return LeasePlan(leased, claims, new_leases, new_rows, position, more)
