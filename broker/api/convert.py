"""Proto messages to domain objects and back: the one place the two meet.

Requests are validated as they are converted: each check names the field
path (`events[3].priority`) and the limit, and every violation of a request is
reported at once, before anything is stored.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from broker import config, trace_context
from broker.config import Settings
from broker.domain import (
    BINARY_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    US_PER_S,
    AttemptRecord,
    DeliveryInfo,
    EventDraft,
    LeasedDelivery,
    StartPosition,
    StoredEvent,
    Subscription,
    SubscriptionCounts,
)
from broker.errors import FieldViolation, invalid_argument, too_large
from broker.ids import new_event_id
from broker.names import FILTERS_MAX_COUNT, filter_error, normalize_filters, normalize_name
from eventbroker.v1 import broker_pb2 as pb

NAME_RULE = "must be 1 to 255 characters of letters, digits and . _ - / :"
_MAX_DELAY_US = config.MAX_DELAY_S * US_PER_S
_SAFE_INTEGER = 2**53


# -- time ----------------------------------------------------------------------


def duration_us(value: duration_pb2.Duration) -> int:
    """A Duration in microseconds."""
    return value.seconds * US_PER_S + value.nanos // 1000


def to_duration(us: int) -> duration_pb2.Duration:
    """Microseconds as a Duration."""
    seconds, rest = divmod(us, US_PER_S)
    return duration_pb2.Duration(seconds=seconds, nanos=rest * 1000)


def timestamp_us(value: timestamp_pb2.Timestamp) -> int:
    """A Timestamp in microseconds since the epoch."""
    return value.seconds * US_PER_S + value.nanos // 1000


def to_timestamp(us: int) -> timestamp_pb2.Timestamp:
    """Microseconds since the epoch as a Timestamp."""
    seconds, rest = divmod(us, US_PER_S)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1000)


# -- JSON values ---------------------------------------------------------------


class _NotJsonError(ValueError):
    pass


def value_to_python(value: struct_pb2.Value) -> Any:
    """A protobuf Value as plain Python; whole numbers stay integers.

    Recursive: check the depth first (`value_deeper_than`).
    """
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "number_value":
        number = value.number_value
        if math.isnan(number) or math.isinf(number):
            raise _NotJsonError("NaN and Infinity are not JSON")
        if number.is_integer() and abs(number) < _SAFE_INTEGER:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: value_to_python(v) for k, v in value.struct_value.fields.items()}
    return [value_to_python(v) for v in value.list_value.values]


#: How deep event data may nest, in the words of every refusal (gRPC and HTTP alike).
JSON_DEPTH_RULE = f"arrays and objects may nest at most {config.JSON_DEPTH_MAX} levels deep"
#: A JSON string, removed whole (brackets and all) before the depth is measured.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_OBJECT_AS_ARRAY = str.maketrans("{}", "[]")


def json_text_deeper_than(text: str, limit: int) -> bool:
    """Whether JSON text nests arrays and objects more than `limit` levels, without parsing it.

    Run before a parser sees the text, so that none recurses past the limit
    (Python's json module raises RecursionError at about 1,000 levels). Strings
    are removed, then everything but brackets; each round then removes the
    innermost empty pairs, one level per round, so text within the limit is gone
    after `limit` rounds. Every step runs in C: a 4 MiB body costs milliseconds.
    Text that is not JSON may count as too deep, which refuses it all the same.
    """
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case
    brackets = _NOT_BRACKETS.sub("", _JSON_STRING.sub("", text)).translate(_OBJECT_AS_ARRAY)
    for _ in range(limit):
        if "[" not in brackets:
            return False
        brackets = brackets.replace("[]", "")
    return "[" in brackets


def value_deeper_than(value: struct_pb2.Value, limit: int) -> bool:
    """Whether a protobuf Value nests lists and structs more than `limit` levels (iteratively)."""
    stack: list[tuple[struct_pb2.Value, int]] = [(value, 0)]  # a value and the levels above it
    while stack:
        item, above = stack.pop()
        kind = item.WhichOneof("kind")
        if kind == "struct_value":
            children: Any = item.struct_value.fields.values()
        elif kind == "list_value":
            children = item.list_value.values
        else:
            continue
        if above >= limit:
            return True
        stack.extend((child, above + 1) for child in children)
    return False


def _reject_constant(name: str) -> Any:
    raise _NotJsonError(f"{name} is not JSON")


def _check_json(data: bytes) -> None:
    """Raise ValueError unless `data` is one JSON value.

    orjson checks 1 KiB in about a microsecond, the standard library in about
    fifteen; what orjson refuses is looked at again by the standard library,
    which accepts a few things orjson does not (integers beyond 64 bits) and
    words its errors the way the API reports them.
    """
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        json.loads(data, parse_constant=_reject_constant)


def _is_json_type(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == JSON_CONTENT_TYPE


# -- strings -------------------------------------------------------------------

#: What a string field with a NUL character is told: PostgreSQL's text cannot hold one.
NUL_RULE = "must not contain NUL characters"


def nul_violations(message: Message, path: str = "") -> list[FieldViolation]:
    """The string fields of a request (nested too) that hold a NUL character.

    Names, ids and filters are stored or looked up as text, which PostgreSQL
    cannot hold a NUL in: a request carrying one is refused naming the field,
    not failed inside the broker. Maps and protobuf's own types (an event's
    headers and JSON data, stored as escaped JSON) are left alone.
    """
    found: list[FieldViolation] = []
    for field, value in message.ListFields():
        where = f"{path}.{field.name}" if path else field.name
        if field.type == field.TYPE_STRING:
            if field.is_repeated:
                found.extend(
                    FieldViolation(f"{where}[{i}]", NUL_RULE)
                    for i, item in enumerate(value)
                    if "\x00" in item
                )
            elif "\x00" in value:
                found.append(FieldViolation(where, NUL_RULE))
        elif field.type == field.TYPE_MESSAGE:
            kind = field.message_type
            if kind is None or kind.GetOptions().map_entry:
                continue
            if kind.full_name.startswith("google.protobuf."):
                continue
            items = enumerate(value) if field.is_repeated else [(None, value)]
            for i, item in items:
                found.extend(nul_violations(item, where if i is None else f"{where}[{i}]"))
    return found


# -- events --------------------------------------------------------------------


def draft_from_event(
    event: pb.Event, path: str, settings: Settings, now_us: int, violations: list[FieldViolation]
) -> EventDraft | None:
    """Validate one published event into a draft; add violations and return None if bad."""
    before = len(violations)

    def bad(field: str, description: str) -> None:
        violations.append(FieldViolation(f"{path}.{field}", description))

    name = normalize_name(event.name)
    if name is None:
        bad("name", NAME_RULE + (" (it is empty)" if not event.name else ""))
    if len(event.content_type) > config.CONTENT_TYPE_MAX_LENGTH:
        bad("content_type", f"at most {config.CONTENT_TYPE_MAX_LENGTH} characters")
    payload, content_type = _payload(event, bad)
    headers = dict(event.headers)
    if len(headers) > config.HEADERS_MAX_COUNT:
        bad("headers", f"at most {config.HEADERS_MAX_COUNT} headers; got {len(headers)}")
    if any(not key for key in headers):
        bad("headers", "header names must not be empty")
    if len(event.id) > config.DEDUP_ID_MAX_LENGTH:
        bad("id", f"at most {config.DEDUP_ID_MAX_LENGTH} characters; got {len(event.id)}")
    if not config.PRIORITY_MIN <= event.priority <= config.PRIORITY_MAX:
        bad(
            "priority",
            f"must be between {config.PRIORITY_MIN} and {config.PRIORITY_MAX}; "
            f"got {event.priority}",
        )
    if len(event.ordering_key) > config.ORDERING_KEY_MAX_LENGTH:
        bad("ordering_key", f"at most {config.ORDERING_KEY_MAX_LENGTH} characters")
    elif "\x00" in event.ordering_key:
        bad("ordering_key", NUL_RULE)
    if "\x00" in event.id:
        bad("id", NUL_RULE)
    if "\x00" in event.content_type:
        bad("content_type", NUL_RULE)
    deliver_at, delay = _schedule(event, now_us, bad)
    if len(violations) > before or name is None or payload is None:
        return None
    size = len(name) + len(payload) + sum(len(k) + len(v) for k, v in headers.items())
    if size > settings.event_max_bytes:
        violations.append(
            FieldViolation(
                path,
                f"event is {size} bytes (name, data and headers); "
                f"the limit is {settings.event_max_bytes} bytes",
                too_large=True,
            )
        )
        return None
    return EventDraft(
        event_id=new_event_id(now_us),
        name=name,
        payload=payload,
        content_type=content_type,
        headers=headers,
        dedup_id=event.id or None,
        priority=event.priority,
        ordering_key=event.ordering_key or None,
        deliver_at_us=deliver_at,
        delay_us=delay,
    )


def _payload(event: pb.Event, bad: Any) -> tuple[bytes | None, str]:
    kind = event.WhichOneof("payload")
    if kind == "binary_data":
        content_type = event.content_type or BINARY_CONTENT_TYPE
        if _is_json_type(content_type):
            raw = event.binary_data
            try:
                # Cheap first: too few brackets to be too deep (in any UTF encoding).
                if raw.count(b"[") + raw.count(b"{") > config.JSON_DEPTH_MAX:
                    # Decoded as json.loads decodes bytes (UTF-8, -16 or -32), then measured.
                    text = raw.decode(json.detect_encoding(raw), "surrogatepass")
                    if json_text_deeper_than(text, config.JSON_DEPTH_MAX):
                        bad("binary_data", f"JSON nested too deep: {JSON_DEPTH_RULE}")
                        return None, content_type
                _check_json(raw)
            except (ValueError, UnicodeDecodeError) as error:
                bad(
                    "binary_data",
                    f"content type is {content_type} but the data is not JSON: {error}",
                )
                return None, content_type
            return raw, JSON_CONTENT_TYPE
        return event.binary_data, content_type
    if event.content_type and not _is_json_type(event.content_type):
        bad("content_type", "JSON data is application/json; use binary_data for other types")
        return None, JSON_CONTENT_TYPE
    if kind == "data" and value_deeper_than(event.data, config.JSON_DEPTH_MAX):
        bad("data", f"nested too deep: {JSON_DEPTH_RULE}")
        return None, JSON_CONTENT_TYPE
    try:
        data = value_to_python(event.data) if kind == "data" else None
    except _NotJsonError as error:
        bad("data", str(error))
        return None, JSON_CONTENT_TYPE
    return json.dumps(data, separators=(",", ":")).encode(), JSON_CONTENT_TYPE


def _schedule(event: pb.Event, now_us: int, bad: Any) -> tuple[int, int]:
    kind = event.WhichOneof("schedule")
    if kind == "delay":
        delay = duration_us(event.delay)
        if delay < 0:
            bad("delay", "must not be negative")
            return now_us, 0
        if delay > _MAX_DELAY_US:
            bad(
                "delay",
                f"must be at most one year ({config.MAX_DELAY_S} s); got {delay // US_PER_S} s",
            )
            return now_us, 0
        return now_us + delay, delay
    if kind == "deliver_at":
        at = timestamp_us(event.deliver_at)
        if at - now_us > _MAX_DELAY_US:
            bad("deliver_at", "must be at most one year ahead")
            return now_us, 0
        return max(at, now_us), max(at - now_us, 0)
    return now_us, 0


def drafts_from_batch(
    events: Sequence[pb.Event], byte_size: int, settings: Settings, now_us: int
) -> list[EventDraft]:
    """Validate a batch: all events good and within the limits, or one error naming each bad one."""
    if not events:
        raise invalid_argument([FieldViolation("events", "at least one event is required")])
    if len(events) > settings.batch_max_events:
        raise invalid_argument(
            [
                FieldViolation(
                    "events",
                    f"{len(events)} events; the limit is {settings.batch_max_events} per batch",
                )
            ],
            reason="BATCH_TOO_LARGE",
        )
    if byte_size > settings.batch_max_bytes:
        raise too_large(
            [
                FieldViolation(
                    "events",
                    f"batch is {byte_size} bytes; the limit is {settings.batch_max_bytes} bytes",
                    too_large=True,
                )
            ]
        )
    violations: list[FieldViolation] = []
    drafts = [
        draft_from_event(e, f"events[{i}]", settings, now_us, violations)
        for i, e in enumerate(events)
    ]
    _raise_violations(violations)
    return [d for d in drafts if d is not None]


def draft_from_publish(request: pb.PublishRequest, settings: Settings, now_us: int) -> EventDraft:
    """Validate a single publish."""
    violations: list[FieldViolation] = []
    if not request.HasField("event"):
        violations.append(FieldViolation("event", "is required"))
        _raise_violations(violations)
    draft = draft_from_event(request.event, "event", settings, now_us, violations)
    _raise_violations(violations)
    assert draft is not None
    return draft


def _raise_violations(violations: list[FieldViolation]) -> None:
    if not violations:
        return
    if any(v.too_large for v in violations):
        raise too_large(violations)
    raise invalid_argument(violations)


def stored_event_to_proto(event: StoredEvent, *, json_as_binary: bool = False) -> pb.Event:
    """A stored event as published, with its payload in the form asked for."""
    message = pb.Event(
        name=event.name,
        content_type=event.content_type,
        headers=dict(event.headers),
        id=event.dedup_id or "",
        priority=event.priority,
        ordering_key=event.ordering_key or "",
    )
    if event.delay_us:
        message.delay.CopyFrom(to_duration(event.delay_us))
    if event.content_type == JSON_CONTENT_TYPE and not json_as_binary:
        json_format.ParseDict(json.loads(event.payload), message.data)
    else:
        message.binary_data = event.payload
    return message


def delivery_to_proto(delivery: LeasedDelivery, *, json_as_binary: bool) -> pb.Delivery:
    """A leased delivery as the consumer receives it."""
    return _delivery(
        delivery.event,
        json_as_binary=json_as_binary,
        ack_id=delivery.ack_id,
        attempt=delivery.attempt,
        ack_deadline_us=delivery.ack_deadline_us,
        subscription=delivery.subscription,
    )


def tail_delivery_to_proto(event: StoredEvent, *, json_as_binary: bool) -> pb.Delivery:
    """An event seen by an ephemeral tail: no ack id, nothing to acknowledge."""
    return _delivery(
        event,
        json_as_binary=json_as_binary,
        ack_id="",
        attempt=1,
        ack_deadline_us=None,
        subscription="",
    )


#: Events whose JSON data, parsed into a `Struct`, is remembered: an event fanned out to
#: several subscriptions is parsed once (parsing is most of building a delivery).
JSON_DATA_CACHE_MAX = 1024
_json_data: OrderedDict[str, struct_pb2.Value] = OrderedDict()


def _delivery(
    event: StoredEvent,
    *,
    json_as_binary: bool,
    ack_id: str,
    attempt: int,
    ack_deadline_us: int | None,
    subscription: str,
) -> pb.Delivery:
    message = pb.Delivery(
        ack_id=ack_id,
        event_id=event.event_id,
        name=event.name,
        content_type=event.content_type,
        priority=event.priority,
        attempt=attempt,
        subscription=subscription,
        ordering_key=event.ordering_key or "",
        dedup_id=event.dedup_id or "",
    )
    if event.headers:
        message.headers.update(event.headers)
    message.publish_time.FromMicroseconds(event.published_at_us)
    message.delay.FromMicroseconds(event.delay_us)
    if ack_deadline_us is not None:
        message.ack_deadline.FromMicroseconds(ack_deadline_us)
    if event.content_type == JSON_CONTENT_TYPE and not json_as_binary:
        message.data.CopyFrom(_json_value(event))
    else:
        message.binary_data = event.payload
    return message


def _json_value(event: StoredEvent) -> struct_pb2.Value:
    """An event's JSON data as a `Value`, parsed once while it is remembered."""
    value = _json_data.get(event.event_id)
    if value is None:
        value = struct_pb2.Value()
        json_format.ParseDict(json.loads(event.payload), value)
        if len(_json_data) >= JSON_DATA_CACHE_MAX:
            _json_data.popitem(last=False)
        _json_data[event.event_id] = value
    return value


def stored_event_message(event: StoredEvent) -> pb.StoredEvent:
    """A stored event for GetEvent and dead letters, with the trace id its headers carry."""
    return pb.StoredEvent(
        event_id=event.event_id,
        event=stored_event_to_proto(event),
        publish_time=to_timestamp(event.published_at_us),
        trace_id=trace_context.trace_id(event.headers),
    )


# -- subscriptions -------------------------------------------------------------

_DEFAULTS_US = {
    "ack_deadline": config.ACK_DEADLINE_DEFAULT_S * US_PER_S,
    "min_backoff": config.MIN_BACKOFF_DEFAULT_S * US_PER_S,
    "max_backoff": config.MAX_BACKOFF_DEFAULT_S * US_PER_S,
    "retention": config.RETENTION_DEFAULT_S * US_PER_S,
}
UPDATABLE_FIELDS = frozenset(
    {
        "filter",
        "ack_deadline",
        "max_attempts",
        "retry_policy",
        "retry_policy.min_backoff",
        "retry_policy.max_backoff",
        "retry_policy.delays",
        "max_in_flight",
        "max_in_flight_per_key",
        "key_header",
        "retention",
        "max_age",
    }
)
RETRY_TABLE_MAX = 100


def subscription_from_proto(
    message: pb.Subscription, now_us: int, path: str = "subscription"
) -> Subscription:
    """Validate a subscription's settings, filling in defaults for unset ones."""
    violations: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        violations.append(FieldViolation(f"{path}.{field}", description))

    if normalize_name(message.name) is None or message.name != message.name.lower():
        bad("name", NAME_RULE + " (lower case)")
    if not message.filter:
        bad("filter", "at least one name pattern is required (e.g. 'user.*' or 'orders.>')")
    if len(message.filter) > FILTERS_MAX_COUNT:
        bad("filter", f"at most {FILTERS_MAX_COUNT} patterns")
    for index, pattern in enumerate(message.filter):
        error = filter_error(pattern)
        if error is not None:
            bad(f"filter[{index}]", error)

    def duration_or_default(field: str, holder: Any, name: str) -> int:
        return duration_us(getattr(holder, name)) if holder.HasField(name) else _DEFAULTS_US[field]

    ack_deadline = duration_or_default("ack_deadline", message, "ack_deadline")
    if (
        not config.ACK_DEADLINE_MIN_S * US_PER_S
        <= ack_deadline
        <= config.ACK_DEADLINE_MAX_S * US_PER_S
    ):
        bad(
            "ack_deadline",
            f"must be between {config.ACK_DEADLINE_MIN_S} s and {config.ACK_DEADLINE_MAX_S} s",
        )
    max_attempts = message.max_attempts or config.MAX_ATTEMPTS_DEFAULT
    if not 1 <= max_attempts <= config.MAX_ATTEMPTS_LIMIT:
        bad("max_attempts", f"must be between 1 and {config.MAX_ATTEMPTS_LIMIT}")
    policy = message.retry_policy
    min_backoff = duration_or_default("min_backoff", policy, "min_backoff")
    max_backoff = duration_or_default("max_backoff", policy, "max_backoff")
    if min_backoff < 0:
        bad("retry_policy.min_backoff", "must not be negative")
    if max_backoff < min_backoff:
        bad("retry_policy.max_backoff", "must not be less than min_backoff")
    if max_backoff > config.MAX_DELAY_S * US_PER_S:
        bad("retry_policy.max_backoff", "must be at most one year")
    delays = tuple(duration_us(d) for d in policy.delays)
    if len(delays) > RETRY_TABLE_MAX:
        bad("retry_policy.delays", f"at most {RETRY_TABLE_MAX} entries")
    if any(not 0 <= d <= _MAX_DELAY_US for d in delays):
        bad("retry_policy.delays", "each delay must be between 0 and one year")
    max_age = duration_us(message.max_age) if message.HasField("max_age") else 0
    if message.HasField("max_age") and max_age < US_PER_S:
        bad("max_age", "must be at least 1 s (leave it unset for no maximum age)")
    if message.max_in_flight < 0:
        bad("max_in_flight", "must not be negative (0 means unlimited)")
    _check_key_settings(message, bad)
    retention = duration_or_default("retention", message, "retention")
    if retention < US_PER_S:
        bad("retention", "must be at least 1 s")
    start = StartPosition.NEW
    start_time = 0
    if message.start_position == pb.START_POSITION_BEGINNING:
        start = StartPosition.BEGINNING
    elif message.start_position == pb.START_POSITION_TIME:
        start = StartPosition.TIME
        if not message.HasField("start_time"):
            bad("start_time", "is required with START_POSITION_TIME")
        start_time = timestamp_us(message.start_time)
    elif message.start_position not in (pb.START_POSITION_UNSPECIFIED, pb.START_POSITION_NEW):
        bad("start_position", f"unknown value {message.start_position}")
    _raise_violations(violations)
    return Subscription(
        name=message.name,
        filters=normalize_filters(message.filter),
        ack_deadline_us=ack_deadline,
        max_attempts=max_attempts,
        min_backoff_us=min_backoff,
        max_backoff_us=max_backoff,
        max_in_flight=message.max_in_flight,
        ordered=message.ordered,
        retention_us=retention,
        max_in_flight_per_key=message.max_in_flight_per_key,
        key_header=message.key_header,
        start_position=start,
        start_time_us=start_time,
        created_at_us=now_us,
        max_age_us=max_age,
        retry_delays_us=delays,
    )


def _check_key_settings(message: pb.Subscription, bad: Callable[[str, str], None]) -> None:
    """The settings of keys: the cap per key, and the header keys come from."""
    cap_limit = config.MAX_IN_FLIGHT_PER_KEY_LIMIT
    cap = message.max_in_flight_per_key
    if not 0 <= cap <= cap_limit:
        bad("max_in_flight_per_key", f"must be between 0 and {cap_limit} (0 means no cap)")
    elif message.ordered and cap > 1:
        why = (
            f"ordered delivers one event of a key at a time, so max_in_flight_per_key {cap}"
            " cannot go with it: with ordered, max_in_flight_per_key must be 0 or 1"
        )
        bad("max_in_flight_per_key", why)
        bad("ordered", why)
    header = message.key_header
    if len(header) > config.KEY_HEADER_MAX_LENGTH:
        bad("key_header", f"at most {config.KEY_HEADER_MAX_LENGTH} characters")
    elif "\x00" in header:
        bad("key_header", "must not contain NUL characters")
    elif header and not message.ordered and cap == 0:
        bad(
            "key_header",
            "names the header events are keyed by, which only ordered or"
            " max_in_flight_per_key use: set one of them, or leave key_header empty",
        )


def subscription_to_proto(sub: Subscription) -> pb.Subscription:
    """A subscription with every setting filled in."""
    return pb.Subscription(
        name=sub.name,
        filter=list(sub.filters),
        ack_deadline=to_duration(sub.ack_deadline_us),
        max_attempts=sub.max_attempts,
        retry_policy=pb.RetryPolicy(
            min_backoff=to_duration(sub.min_backoff_us),
            max_backoff=to_duration(sub.max_backoff_us),
            delays=[to_duration(d) for d in sub.retry_delays_us],
        ),
        max_age=to_duration(sub.max_age_us) if sub.max_age_us else None,
        max_in_flight=sub.max_in_flight,
        ordered=sub.ordered,
        max_in_flight_per_key=sub.max_in_flight_per_key,
        key_header=sub.key_header,
        start_position=int(sub.start_position),  # type: ignore[arg-type]
        start_time=to_timestamp(sub.start_time_us) if sub.start_time_us else None,
        retention=to_duration(sub.retention_us),
        create_time=to_timestamp(sub.created_at_us),
    )


def merge_update(
    current: Subscription, message: pb.Subscription, mask: Sequence[str]
) -> pb.Subscription:
    """The current settings with the masked fields taken from the request."""
    unknown = [path for path in mask if path not in UPDATABLE_FIELDS]
    if not mask or unknown:
        raise invalid_argument(
            [
                FieldViolation(
                    "update_mask",
                    (f"unknown or fixed fields {unknown}; " if unknown else "is required; ")
                    + f"updatable: {', '.join(sorted(UPDATABLE_FIELDS))}",
                )
            ]
        )
    merged = subscription_to_proto(current)
    for path in mask:
        if path == "filter":
            del merged.filter[:]
            merged.filter.extend(message.filter)
        elif path == "retry_policy":
            merged.retry_policy.CopyFrom(message.retry_policy)
        elif path == "retry_policy.delays":
            del merged.retry_policy.delays[:]
            merged.retry_policy.delays.extend(message.retry_policy.delays)
        elif path == "max_age":
            if message.HasField("max_age"):
                merged.max_age.CopyFrom(message.max_age)
            else:
                merged.ClearField("max_age")
        elif path.startswith("retry_policy."):
            leaf = path.split(".", 1)[1]
            getattr(merged.retry_policy, leaf).CopyFrom(getattr(message.retry_policy, leaf))
        elif path in ("ack_deadline", "retention"):
            getattr(merged, path).CopyFrom(getattr(message, path))
        else:
            setattr(merged, path, getattr(message, path))
    return merged


# -- inspection ----------------------------------------------------------------


def _attempt_to_proto(record: AttemptRecord) -> pb.Attempt:
    return pb.Attempt(
        attempt=record.attempt,
        delivered_time=to_timestamp(record.delivered_at_us),
        end_time=to_timestamp(record.ended_at_us),
        consumer=record.consumer,
        outcome=int(record.outcome),  # type: ignore[arg-type]
        error=record.error,
    )


def delivery_status_to_proto(info: DeliveryInfo, reason: str) -> pb.DeliveryStatus:
    """A delivery's state in one subscription, with why it is there."""
    message = pb.DeliveryStatus(
        subscription=info.subscription,
        state=int(info.state),  # type: ignore[arg-type]
        attempts=info.attempts,
        consumer=info.consumer,
        dead_reason=int(info.dead_reason),  # type: ignore[arg-type]
        last_error=info.last_error,
        history=[_attempt_to_proto(h) for h in info.history],
        reason=reason,
        key=info.ordering_key or "",
    )
    if info.key_wait is not None:
        wait = info.key_wait
        message.key_wait.CopyFrom(
            pb.KeyWait(key=wait.key, in_flight=wait.in_flight, limit=wait.limit)
        )
    if info.next_time_us is not None:
        message.next_time.CopyFrom(to_timestamp(info.next_time_us))
    if info.updated_at_us is not None:
        message.update_time.CopyFrom(to_timestamp(info.updated_at_us))
    return message


def stats_to_proto(
    counts: SubscriptionCounts, consumers: int, ack_rate: float, delivery_rate: float
) -> pb.SubscriptionStats:
    """One subscription's counts and rates."""
    message = pb.SubscriptionStats(
        subscription=counts.subscription,
        scheduled=counts.scheduled,
        ready=counts.ready,
        in_flight=counts.in_flight,
        acked=counts.acked,
        dead=counts.dead,
        consumers=consumers,
        ack_rate=ack_rate,
        delivery_rate=delivery_rate,
    )
    if counts.oldest_waiting_us is not None:
        message.oldest_waiting_time.CopyFrom(to_timestamp(counts.oldest_waiting_us))
    return message
