"""Plain domain types shared by the storage, the delivery engine and the API edge.

Times are integer microseconds since the Unix epoch (UTC) and durations are
integer microseconds: exact, cheap to compare, and stored as BIGINT by both
databases. Proto messages never reach below the API edge; database rows never
reach above the storage.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

US_PER_S = 1_000_000
#: The largest number a BIGINT column holds (ids and attempts are stored as such).
_BIGINT_MAX = 2**63 - 1
_BIGINT_DIGITS = len(str(_BIGINT_MAX))
#: An ack id: three numbers (two in earlier ack ids), ASCII digits only.
_ACK_ID_RE = re.compile(r"([0-9]+)-([0-9]+)(?:-([0-9]+))?")
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"


class DeliveryState(enum.IntEnum):
    """Where a delivery stands; the numbers are the proto enum's."""

    SCHEDULED = 1
    READY = 2
    IN_FLIGHT = 3
    ACKED = 4
    DEAD = 5
    BLOCKED = 6


class DeadReason(enum.IntEnum):
    """Why a delivery was dead-lettered; the numbers are the proto enum's."""

    NONE = 0
    ATTEMPTS_EXHAUSTED = 1
    NACKED_TERMINAL = 2
    EXPIRED = 3


class AttemptOutcome(enum.IntEnum):
    """How one attempt ended; the numbers are the proto enum's."""

    ACKED = 1
    NACKED = 2
    EXPIRED = 3
    RELEASED = 4


class StartPosition(enum.IntEnum):
    """Where a new subscription starts; the numbers are the proto enum's."""

    NEW = 1
    BEGINNING = 2
    TIME = 3


@dataclass(frozen=True, slots=True)
class EventDraft:
    """A validated event about to be stored; its id is assigned before storing."""

    event_id: str
    name: str
    payload: bytes
    content_type: str
    headers: Mapping[str, str]
    dedup_id: str | None
    priority: int
    ordering_key: str | None
    deliver_at_us: int
    delay_us: int

    def stored_at(self, now_us: int) -> StoredEvent:
        """The event as the log keeps it once stored at `now_us` (a past time means now)."""
        return StoredEvent(
            event_id=self.event_id,
            name=self.name,
            payload=self.payload,
            content_type=self.content_type,
            headers=self.headers,
            dedup_id=self.dedup_id,
            priority=self.priority,
            ordering_key=self.ordering_key,
            published_at_us=now_us,
            deliver_at_us=max(self.deliver_at_us, now_us),
            delay_us=self.delay_us,
        )


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the broker stored it."""

    event_id: str
    name: str
    payload: bytes
    content_type: str
    headers: Mapping[str, str]
    dedup_id: str | None
    priority: int
    ordering_key: str | None
    published_at_us: int
    deliver_at_us: int
    delay_us: int


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    """The result of storing one event draft."""

    event_id: str
    duplicate: bool
    #: Ids of the subscriptions that got a delivery ready now (to wake them).
    ready_subscription_ids: frozenset[int] = frozenset()
    #: Earliest time a scheduled delivery of this event becomes ready, if any.
    next_scheduled_us: int | None = None
    #: How many subscriptions got a delivery of it (0 for a duplicate: nothing stored).
    matched: int = 0


@dataclass(frozen=True, slots=True)
class Subscription:
    """A durable subscription and its settings."""

    name: str
    filters: tuple[str, ...]
    ack_deadline_us: int
    max_attempts: int
    min_backoff_us: int
    max_backoff_us: int
    max_in_flight: int
    ordered: bool
    retention_us: int
    start_position: StartPosition = StartPosition.NEW
    start_time_us: int = 0
    created_at_us: int = 0
    id: int = 0
    #: Events older than this are dead-lettered (EXPIRED); 0 for no maximum age.
    max_age_us: int = 0
    #: An explicit retry table (delay after attempt n is [n-1], the last repeats).
    retry_delays_us: tuple[int, ...] = ()
    #: How many deliveries of one key may be in flight at once; 0 for no cap.
    max_in_flight_per_key: int = 0
    #: The header whose value is an event's key; empty for its ordering key.
    key_header: str = ""

    @property
    def keyed(self) -> bool:
        """Whether deliveries are gated by their key (ordered, or capped per key)."""
        return self.ordered or self.max_in_flight_per_key > 0

    @property
    def key_cap(self) -> int | None:
        """How many deliveries of one key may move at once (None: keys are not gated)."""
        if self.ordered:
            return 1
        return self.max_in_flight_per_key or None


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """How many deliveries one consumer of a subscription may take now."""

    consumer: str
    count: int


class LeasedDelivery(NamedTuple):
    """A delivery leased to a consumer, with its event (a tuple: one is made per delivery)."""

    ack_id: str
    subscription: str
    event: StoredEvent
    attempt: int
    ack_deadline_us: int


class AckId(NamedTuple):
    """An ack id parsed: one lease of one delivery.

    A delivery is named by its subscription and its event's place in the log
    (one delivery per event and subscription); the attempt tells its leases
    apart, so a lease that ended cannot be settled by its stale ack id.
    Written `"<subscription id>-<seq>-<attempt>"`.
    """

    subscription_id: int
    seq: int
    attempt: int

    def __str__(self) -> str:
        return ack_id_text(self.subscription_id, self.seq, self.attempt)

    @classmethod
    def parse(cls, text: str) -> AckId | LegacyAckId | None:
        """Parse an ack id (or one of the earlier `"<delivery id>-<attempt>"`); None if neither."""
        found = _ACK_ID_RE.fullmatch(text)
        if found is None:
            return None
        first, second, third = found.groups()
        if len(text) >= _BIGINT_DIGITS and any(
            len(part) >= _BIGINT_DIGITS and int(part) > _BIGINT_MAX
            for part in (first, second, third or "")
        ):
            return None  # no row has such a number; the databases could not even compare it
        if third is None:
            return LegacyAckId(int(first), int(second))
        return cls(int(first), int(second), int(third))


def ack_id_text(subscription_id: int, seq: int, attempt: int) -> str:
    """The ack id of a lease, written out (as `str(AckId(...))`, without building one)."""
    return f"{subscription_id}-{seq}-{attempt}"


class LegacyAckId(NamedTuple):
    """An ack id handed out before deliveries were named by their place in the log.

    Leases kept across an upgrade still carry one; storage finds the delivery
    by its row id.
    """

    delivery_id: int
    attempt: int


@dataclass(frozen=True, slots=True)
class SettleOutcome:
    """Result of an ack, nack, extend or release of many ack ids."""

    applied: tuple[str, ...]
    not_applied: tuple[str, ...]
    #: Subscriptions that may deliver more now (to wake their dispatchers): deliveries
    #: ready again, an ordering key moved on, or a concurrency-limit slot freed.
    ready_subscription_ids: frozenset[int] = frozenset()
    #: Earliest time a delivery given back becomes ready, if scheduled.
    next_scheduled_us: int | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One past attempt of a delivery."""

    attempt: int
    delivered_at_us: int
    ended_at_us: int
    consumer: str
    outcome: AttemptOutcome
    error: str = ""


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    """An event's delivery in one subscription, with why it is where it is."""

    subscription: str
    state: DeliveryState
    attempts: int
    next_time_us: int | None
    consumer: str
    dead_reason: DeadReason
    last_error: str
    history: tuple[AttemptRecord, ...] = field(default_factory=tuple)
    #: Set on deliveries of keyed subscriptions (ordered, or capped per key): the
    #: delivery's key there (its ordering key, or the subscription's key header).
    ordering_key: str | None = None
    #: When the delivery last changed state (a dead letter: when it died).
    updated_at_us: int | None = None
    #: A blocked delivery: what holds its key's slots.
    key_wait: KeyWait | None = None


@dataclass(frozen=True, slots=True)
class KeyWait:
    """Why a delivery waits for its key: the key's slots are all held."""

    key: str
    #: Deliveries of the key holding a slot: in flight, or ready to be (in an
    #: ordered subscription also one backing off before a retry).
    in_flight: int
    #: How many may hold one at once (1 in an ordered subscription).
    limit: int
    #: The subscription is ordered: the delivery waits for the one before it.
    ordered: bool = False


@dataclass(frozen=True, slots=True)
class SubscriptionCounts:
    """Delivery counts of one subscription."""

    subscription: str
    scheduled: int
    ready: int
    in_flight: int
    acked: int
    dead: int
    oldest_waiting_us: int | None


class Scope(enum.StrEnum):
    """What an API key may do."""

    PUBLISH = "publish"
    """Publish and BatchPublish (events whose names match the key's patterns)."""
    SUBSCRIBE = "subscribe"
    """Subscribe, Ack, Nack and ExtendAckDeadline."""
    ADMIN = "admin"
    """Manage subscriptions, dead letters, Seek, GetEvent and GetStats."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: never the secret itself, only its SHA-256.

    `patterns` (name patterns as in filters) limit the event names a key may
    publish and the subscriptions it may use; empty means no limit.
    `publish_rate` caps the events per second it may publish (per broker process).
    """

    key_id: str
    name: str
    secret_sha256: str
    scopes: frozenset[Scope]
    patterns: tuple[str, ...]
    created_at_us: int
    revoked_at_us: int | None = None
    publish_rate: int | None = None
