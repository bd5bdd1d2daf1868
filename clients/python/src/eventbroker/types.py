"""The client's public value types: what calls take and return instead of proto messages.

All of them are frozen dataclasses; the generated proto classes stop at
`eventbroker._convert`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeAlias, TypedDict

from typing_extensions import TypeVar

DelayLike: TypeAlias = timedelta | datetime | int | float | str | None
"""A delay or a time: seconds as a number, `timedelta`, `datetime` (naive means UTC),
words (`"5m"`, `"1 day"`, `"500ms"`), an ISO-8601 duration (`"PT5M"`) or time
(see `eventbroker.durations`)."""

DurationLike: TypeAlias = timedelta | int | float | str
"""A length of time: seconds as a number, `timedelta`, words (`"5m"`, `"1 day"`, `"500ms"`)
or an ISO-8601 duration (`"PT30S"`) (see `eventbroker.durations`)."""


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The outcome of publishing one event.

    Attributes:
        event_id: The broker-assigned id (for a duplicate, the first event's id).
        duplicate: True when an event with the same `id` was published inside the
            dedup window, so nothing was stored this time.
        matched_subscriptions: How many subscriptions got a delivery of the event.
            0 means no subscription's filter matches its name (the event is stored
            and delivered to nobody; check the name for a typo), or a duplicate.

    """

    event_id: str
    duplicate: bool
    matched_subscriptions: int = 0


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event to publish, for `publish_batch` (the arguments of `publish` as a value).

    Attributes:
        name: Event name, e.g. `user.joined` (case-insensitive).
        data: JSON-able value, dataclass instance, pydantic model, or `bytes`.
        id: Idempotency id: a repeat inside the dedup window is stored only once.
        delay: When to deliver: a delay or an absolute time (see `DelayLike`).
        priority: -50..50; higher goes first among deliveries ready at once.
        ordering_key: FIFO key for ordered subscriptions.
        headers: String headers delivered with the event.
        content_type: Content type of `bytes` data (default application/octet-stream).

    """

    name: str
    data: Any = None
    id: str | None = None
    delay: DelayLike = None
    priority: int = 0
    ordering_key: str | None = None
    headers: Mapping[str, str] | None = None
    content_type: str | None = None


#: The type of `Message.data`: `Any` unless a handler's `model=` says (`Message[Order]`).
DataT = TypeVar("DataT", default=Any)


@dataclass(frozen=True, slots=True)
class Message(Generic[DataT]):
    """One delivery received from a subscription (or an ephemeral tail).

    `Message[Order]` is a message whose `data` is an `Order`: what a consumer
    handler registered with `model=Order` receives.

    Attributes:
        ack_id: Id to ack, nack or extend this delivery with; empty on a tail.
        event_id: The broker-assigned event id.
        name: Event name, lower-cased.
        data: Decoded JSON value, `bytes` for binary payloads, or a validated model
            instance when a consumer handler asked for one.
        content_type: Content type of the payload.
        headers: Headers given at publish.
        publish_time: When the event was published (UTC).
        delay: The delay the event was given (zero for none).
        priority: Priority given at publish.
        attempt: Attempt number, 1 on the first delivery.
        ack_deadline: When the lease ends unless acked or extended; None on a tail.
        subscription: The subscription delivered for; empty on a tail.
        ordering_key: Ordering key given at publish, if any.
        dedup_id: Deduplication id given at publish, if any.

    """

    ack_id: str
    event_id: str
    name: str
    data: DataT
    content_type: str
    headers: Mapping[str, str]
    publish_time: datetime
    delay: timedelta
    priority: int
    attempt: int
    ack_deadline: datetime | None
    subscription: str
    ordering_key: str | None = None
    dedup_id: str | None = None


AckIds: TypeAlias = str | Message | Iterable[str | Message]
"""What ack, nack and extend take: one ack id or message, or many."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """A durable subscription and its settings, defaults filled in by the broker.

    Attributes:
        name: Unique name.
        filter: Name patterns: exact, `*` for one segment, `>` for the rest.
        ack_deadline: Time a consumer has to ack before the delivery is retried.
        max_attempts: Failed attempts before the delivery is dead-lettered.
        min_backoff: First retry delay.
        max_backoff: Longest retry delay.
        max_in_flight: Concurrency limit across all consumers; None means unlimited.
        ordered: FIFO per ordering key.
        retention: How long acked and dead deliveries stay queryable.
        create_time: When it was created.
        max_age: Deliveries of events older than this are dead-lettered (reason
            `expired`) instead of delivered or retried; None for no maximum age.
        retry_delays: The explicit retry table, if any: the delay after attempt n is
            `retry_delays[n-1]`, and the last entry repeats. Empty means the
            exponential backoff between `min_backoff` and `max_backoff`.
        max_in_flight_per_key: Concurrency limit per key across all consumers and
            brokers; None means no cap. Events without a key are not capped.
        key_header: The header whose value is an event's key (for `ordered` and
            `max_in_flight_per_key`); None means the event's ordering key.

    """

    name: str
    filter: tuple[str, ...]
    ack_deadline: timedelta
    max_attempts: int
    min_backoff: timedelta
    max_backoff: timedelta
    max_in_flight: int | None
    ordered: bool
    retention: timedelta
    create_time: datetime | None
    max_age: timedelta | None = None
    retry_delays: tuple[timedelta, ...] = ()
    max_in_flight_per_key: int | None = None
    key_header: str | None = None


class SubscriptionChanges(TypedDict, total=False):
    """Settings `update_subscription` may change; only the keys given are changed.

    `max_in_flight=None` removes the concurrency limit, `max_age=None` the maximum
    age, and `retry_delays=[]` the retry table (back to the exponential backoff).
    `max_in_flight_per_key=None` removes the cap per key, `key_header=None` takes
    keys from the ordering key again.
    """

    filter: str | Sequence[str]
    ack_deadline: DurationLike
    max_attempts: int
    min_backoff: DurationLike
    max_backoff: DurationLike
    max_in_flight: int | None
    retention: DurationLike
    max_age: DurationLike | None
    retry_delays: Sequence[DurationLike]
    max_in_flight_per_key: int | None
    key_header: str | None


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """Delivery counts and rates of one subscription.

    Attributes:
        subscription: Subscription name.
        scheduled: Deliveries waiting for their time (delay or backoff).
        ready: Deliveries ready for a consumer.
        in_flight: Deliveries leased to consumers.
        acked: Acknowledged deliveries still within retention.
        dead: Dead-lettered deliveries.
        consumers: Consumers connected to the answering broker process.
        ack_rate: Acks per second over the last minute (answering process).
        delivery_rate: Deliveries per second over the last minute (answering process).
        oldest_waiting_time: Publish time of the oldest waiting delivery, if any.

    """

    subscription: str
    scheduled: int
    ready: int
    in_flight: int
    acked: int
    dead: int
    consumers: int
    ack_rate: float
    delivery_rate: float
    oldest_waiting_time: datetime | None


@dataclass(frozen=True, slots=True)
class Stats:
    """Broker-wide counts: one entry per subscription, stored events, publish rate.

    Attributes:
        subscriptions: Per-subscription stats, by name.
        events: Events stored.
        publish_rate: Events published per second over the last minute (answering process).

    """

    subscriptions: tuple[SubscriptionStats, ...]
    events: int
    publish_rate: float

    def subscription(self, name: str) -> SubscriptionStats | None:
        """The stats of the subscription called `name`, or None if it has none here."""
        return next((s for s in self.subscriptions if s.subscription == name), None)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One past delivery attempt, from the delivery's history.

    Attributes:
        attempt: Attempt number.
        delivered_time: When it was delivered.
        end_time: When it ended.
        consumer: The consumer it was delivered to.
        outcome: `acked`, `nacked`, `expired` or `released`.
        error: The error given with a nack.

    """

    attempt: int
    delivered_time: datetime | None
    end_time: datetime | None
    consumer: str
    outcome: str
    error: str


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """Where an event's delivery stands in one subscription.

    Attributes:
        subscription: Subscription name.
        state: `scheduled`, `ready`, `in_flight`, `acked`, `dead`, or `blocked` (waiting
            for its key: behind an earlier event of its key in an ordered
            subscription, or while its key is at `max_in_flight_per_key`).
        attempts: Attempts made so far.
        next_time: When it becomes ready (scheduled) or its lease ends (in flight).
        consumer: The consumer holding it (in flight).
        dead_reason: `attempts_exhausted`, `nacked_terminal` or `expired`; None unless dead.
        last_error: The last nack's error.
        reason: A sentence saying why the delivery is where it is.
        history: Past attempts, oldest first.
        update_time: When it last changed state (dead: when it died; acked: when acked).
        key: Its key in a keyed subscription (ordered, or capped per key); None otherwise.
        key_wait: Blocked: what holds its key's slots.

    """

    subscription: str
    state: str
    attempts: int
    next_time: datetime | None
    consumer: str
    dead_reason: str | None
    last_error: str
    reason: str
    history: tuple[Attempt, ...] = ()
    update_time: datetime | None = None
    key: str | None = None
    key_wait: KeyWait | None = None


@dataclass(frozen=True, slots=True)
class KeyWait:
    """Why a delivery waits for its key: all of the key's slots are held.

    Attributes:
        key: The key.
        in_flight: Deliveries of the key holding a slot now: in flight, or ready to
            be (in an ordered subscription also one backing off before a retry).
        limit: Slots per key: `max_in_flight_per_key`, or 1 in an ordered subscription.

    """

    key: str
    in_flight: int
    limit: int


@dataclass(frozen=True, slots=True)
class SeekResult:
    """What a seek changed.

    Attributes:
        replayed: Deliveries made ready again (events published at or after the time).
        skipped: Waiting deliveries of earlier events, marked acked undelivered.

    """

    replayed: int
    skipped: int


@dataclass(frozen=True, slots=True)
class EventInfo:
    """A stored event and its delivery status in each subscription it matched.

    Attributes:
        event_id: The broker-assigned id.
        name: Event name, lower-cased.
        data: Decoded JSON value, or `bytes` for binary payloads.
        content_type: Content type of the payload.
        headers: Headers given at publish.
        publish_time: When it was published.
        delay: The delay it was given.
        priority: Priority given at publish.
        ordering_key: Ordering key given at publish, if any.
        dedup_id: Deduplication id given at publish, if any.
        deliveries: Its delivery in each matching subscription.
        trace_id: The W3C trace id of its `traceparent` header (32 lowercase hex
            digits), to find its publish and handling in a tracing system; "" when
            it carries none (see docs/tracing.md).

    """

    event_id: str
    name: str
    data: Any
    content_type: str
    headers: Mapping[str, str]
    publish_time: datetime | None
    delay: timedelta
    priority: int
    ordering_key: str | None
    dedup_id: str | None
    deliveries: tuple[DeliveryStatus, ...] = ()
    trace_id: str = ""

    def delivery(self, subscription: str) -> DeliveryStatus | None:
        """The delivery status in `subscription`, or None if the event did not match it."""
        return next((d for d in self.deliveries if d.subscription == subscription), None)


@dataclass(frozen=True, slots=True)
class AckResult:
    """The outcome of an ack, nack or extend.

    Attributes:
        not_applied: Ack ids the broker did not apply: unknown, or their lease had
            expired or moved to another consumer (the delivery will come again).

    """

    not_applied: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """A dead-lettered delivery: the event, why it died, and its attempts.

    Attributes:
        event_id: The broker-assigned event id (what `redrive_dead_letters` takes).
        name: Event name, lower-cased.
        data: Decoded JSON value, or `bytes` for binary payloads.
        content_type: Content type of the payload.
        headers: Headers given at publish.
        publish_time: When the event was published.
        subscription: The subscription it died in.
        reason: Why it died: `attempts_exhausted`, `nacked_terminal` or `expired`
            (older than the subscription's `max_age`).
        description: A sentence saying why it died, with the last error.
        last_error: The last nack's error (empty if none was given).
        attempts: Attempts made before it died.
        dead_time: When it died.
        history: Past attempts, oldest first (the broker keeps the last 20).
        priority: Priority given at publish.
        ordering_key: Ordering key given at publish, if any.
        dedup_id: Deduplication id given at publish, if any.
        trace_id: The W3C trace id of its `traceparent` header; "" when it carries none.

    """

    event_id: str
    name: str
    data: Any
    content_type: str
    headers: Mapping[str, str]
    publish_time: datetime | None
    subscription: str
    reason: str
    description: str
    last_error: str
    attempts: int
    dead_time: datetime | None
    history: tuple[Attempt, ...] = ()
    priority: int = 0
    ordering_key: str | None = None
    dedup_id: str | None = None
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """One page of a subscription's dead letters, oldest first.

    Attributes:
        items: The dead letters on this page.
        next_page_token: Pass it as `page_token` for the next page; None on the last.

    """

    items: tuple[DeadLetterInfo, ...]
    next_page_token: str | None = None
