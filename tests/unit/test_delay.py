"""Reading delays: numbers in milliseconds, timedeltas, datetimes, ISO-8601 and words."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from eventbroker._delay import parse_delay, parse_duration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)


def test_none_means_now() -> None:
    assert parse_delay(None) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, timedelta(0)),
        (1500, timedelta(milliseconds=1500)),
        (0.5, timedelta(microseconds=500)),
        (timedelta(minutes=3), timedelta(minutes=3)),
    ],
)
def test_numbers_are_milliseconds_and_timedeltas_pass_through(
    value: Any, expected: timedelta
) -> None:
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


def test_number_in_a_string_is_ambiguous() -> None:
    with pytest.raises(ValueError, match="milliseconds"):
        parse_delay("5000")


@pytest.mark.parametrize("value", [-1, -0.5, timedelta(seconds=-1), "-5m", "-PT5M"])
def test_negative_delays_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_delay(value)


@pytest.mark.parametrize("value", [True, math.nan, math.inf, [1], 1e300])
def test_other_values_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="delay"):
        parse_delay(value)


def test_durations_refuse_absolute_times() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration(250) == timedelta(milliseconds=250)
    with pytest.raises(ValueError, match="not a length of time"):
        parse_duration("2026-01-14T17:46:05Z")
