"""Reading durations and delays: numbers in seconds, timedeltas, datetimes, ISO-8601 and words."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from eventbroker.durations import (
    ACK_DEADLINE,
    ANY_DELAY,
    DurationRange,
    format_duration,
    parse_delay,
    parse_duration,
)

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)


def test_none_means_now() -> None:
    assert parse_delay(None) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, timedelta(0)),
        (5, timedelta(seconds=5)),
        (1.5, timedelta(milliseconds=1500)),
        (0.25, timedelta(milliseconds=250)),
        (timedelta(minutes=3), timedelta(minutes=3)),
    ],
)
def test_numbers_are_seconds_and_timedeltas_pass_through(value: Any, expected: timedelta) -> None:
    assert parse_delay(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5m", timedelta(minutes=5)),
        ("1 day", timedelta(days=1)),
        ("2 weeks", timedelta(weeks=2)),
        ("1.5 hours", timedelta(hours=1, minutes=30)),
        ("  30s ", timedelta(seconds=30)),
        ("PT5M", timedelta(minutes=5)),
        ("P1D", timedelta(days=1)),
        ("pt0.5s", timedelta(milliseconds=500)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5 ms", timedelta(microseconds=1500)),
        ("250 milliseconds", timedelta(milliseconds=250)),
        ("90", timedelta(seconds=90)),
        ("2.5", timedelta(seconds=2.5)),
    ],
)
def test_words_and_iso_durations_are_relative(text: str, expected: timedelta) -> None:
    assert parse_delay(text) == expected


def test_calendar_iso_duration_counts_from_now() -> None:
    assert parse_delay("P1M", now=JAN_1) == timedelta(days=31)
    assert parse_delay("P1M", now=datetime(2026, 2, 1, tzinfo=UTC)) == timedelta(days=28)


def test_iso_time_is_absolute_utc() -> None:
    parsed = parse_delay("2026-01-14T17:46:05.811Z")
    assert parsed == datetime(2026, 1, 14, 17, 46, 5, 811000, tzinfo=UTC)
    offset = parse_delay("2026-01-14T19:46:05+02:00")
    assert offset == datetime(2026, 1, 14, 17, 46, 5, tzinfo=UTC)
    assert isinstance(offset, datetime) and offset.tzinfo is UTC


def test_naive_datetime_is_utc_and_aware_one_is_converted() -> None:
    assert parse_delay(datetime(2026, 1, 14, 12, 0)) == datetime(2026, 1, 14, 12, 0, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    converted = parse_delay(datetime(2026, 1, 14, 12, 0, tzinfo=plus_two))
    assert converted == datetime(2026, 1, 14, 10, 0, tzinfo=UTC)
    assert isinstance(converted, datetime) and converted.tzinfo is UTC


def test_a_time_in_the_past_is_kept_for_the_broker_to_treat_as_now() -> None:
    assert parse_delay("2001-01-01T00:00:00Z") == datetime(2001, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("value", ["soon", "5 parsecs", "", "P5X", "12:00:00:00:00"])
def test_unreadable_strings_name_the_value(value: str) -> None:
    with pytest.raises(ValueError, match=repr(value).replace("(", r"\(")):
        parse_delay(value)


@pytest.mark.parametrize(
    ("value", "got"),
    [
        (-1, "-1 s"),
        (-0.5, "-0.5 s"),
        (timedelta(seconds=-1), "-1 s"),
        ("-5m", "-5 min"),
        ("-PT5M", "-5 min"),
        ("-500ms", "-0.5 s"),
    ],
)
def test_negative_delays_are_refused_naming_the_range(value: Any, got: str) -> None:
    expected = f"delay must be between 0 s and 366 days; got {got}"
    with pytest.raises(ValueError, match=expected):
        parse_delay(value)


def test_a_relative_delay_over_a_year_is_refused_in_seconds_and_days() -> None:
    assert parse_delay(366 * 86400) == timedelta(days=366)
    with pytest.raises(ValueError, match="delay must be between 0 s and 366 days; got 400 days"):
        parse_delay("400 days")


@pytest.mark.parametrize("value", [True, math.nan, math.inf, [1], 1e300])
def test_other_values_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="delay"):
        parse_delay(value)


def test_durations_refuse_absolute_times() -> None:
    assert parse_duration("90s", name="x") == timedelta(seconds=90)
    assert parse_duration(250, name="x") == timedelta(seconds=250)
    with pytest.raises(ValueError, match="x: cannot read '2026-01-14T17:46:05Z'"):
        parse_duration("2026-01-14T17:46:05Z", name="x")
    with pytest.raises(ValueError, match=r"x: .* is not a length of time"):
        parse_duration(datetime(2026, 1, 1), name="x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.5, "ack_deadline must be between 1 s and 12 h; got 0.5 s"),
        ("500ms", "ack_deadline must be between 1 s and 12 h; got 0.5 s"),
        ("13h", "ack_deadline must be between 1 s and 12 h; got 13 h"),
        (timedelta(days=1), "ack_deadline must be between 1 s and 12 h; got 1 day"),
    ],
)
def test_a_value_out_of_range_names_the_parameter_the_unit_and_the_range(
    value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_duration(value, name="ack_deadline", limits=ACK_DEADLINE)


def test_the_ends_of_a_range_are_accepted() -> None:
    assert parse_duration(1, name="a", limits=ACK_DEADLINE) == timedelta(seconds=1)
    assert parse_duration("12h", name="a", limits=ACK_DEADLINE) == timedelta(hours=12)
    assert parse_duration(0, name="d", limits=ANY_DELAY) == timedelta(0)


def test_a_range_without_a_maximum_says_at_least() -> None:
    with pytest.raises(ValueError, match=r"^retention must be at least 1 s; got 0 s$"):
        parse_duration(0, name="retention", limits=DurationRange(1))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(seconds=0.5), "0.5 s"),
        (timedelta(seconds=90), "90 s"),
        (timedelta(minutes=2), "2 min"),
        (timedelta(hours=12), "12 h"),
        (timedelta(days=1), "1 day"),
        (timedelta(days=366), "366 days"),
    ],
)
def test_format_duration_uses_the_largest_whole_unit(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
