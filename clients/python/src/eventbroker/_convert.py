"""Client values to proto requests and proto responses to client values: the one place they meet.

Both `Client` and `AsyncClient` build every request and read every response
here, so the two stay thin and cannot drift apart. JSON data travels as
`binary_data` with content type `application/json` both ways (publishing skips
building a `google.protobuf.Value`; subscribing asks for `json_as_binary`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from eventbroker import _models, durations
from eventbroker.durations import as_utc, parse_delay, parse_duration
from eventbroker.types import (
    AckIds,
    AckResult,
    Attempt,
    DeadLetterInfo,
    DeadLetterPage,
    DeliveryStatus,
    DurationLike,
    EventInfo,
    EventSpec,
    KeyWait,
    Message,
    PublishResult,
    SeekResult,
    Stats,
    Subscription,
    SubscriptionChanges,
    SubscriptionStats,
)
from eventbroker.v1 import broker_pb2 as pb

JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
#: The broker takes at most this many ack ids per Ack, Nack or ExtendAckDeadline.
ACK_IDS_PER_CALL = 10_000
#: Event ids per RedriveDeadLetters call when many are redriven by id.
REDRIVE_IDS_PER_CALL = 1_000
_SAFE_INTEGER = 2**53

#: update_subscription keys and the field paths of their update mask.
SETTING_PATHS = {
    "filter": "filter",
    "ack_deadline": "ack_deadline",
    "max_attempts": "max_attempts",
    "min_backoff": "retry_policy.min_backoff",
    "max_backoff": "retry_policy.max_backoff",
    "max_in_flight": "max_in_flight",
    "max_in_flight_per_key": "max_in_flight_per_key",
    "key_header": "key_header",
    "retention": "retention",
    "max_age": "max_age",
    "retry_delays": "retry_policy.delays",
}
_START_POSITIONS = {
    "new": pb.START_POSITION_NEW,
    "beginning": pb.START_POSITION_BEGINNING,
}
#: Dead reasons by their client names (`attempts_exhausted`, `nacked_terminal`, `expired`).
DEAD_REASONS = {
    name.removeprefix("DEAD_REASON_").lower(): value
    for name, value in pb.DeadReason.items()
    if value != pb.DEAD_REASON_UNSPECIFIED
}


# -- time ----------------------------------------------------------------------


def to_duration(value: timedelta) -> duration_pb2.Duration:
    """A timedelta as a protobuf Duration."""
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


def to_timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A datetime (naive means UTC) as a protobuf Timestamp."""
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(as_utc(value))
    return message


def from_timestamp(value: timestamp_pb2.Timestamp) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return value.ToDatetime(tzinfo=UTC)


def _optional_time(holder: Any, field: str) -> datetime | None:
    return from_timestamp(getattr(holder, field)) if holder.HasField(field) else None


# -- payloads ------------------------------------------------------------------


def is_json_type(content_type: str) -> bool:
    """Whether a content type is JSON (`application/json`, with or without parameters)."""
    return content_type.split(";", 1)[0].strip().lower() == JSON_CONTENT_TYPE


def _set_payload(event: pb.Event, data: Any, content_type: str | None) -> None:
    if isinstance(data, bytes | bytearray | memoryview):
        event.binary_data = bytes(data)
        event.content_type = content_type or BINARY_CONTENT_TYPE
    elif content_type is not None and not is_json_type(content_type):
        if not isinstance(data, str):
            raise ValueError(
                f"content_type {content_type!r} is for bytes or str data; "
                f"got {type(data).__name__} (leave content_type out to send it as JSON)"
            )
        event.binary_data = data.encode()
        event.content_type = content_type
    elif data is not None:
        event.binary_data = _models.dumps(data)
        event.content_type = JSON_CONTENT_TYPE


def value_to_python(value: struct_pb2.Value) -> Any:
    """A protobuf Value as plain Python, whole numbers as ints (as `json.loads` gives them)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if math.isfinite(number) and number.is_integer() and abs(number) < _SAFE_INTEGER:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: value_to_python(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [value_to_python(v) for v in value.list_value.values]
    return None


def _payload(message: pb.Delivery | pb.Event) -> Any:
    kind = message.WhichOneof("payload")
    if kind == "data":
        return value_to_python(message.data)
    if kind == "binary_data":
        if is_json_type(message.content_type):
            return json.loads(message.binary_data)
        return message.binary_data
    return None


# -- publishing ----------------------------------------------------------------


def event_spec(item: EventSpec | Mapping[str, Any]) -> EventSpec:
    """An EventSpec from itself or a dict with `publish`'s argument names.

    Raises:
        TypeError: The dict has a key `publish` does not take, or lacks `name`.

    """
    if isinstance(item, EventSpec):
        return item
    return EventSpec(**item)


def event_message(spec: EventSpec) -> pb.Event:
    """The proto Event of one event to publish.

    Raises:
        ValueError: The delay or the data cannot be read, or the delay is over a year.

    """
    event = pb.Event(
        name=spec.name,
        headers=dict(spec.headers or {}),
        id=spec.id or "",
        priority=spec.priority,
        ordering_key=spec.ordering_key or "",
    )
    _set_payload(event, spec.data, spec.content_type)
    when = parse_delay(spec.delay)
    if isinstance(when, timedelta):
        event.delay.CopyFrom(to_duration(when))
    elif isinstance(when, datetime):
        event.deliver_at.CopyFrom(to_timestamp(when))
    return event


def publish_request(spec: EventSpec) -> pb.PublishRequest:
    """A Publish request for one event."""
    return pb.PublishRequest(event=event_message(spec))


def event_specs(events: Iterable[EventSpec | Mapping[str, Any]]) -> list[EventSpec]:
    """EventSpecs of `publish_batch`'s items; the error of a bad item names its index."""
    specs = []
    for index, item in enumerate(events):
        try:
            specs.append(event_spec(item))
        except TypeError as error:
            raise TypeError(f"events[{index}]: {error}") from error
    return specs


def batch_publish_request(
    events: Iterable[EventSpec | Mapping[str, Any]],
) -> pb.BatchPublishRequest:
    """A BatchPublish request; the error of a bad item names its index."""
    messages = []
    for index, item in enumerate(events):
        try:
            messages.append(event_message(event_spec(item)))
        except (TypeError, ValueError) as error:
            raise type(error)(f"events[{index}]: {error}") from error
    return pb.BatchPublishRequest(events=messages)


def publish_result(response: pb.PublishResponse | pb.PublishResult) -> PublishResult:
    """A PublishResult from a Publish response or one BatchPublish result."""
    return PublishResult(
        event_id=response.event_id,
        duplicate=response.status == pb.PUBLISH_STATUS_DUPLICATE,
        matched_subscriptions=response.matched_subscriptions,
    )


def batch_publish_results(response: pb.BatchPublishResponse) -> list[PublishResult]:
    """One PublishResult per published event, in request order."""
    return [publish_result(result) for result in response.results]


# -- subscriptions -------------------------------------------------------------


def _filters(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


#: The lengths each duration setting of a subscription accepts (the broker checks too).
_SETTING_LIMITS = {
    "ack_deadline": durations.ACK_DEADLINE,
    "min_backoff": durations.ANY_DELAY,
    "max_backoff": durations.ANY_DELAY,
    "retry_delays": durations.ANY_DELAY,
    "retention": durations.RETENTION,
    "max_age": durations.MAX_AGE,
}


def _duration_setting(key: str, value: DurationLike) -> duration_pb2.Duration:
    limits = _SETTING_LIMITS.get(key.split("[", 1)[0], durations.UNLIMITED)
    return to_duration(parse_duration(value, name=key, limits=limits))


def _duration_table(
    key: str, value: DurationLike | Sequence[DurationLike]
) -> list[duration_pb2.Duration]:
    """A retry table; one duration (a string is one, not a sequence of letters) is one entry."""
    items = [value] if isinstance(value, str | timedelta | int | float) else list(value)
    return [_duration_setting(f"{key}[{index}]", item) for index, item in enumerate(items)]


def _apply_settings(message: pb.Subscription, changes: Mapping[str, Any]) -> list[str]:
    """Copy settings into a Subscription message; return their update-mask paths."""
    paths = []
    for key, value in changes.items():
        if key not in SETTING_PATHS:
            raise TypeError(
                f"unknown subscription setting {key!r}; settable: {', '.join(SETTING_PATHS)}"
            )
        paths.append(SETTING_PATHS[key])
        if key == "filter":
            message.filter.extend(_filters(value))
        elif key in ("max_attempts", "max_in_flight", "max_in_flight_per_key"):
            setattr(message, key, value or 0)
        elif key == "key_header":
            message.key_header = value or ""
        elif key in ("min_backoff", "max_backoff"):
            getattr(message.retry_policy, key).CopyFrom(_duration_setting(key, value))
        elif key == "retry_delays":
            message.retry_policy.delays.extend(_duration_table(key, value))
        elif key == "max_age" and value is None:
            pass  # unset in the message: no maximum age
        else:
            getattr(message, key).CopyFrom(_duration_setting(key, value))
    return paths


def create_subscription_request(
    name: str,
    filter: str | Sequence[str],
    settings: Mapping[str, Any],
    *,
    ordered: bool = False,
    start: str | datetime | None = None,
) -> pb.CreateSubscriptionRequest:
    """A CreateSubscription request; settings that are None take the broker's defaults.

    Raises:
        ValueError: A duration or `start` cannot be read.

    """
    message = pb.Subscription(name=name, ordered=ordered)
    given = {key: value for key, value in settings.items() if value is not None}
    _apply_settings(message, {"filter": filter, **given})
    if isinstance(start, datetime):
        message.start_position = pb.START_POSITION_TIME
        message.start_time.CopyFrom(to_timestamp(start))
    elif start is not None:
        position = _START_POSITIONS.get(start.lower())
        if position is None:
            raise ValueError(f"start must be 'new', 'beginning' or a datetime; got {start!r}")
        message.start_position = position
    return pb.CreateSubscriptionRequest(subscription=message)


def update_subscription_request(
    name: str, changes: SubscriptionChanges
) -> pb.UpdateSubscriptionRequest:
    """An UpdateSubscription request changing exactly the settings given.

    Raises:
        TypeError: A key is not an updatable setting.
        ValueError: No setting was given, or a duration cannot be read.

    """
    if not changes:
        raise ValueError(f"nothing to update; give one of {', '.join(SETTING_PATHS)}")
    message = pb.Subscription(name=name)
    mask = _apply_settings(message, changes)
    return pb.UpdateSubscriptionRequest(subscription=message, update_mask=mask)


def subscription_from_proto(message: pb.Subscription) -> Subscription:
    """A Subscription from its proto form."""
    policy = message.retry_policy
    return Subscription(
        name=message.name,
        filter=tuple(message.filter),
        ack_deadline=message.ack_deadline.ToTimedelta(),
        max_attempts=message.max_attempts,
        min_backoff=policy.min_backoff.ToTimedelta(),
        max_backoff=policy.max_backoff.ToTimedelta(),
        max_in_flight=message.max_in_flight or None,
        ordered=message.ordered,
        retention=message.retention.ToTimedelta(),
        create_time=_optional_time(message, "create_time"),
        max_age=message.max_age.ToTimedelta() if message.HasField("max_age") else None,
        retry_delays=tuple(delay.ToTimedelta() for delay in policy.delays),
        max_in_flight_per_key=message.max_in_flight_per_key or None,
        key_header=message.key_header or None,
    )


# -- consuming -----------------------------------------------------------------


def subscribe_request(
    subscription: str, *, max_outstanding: int, max_batch_size: int, consumer_name: str
) -> pb.SubscribeRequest:
    """A Subscribe request that attaches a consumer to a durable subscription."""
    return pb.SubscribeRequest(
        subscription=subscription,
        max_outstanding=max_outstanding,
        max_batch_size=max_batch_size,
        consumer_name=consumer_name,
        json_as_binary=True,
    )


def tail_request(filter: str | Sequence[str]) -> pb.SubscribeRequest:
    """A Subscribe request for an ephemeral tail of new events matching `filter`."""
    return pb.SubscribeRequest(filter=_filters(filter), json_as_binary=True)


def message_from_delivery(delivery: pb.Delivery) -> Message:
    """A Message from one delivery of a stream."""
    return Message(
        ack_id=delivery.ack_id,
        event_id=delivery.event_id,
        name=delivery.name,
        data=_payload(delivery),
        content_type=delivery.content_type,
        headers=dict(delivery.headers),
        publish_time=from_timestamp(delivery.publish_time),
        delay=delivery.delay.ToTimedelta(),
        priority=delivery.priority,
        attempt=delivery.attempt,
        ack_deadline=_optional_time(delivery, "ack_deadline"),
        subscription=delivery.subscription,
        ordering_key=delivery.ordering_key or None,
        dedup_id=delivery.dedup_id or None,
    )


def messages(response: pb.SubscribeResponse) -> list[Message]:
    """The Messages of one stream message, in order."""
    return [message_from_delivery(d) for d in response.deliveries]


def ack_id_chunks(ack_ids: AckIds) -> list[list[str]]:
    """Ack ids (from strings or Messages) in chunks the broker takes in one call; none if empty."""
    items: Iterable[str | Message] = [ack_ids] if isinstance(ack_ids, str | Message) else ack_ids
    ids = [item.ack_id if isinstance(item, Message) else item for item in items]
    return [ids[i : i + ACK_IDS_PER_CALL] for i in range(0, len(ids), ACK_IDS_PER_CALL)]


def ack_requests(ack_ids: AckIds) -> list[pb.AckRequest]:
    """Ack requests for the ids, as few as the broker's per-call limit allows."""
    return [pb.AckRequest(ack_ids=chunk) for chunk in ack_id_chunks(ack_ids)]


def nack_requests(
    ack_ids: AckIds, *, delay: DurationLike | None, terminal: bool, error: str
) -> list[pb.NackRequest]:
    """Nack requests: retry after `delay` (default: the subscription's backoff) or dead-letter."""
    delay_message = None
    if delay is not None:
        delay_message = to_duration(parse_duration(delay, name="delay", limits=durations.ANY_DELAY))
    return [
        pb.NackRequest(ack_ids=chunk, delay=delay_message, terminal=terminal, error=error)
        for chunk in ack_id_chunks(ack_ids)
    ]


def extend_requests(ack_ids: AckIds, extension: DurationLike) -> list[pb.ExtendAckDeadlineRequest]:
    """ExtendAckDeadline requests: each lease then ends `extension` from now."""
    length = parse_duration(extension, name="extension", limits=durations.ACK_DEADLINE)
    extension_message = to_duration(length)
    return [
        pb.ExtendAckDeadlineRequest(ack_ids=chunk, extension=extension_message)
        for chunk in ack_id_chunks(ack_ids)
    ]


class _SettleResponse(Protocol):
    @property
    def not_applied_ack_ids(self) -> Sequence[str]: ...


def ack_result(responses: Iterable[_SettleResponse]) -> AckResult:
    """One AckResult from the responses of the chunked Ack, Nack or Extend calls."""
    return AckResult(
        not_applied=tuple(ack_id for r in responses for ack_id in r.not_applied_ack_ids)
    )


# -- inspection ----------------------------------------------------------------


def _enum_name(wrapper: Any, value: int, prefix: str) -> str:
    try:
        name: str = wrapper.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def _attempt(message: pb.Attempt) -> Attempt:
    return Attempt(
        attempt=message.attempt,
        delivered_time=_optional_time(message, "delivered_time"),
        end_time=_optional_time(message, "end_time"),
        consumer=message.consumer,
        outcome=_enum_name(pb.AttemptOutcome, message.outcome, "ATTEMPT_OUTCOME_"),
        error=message.error,
    )


def _dead_reason_name(value: int) -> str:
    return _enum_name(pb.DeadReason, value, "DEAD_REASON_")


def _delivery_status(message: pb.DeliveryStatus) -> DeliveryStatus:
    dead = message.dead_reason != pb.DEAD_REASON_UNSPECIFIED
    return DeliveryStatus(
        subscription=message.subscription,
        state=_enum_name(pb.DeliveryState, message.state, "DELIVERY_STATE_"),
        attempts=message.attempts,
        next_time=_optional_time(message, "next_time"),
        consumer=message.consumer,
        dead_reason=_dead_reason_name(message.dead_reason) if dead else None,
        last_error=message.last_error,
        reason=message.reason,
        history=tuple(_attempt(a) for a in message.history),
        update_time=_optional_time(message, "update_time"),
        key=message.key or None,
        key_wait=(
            KeyWait(message.key_wait.key, message.key_wait.in_flight, message.key_wait.limit)
            if message.HasField("key_wait")
            else None
        ),
    )


def event_info(response: pb.GetEventResponse) -> EventInfo:
    """An EventInfo from a GetEvent response."""
    stored = response.event
    event = stored.event
    return EventInfo(
        event_id=stored.event_id,
        name=event.name,
        data=_payload(event),
        content_type=event.content_type,
        headers=dict(event.headers),
        publish_time=_optional_time(stored, "publish_time"),
        delay=event.delay.ToTimedelta(),
        priority=event.priority,
        ordering_key=event.ordering_key or None,
        dedup_id=event.id or None,
        deliveries=tuple(_delivery_status(d) for d in response.deliveries),
        trace_id=stored.trace_id,
    )


# -- dead letters and seek ------------------------------------------------------


def dead_reason(value: str | None) -> pb.DeadReason.ValueType:
    """The proto DeadReason of a client name; None (any reason) is UNSPECIFIED.

    Raises:
        ValueError: The name is not a dead reason.

    """
    if value is None:
        return pb.DEAD_REASON_UNSPECIFIED
    reason = DEAD_REASONS.get(value.lower())
    if reason is None:
        raise ValueError(f"reason must be one of {', '.join(DEAD_REASONS)}; got {value!r}")
    return reason


def list_dead_letters_request(
    subscription: str,
    *,
    name: str | None,
    reason: str | None,
    page_size: int,
    page_token: str | None,
) -> pb.ListDeadLettersRequest:
    """A ListDeadLetters request for one page, filtered by event name and dead reason.

    Raises:
        ValueError: `reason` is not a dead reason.

    """
    return pb.ListDeadLettersRequest(
        subscription=subscription,
        page_size=page_size,
        page_token=page_token or "",
        name=name or "",
        reason=dead_reason(reason),
    )


def _dead_letter_info(stored: pb.StoredEvent, delivery: pb.DeliveryStatus) -> DeadLetterInfo:
    event = stored.event
    history = tuple(_attempt(a) for a in delivery.history)
    return DeadLetterInfo(
        event_id=stored.event_id,
        name=event.name,
        data=_payload(event),
        content_type=event.content_type,
        headers=dict(event.headers),
        publish_time=_optional_time(stored, "publish_time"),
        subscription=delivery.subscription,
        reason=_dead_reason_name(delivery.dead_reason),
        description=delivery.reason,
        last_error=delivery.last_error,
        attempts=delivery.attempts,
        dead_time=_optional_time(delivery, "update_time"),
        history=history,
        priority=event.priority,
        ordering_key=event.ordering_key or None,
        dedup_id=event.id or None,
        trace_id=stored.trace_id,
    )


def dead_letter_page(response: pb.ListDeadLettersResponse) -> DeadLetterPage:
    """A DeadLetterPage from a ListDeadLetters response."""
    return DeadLetterPage(
        items=tuple(_dead_letter_info(d.event, d.delivery) for d in response.dead_letters),
        next_page_token=response.next_page_token or None,
    )


def dead_letter_from_event(
    response: pb.GetEventResponse, subscription: str
) -> DeadLetterInfo | None:
    """The event's dead letter in `subscription`, or None when it is not dead there."""
    for delivery in response.deliveries:
        if delivery.subscription == subscription and delivery.state == pb.DELIVERY_STATE_DEAD:
            return _dead_letter_info(response.event, delivery)
    return None


def redrive_requests(
    subscription: str,
    *,
    event_ids: Iterable[str] | None,
    name: str | None,
    reason: str | None,
    all: bool,
) -> list[pb.RedriveDeadLettersRequest]:
    """RedriveDeadLetters requests: the events named, in chunks, or `all` matching the filters.

    An empty `event_ids` gives no request at all (never "everything").

    Raises:
        ValueError: `reason` is not a dead reason, or `event_ids` and `all` are both
            given or both left out (nothing is sent).

    """
    if event_ids is None and not all:
        raise ValueError(
            "name the event_ids to redrive, or pass all=True (narrowed by name and reason if given)"
        )
    if event_ids is not None and all:
        raise ValueError("give event_ids or all=True, not both")
    reason_value = dead_reason(reason)
    if all:
        chunks: list[list[str]] = [[]]
    else:
        ids = [event_ids] if isinstance(event_ids, str) else list(event_ids or ())
        chunks = [
            ids[i : i + REDRIVE_IDS_PER_CALL] for i in range(0, len(ids), REDRIVE_IDS_PER_CALL)
        ]
    return [
        pb.RedriveDeadLettersRequest(
            subscription=subscription,
            event_ids=chunk,
            name=name or "",
            reason=reason_value,
            all=all,
        )
        for chunk in chunks
    ]


def redriven_count(responses: Iterable[pb.RedriveDeadLettersResponse]) -> int:
    """How many dead letters the chunked RedriveDeadLetters calls made ready again."""
    return sum(response.redriven_count for response in responses)


def seek_result(response: pb.SeekResponse) -> SeekResult:
    """A SeekResult from a Seek response."""
    return SeekResult(replayed=response.replayed, skipped=response.skipped)


def seek_request(subscription: str, to: datetime) -> pb.SeekRequest:
    """A Seek request to a time (naive means UTC).

    Raises:
        TypeError: `to` is not a datetime.

    """
    if not isinstance(to, datetime):
        raise TypeError(f"seek takes a datetime; got {type(to).__name__}")
    return pb.SeekRequest(subscription=subscription, time=to_timestamp(to))


def stats(response: pb.GetStatsResponse) -> Stats:
    """Stats from a GetStats response."""
    return Stats(
        subscriptions=tuple(
            SubscriptionStats(
                subscription=s.subscription,
                scheduled=s.scheduled,
                ready=s.ready,
                in_flight=s.in_flight,
                acked=s.acked,
                dead=s.dead,
                consumers=s.consumers,
                ack_rate=s.ack_rate,
                delivery_rate=s.delivery_rate,
                oldest_waiting_time=_optional_time(s, "oldest_waiting_time"),
            )
            for s in response.subscriptions
        ),
        events=response.events,
        publish_rate=response.publish_rate,
    )
