"""What `create_subscription(..., exist_ok=True)` tells when the subscription differs.

A program that declares the subscription it needs at every start gets the
existing one back; when that one was made with other settings (another filter,
another ack deadline), the caller is told which, instead of going on believing
its own settings hold.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from eventbroker.durations import format_duration
from eventbroker.errors import SubscriptionSettingsWarning
from eventbroker.types import Subscription
from eventbroker.v1 import broker_pb2 as pb

T = TypeVar("T")


def _lengths(values: tuple[timedelta, ...]) -> str:
    return ", ".join(format_duration(value) for value in values) or "none"


def _length(value: timedelta | None) -> str:
    return format_duration(value) if value is not None else "none"


def _limit(value: int | None) -> str:
    return str(value) if value else "unlimited"


def differences(asked: pb.Subscription, existing: Subscription) -> list[tuple[str, str, str]]:
    """`(setting, existing, asked)` for each setting asked for that the subscription lacks.

    Only the settings the request carries are compared: one left out takes the
    broker's default on a new subscription and says nothing about an existing one.
    The filter always counts (as a set of lower-cased patterns), `ordered` when it
    was asked for, `start` never (it is where a new subscription began).
    """
    found: list[tuple[str, str, str]] = []

    def compare(setting: str, wanted: T, current: T, text: Callable[[T], str]) -> None:
        if wanted != current:
            found.append((setting, text(current), text(wanted)))

    patterns = tuple(dict.fromkeys(pattern.lower() for pattern in asked.filter))
    if set(patterns) != set(existing.filter):
        found.append(("filter", ", ".join(existing.filter), ", ".join(patterns)))
    policy = asked.retry_policy
    durations = (
        ("ack_deadline", asked.HasField("ack_deadline"), asked.ack_deadline, existing.ack_deadline),
        ("min_backoff", policy.HasField("min_backoff"), policy.min_backoff, existing.min_backoff),
        ("max_backoff", policy.HasField("max_backoff"), policy.max_backoff, existing.max_backoff),
        ("retention", asked.HasField("retention"), asked.retention, existing.retention),
        ("max_age", asked.HasField("max_age"), asked.max_age, existing.max_age),
    )
    for setting, given, wanted, current in durations:
        if given:
            compare(setting, wanted.ToTimedelta(), current, _length)
    if asked.max_attempts:
        compare("max_attempts", asked.max_attempts, existing.max_attempts, str)
    if asked.max_in_flight:
        compare("max_in_flight", asked.max_in_flight, existing.max_in_flight, _limit)
    if policy.delays:
        table = tuple(delay.ToTimedelta() for delay in policy.delays)
        compare("retry_delays", table, existing.retry_delays, _lengths)
    if asked.max_in_flight_per_key:
        compare(
            "max_in_flight_per_key",
            asked.max_in_flight_per_key,
            existing.max_in_flight_per_key,
            _limit,
        )
    if asked.key_header:
        compare("key_header", asked.key_header, existing.key_header or "", repr)
    if asked.ordered:
        compare("ordered", True, existing.ordered, lambda on: "on" if on else "off")
    return found


def warning(asked: pb.Subscription, existing: Subscription) -> SubscriptionSettingsWarning | None:
    """The warning to give when the existing subscription differs from the one asked."""
    found = differences(asked, existing)
    return SubscriptionSettingsWarning(existing.name, found) if found else None
