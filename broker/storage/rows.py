"""Database rows to domain objects and back: the one place columns meet dataclasses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from broker.delivery.ordering import header_key
from broker.domain import (
    ApiKey,
    AttemptOutcome,
    AttemptRecord,
    DeadReason,
    DeliveryInfo,
    DeliveryState,
    Scope,
    StartPosition,
    StoredEvent,
    Subscription,
)

#: The columns of an event, in the order the statements read and write them.
EVENT_COLUMNS = (
    "id",
    "name",
    "payload",
    "content_type",
    "headers",
    "dedup_id",
    "priority",
    "ordering_key",
    "published_at",
    "deliver_at",
    "delay_us",
)


def event_values(event: StoredEvent) -> tuple[Any, ...]:
    """An event's values in `EVENT_COLUMNS` order."""
    return (
        event.event_id,
        event.name,
        event.payload,
        event.content_type,
        json.dumps(dict(event.headers)) if event.headers else None,
        event.dedup_id,
        event.priority,
        event.ordering_key,
        event.published_at_us,
        event.deliver_at_us,
        event.delay_us,
    )


def event_from_values(values: Sequence[Any]) -> StoredEvent:
    """An event from its values in `EVENT_COLUMNS` order."""
    (
        event_id,
        name,
        payload,
        content_type,
        headers,
        dedup_id,
        priority,
        ordering_key,
        published_at,
        deliver_at,
        delay_us,
    ) = values
    return StoredEvent(
        event_id=event_id,
        name=name,
        payload=bytes(payload),
        content_type=content_type,
        headers=json.loads(headers) if headers else {},
        dedup_id=dedup_id,
        priority=priority,
        ordering_key=ordering_key,
        published_at_us=published_at,
        deliver_at_us=deliver_at,
        delay_us=delay_us,
    )


def api_key_from_row(row: Any) -> ApiKey:
    """An API key from its row."""
    return ApiKey(
        key_id=row.id,
        name=row.name,
        secret_sha256=row.secret_sha256,
        scopes=frozenset(Scope(s) for s in row.scopes.split(",") if s),
        patterns=tuple(row.patterns.split("\n")) if row.patterns else (),
        created_at_us=row.created_at,
        revoked_at_us=row.revoked_at,
        publish_rate=row.publish_rate,
    )


def header_key_of_json(headers: str | None, header: str) -> str | None:
    """An event's key from one of its headers, as stored (JSON text, or NULL for none)."""
    if not headers:
        return None
    return header_key(json.loads(headers), header)


def subscription_from_row(row: Any) -> Subscription:
    """A subscription from its row."""
    return Subscription(
        name=row.name,
        filters=tuple(json.loads(row.filters)),
        ack_deadline_us=row.ack_deadline_us,
        max_attempts=row.max_attempts,
        min_backoff_us=row.min_backoff_us,
        max_backoff_us=row.max_backoff_us,
        max_in_flight=row.max_in_flight,
        ordered=bool(row.ordered),
        retention_us=row.retention_us,
        start_position=StartPosition(row.start_position),
        start_time_us=row.start_time,
        created_at_us=row.created_at,
        id=row.id,
        max_age_us=row.max_age_us,
        retry_delays_us=tuple(json.loads(row.retry_delays)) if row.retry_delays else (),
        max_in_flight_per_key=row.max_in_flight_per_key,
        key_header=row.key_header,
    )


def subscription_values(sub: Subscription) -> dict[str, Any]:
    """A subscription's column values (all but its id)."""
    return {
        "name": sub.name,
        "filters": json.dumps(list(sub.filters)),
        "ack_deadline_us": sub.ack_deadline_us,
        "max_attempts": sub.max_attempts,
        "min_backoff_us": sub.min_backoff_us,
        "max_backoff_us": sub.max_backoff_us,
        "max_in_flight": sub.max_in_flight,
        "ordered": sub.ordered,
        "retention_us": sub.retention_us,
        "start_position": int(sub.start_position),
        "start_time": sub.start_time_us,
        "created_at": sub.created_at_us,
        "max_age_us": sub.max_age_us,
        "retry_delays": json.dumps(list(sub.retry_delays_us)) if sub.retry_delays_us else None,
        "max_in_flight_per_key": sub.max_in_flight_per_key,
        "key_header": sub.key_header,
    }


def delivery_info_from_row(row: Any) -> DeliveryInfo:
    """An event's delivery in one subscription, from its row (with `subscription_name`)."""
    state = DeliveryState(row.state)
    next_time: int | None = None
    if state in (DeliveryState.SCHEDULED, DeliveryState.READY):
        next_time = row.ready_at
    elif state is DeliveryState.IN_FLIGHT:
        next_time = row.lease_expires_at
    return DeliveryInfo(
        subscription=row.subscription_name,
        state=state,
        attempts=row.attempt,
        next_time_us=next_time,
        consumer=row.consumer or "",
        dead_reason=DeadReason(row.dead_reason),
        last_error=row.last_error or "",
        history=tuple(history_from_json(row.history)),
        ordering_key=row.ordering_key,
        updated_at_us=row.updated_at,
    )


def history_from_json(text: str | None) -> list[AttemptRecord]:
    """A delivery's past attempts, from its JSON column."""
    if not text:
        return []
    return [
        AttemptRecord(
            attempt=item["attempt"],
            delivered_at_us=item["delivered_at"],
            ended_at_us=item["ended_at"],
            consumer=item["consumer"],
            outcome=AttemptOutcome(item["outcome"]),
            error=item.get("error", ""),
        )
        for item in json.loads(text)
    ]


def history_to_json(history: Sequence[AttemptRecord]) -> str | None:
    """A delivery's past attempts as its JSON column (None for none)."""
    if not history:
        return None
    return json.dumps(
        [
            {
                "attempt": h.attempt,
                "delivered_at": h.delivered_at_us,
                "ended_at": h.ended_at_us,
                "consumer": h.consumer,
                "outcome": int(h.outcome),
                "error": h.error,
            }
            for h in history
        ]
    )
