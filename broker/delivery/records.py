"""The facts the decisions read and the changes they return, as plain records.

Storage produces and consumes these; the decisions take and return them.
A delivery is named by its subscription and its event's place in the log
(`DeliveryKey`): one event has at most one delivery per subscription.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, NewType

from broker.domain import DeadReason, DeliveryState

#: A subscription's place in the log, as storage keeps it (a number on SQLite, a
#: snapshot and a number on PostgreSQL): opaque to the decisions, which only
#: pass back the position of the last entry they used.
Position = NewType("Position", object)


class DeliveryKey(NamedTuple):
    """One event's delivery in one subscription."""

    subscription_id: int
    seq: int


class NewDelivery(NamedTuple):
    """A delivery row to write, for an event that needs one in a subscription.

    `seq` is None when the event is being stored in the same write: storage
    fills in the place it gives the event. (A tuple: leases make one per
    delivery, and a tuple costs a fraction of a frozen dataclass to build.)
    """

    subscription_id: int
    event_id: str
    seq: int | None
    state: DeliveryState
    rank: int
    ordering_key: str | None
    ready_at_us: int
    attempt: int = 0
    dead_reason: DeadReason = DeadReason.NONE
    leased_at_us: int | None = None
    lease_expires_at_us: int | None = None
    consumer: str | None = None


class LogEntry(NamedTuple):
    """An event past a subscription's position, as a scan of the log found it.

    What routing needs of the event; its payload is read only if it is leased.
    """

    seq: int
    event_id: str
    name: str
    priority: int
    ordering_key: str | None
    published_at_us: int
    deliver_at_us: int
    #: The subscription has a delivery row for this event already (made at publish,
    #: by a seek, or by an earlier lease): the log does not deliver it again.
    has_row: bool
    #: The subscription's position once this entry is used.
    position: Position


@dataclass(frozen=True, slots=True)
class LogScan:
    """Events past a subscription's position, in log order."""

    entries: list[LogEntry]
    #: The position once every entry is used.
    end: Position
    #: The scan reached the end of what the log holds now.
    exhausted: bool


@dataclass(frozen=True, slots=True)
class ReadyDelivery:
    """A delivery row that is ready to lease."""

    seq: int
    rank: int
    event_id: str


@dataclass(frozen=True, slots=True)
class Claim:
    """A ready delivery row leased to a consumer."""

    seq: int
    consumer: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery row a claim leased: its event and the attempt it is now on."""

    seq: int
    event_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class KeyedDelivery:
    """An open delivery of an ordering key (not yet acked or dead)."""

    seq: int
    state: DeliveryState
    ready_at_us: int


@dataclass(frozen=True, slots=True)
class StateChange:
    """A delivery row moved to another state (the gate, a seek's skip, an age limit)."""

    key: DeliveryKey
    state: DeliveryState
    dead_reason: DeadReason = DeadReason.NONE


class Settled(NamedTuple):
    """A lease an ack ended: what the decisions after it need."""

    key: DeliveryKey
    attempt: int
    ordering_key: str | None
