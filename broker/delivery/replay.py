"""Seek: deliveries made ready again, or skipped, by a person's request.

A seek moves a subscription's position in the log to a time: what was
published since is delivered again, what was published before and still waits
is skipped. The log delivers again every event since the time that has no
row, so a settled row of such an event is forgotten (the event is delivered
afresh: attempts from one, no history). A redrive (storage's
`delivery_restart`) makes dead letters ready again as new first attempts and
keeps their history.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from broker.delivery.records import DeliveryKey, StateChange
from broker.domain import DeliveryState

#: Rows a seek skips when their event was published before the time.
_WAITING = frozenset({DeliveryState.SCHEDULED, DeliveryState.READY, DeliveryState.BLOCKED})
#: Rows a seek delivers again when their event was published at or after the time.
_SETTLED = frozenset({DeliveryState.ACKED, DeliveryState.DEAD})


@dataclass(frozen=True, slots=True)
class SeekRow:
    """A subscription's delivery row, with its event's publish time."""

    key: DeliveryKey
    state: DeliveryState
    published_at_us: int


@dataclass(frozen=True, slots=True)
class SeekPlan:
    """The rows a seek changes."""

    skip: list[StateChange]
    #: Settled rows to forget: the log delivers their events again.
    forget: list[DeliveryKey]


def plan_seek(rows: Iterable[SeekRow], time_us: int) -> SeekPlan:
    """Skip waiting rows published before `time_us`; forget settled rows published since.

    Rows in flight are left to their consumers.
    """
    skip: list[StateChange] = []
    forget: list[DeliveryKey] = []
    for row in rows:
        if row.published_at_us < time_us:
            if row.state in _WAITING:
                skip.append(StateChange(row.key, DeliveryState.ACKED))
        elif row.state in _SETTLED:
            forget.append(row.key)
    return SeekPlan(skip, forget)
