"""Reading the many ways a user writes a delay into a `timedelta` or an aware `datetime`.

Numbers are milliseconds (as in Ampt). Strings are an ISO-8601 time (absolute), an
ISO-8601 duration (`PT5M`, via isodate) or words (`5m`, `1 day`, via pytimeparse).
The one-year limit is the broker's to enforce.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import isodate
from pytimeparse.timeparse import timeparse as parse_words

from eventbroker.types import DelayLike, DurationLike

_DURATION_FORMS = (
    "a timedelta, milliseconds as a number, an ISO-8601 duration ('PT5M') "
    "or words ('5m', '1 day', '2 weeks')"
)
_FORMS = (
    "a timedelta, a datetime, milliseconds as a number, an ISO-8601 time or duration "
    "('2026-01-14T17:46:05Z', 'PT5M') or words ('5m', '1 day', '2 weeks')"
)


def parse_delay(value: DelayLike, *, now: datetime | None = None) -> timedelta | datetime | None:
    """Read a delay: relative (`timedelta`), absolute (aware UTC `datetime`) or None for "now".

    Args:
        value: The delay as the user wrote it.
        now: The current time, for calendar durations such as `P1M` (default: the clock).

    Raises:
        ValueError: The value cannot be read as a delay, or it is negative.

    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str):
        return _parse_string(value, now)
    return _relative(value)


def parse_duration(value: DurationLike, *, now: datetime | None = None) -> timedelta:
    """Read a length of time (no absolute times): settings, nack delays, lease extensions.

    Raises:
        ValueError: The value is not a length of time, or it is negative.

    """
    parsed = parse_delay(value, now=now)
    if not isinstance(parsed, timedelta):
        raise ValueError(f"{value!r} is not a length of time; give {_DURATION_FORMS}")
    return parsed


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _relative(value: timedelta | int | float) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise ValueError(f"cannot read {value!r} as a delay; give {_FORMS}")
    if isinstance(value, timedelta):
        delay = value
    elif not math.isfinite(value):
        raise ValueError(f"delay {value!r} must be a finite number of milliseconds")
    else:
        try:
            delay = timedelta(milliseconds=value)
        except OverflowError as error:
            raise ValueError(f"delay {value!r} ms is too long") from error
    if delay < timedelta(0):
        raise ValueError(f"delay {value!r} must not be negative")
    return delay


def _parse_string(text: str, now: datetime | None) -> timedelta | datetime:
    stripped = text.strip()
    if stripped.lstrip("+-")[:1] in ("P", "p"):
        delay = _iso_duration(text, stripped.upper(), now)
    else:
        try:
            return as_utc(datetime.fromisoformat(stripped))
        except ValueError:
            delay = _words(text, stripped)
    if delay < timedelta(0):
        raise ValueError(f"delay {text!r} must not be negative")
    return delay


def _words(text: str, stripped: str) -> timedelta:
    seconds = parse_words(stripped)
    if seconds is None:
        numeric = stripped.replace(".", "", 1).isdigit()
        hint = " (a number in a string is ambiguous: pass a number of milliseconds)"
        raise ValueError(f"cannot read {text!r} as a delay; give {_FORMS}{hint if numeric else ''}")
    return timedelta(seconds=seconds)


def _iso_duration(text: str, upper: str, now: datetime | None) -> timedelta:
    try:
        parsed = isodate.parse_duration(upper)
    except (isodate.ISO8601Error, ValueError) as error:
        raise ValueError(f"cannot read {text!r} as an ISO-8601 duration: {error}") from error
    if isinstance(parsed, timedelta):
        return parsed
    calendar: timedelta = parsed.totimedelta(start=now or datetime.now(UTC))
    return calendar
