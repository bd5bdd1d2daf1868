"""Lengths of time in the client: one rule, one parser, and the broker's limits on them.

The rule, for every duration and delay the client takes (publish `delay`,
subscription settings, nack delays, lease extensions, handler timeouts,
`Retry(delay=)`): a bare number is **seconds**, as in Python's own APIs
(`time.sleep`, `asyncio.timeout`), Pub/Sub's `*_seconds` and Celery's
`countdown`. A `timedelta` is taken as it is, and a string may be words
(`"5m"`, `"1 day"`, `"2 weeks"`, `"1h30m"`), an explicit `"500ms"`, an ISO-8601
duration (`"PT5M"`) or a number of seconds (`"90"`). A delay may also be an
absolute time: a `datetime` (naive means UTC) or an ISO-8601 time.

Values outside a limit are refused before anything is sent, with an error that
names the parameter, the unit and the range ("ack_deadline must be between 1 s
and 12 h; got 0.5 s"). The limits live here, and the broker reads its own from
this module too, so that the two cannot disagree.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import isodate
from pytimeparse.timeparse import timeparse as parse_words

from eventbroker.types import DelayLike, DurationLike

__all__ = [
    "ACK_DEADLINE_MAX_S",
    "ACK_DEADLINE_MIN_S",
    "MAX_DELAY_S",
    "DurationRange",
    "as_utc",
    "format_duration",
    "parse_delay",
    "parse_duration",
]

#: Longest delay of an event, a nack or a retry: "at most one year ahead", a leap year included.
MAX_DELAY_S = 366 * 24 * 3600
#: Shortest and longest lease a consumer may hold: a subscription's ack deadline and
#: each `ExtendAckDeadline`.
ACK_DEADLINE_MIN_S = 1
ACK_DEADLINE_MAX_S = 12 * 3600
#: Shortest retention and maximum age of a subscription.
RETENTION_MIN_S = 1
MAX_AGE_MIN_S = 1


@dataclass(frozen=True, slots=True)
class DurationRange:
    """The lengths of time a parameter accepts, both ends included, in seconds.

    Attributes:
        minimum_s: Shortest accepted length.
        maximum_s: Longest accepted length; None for no upper limit.

    """

    minimum_s: float = 0.0
    maximum_s: float | None = None

    def check(self, name: str, value: timedelta) -> timedelta:
        """`value`, if inside the range.

        Raises:
            ValueError: Outside the range; the message names `name`, the unit and the range.

        """
        seconds = value.total_seconds()
        too_long = self.maximum_s is not None and seconds > self.maximum_s
        if seconds >= self.minimum_s and not too_long:
            return value
        low = format_duration(timedelta(seconds=self.minimum_s))
        got = format_duration(value)
        if self.maximum_s is None:
            raise ValueError(f"{name} must be at least {low}; got {got}")
        high = format_duration(timedelta(seconds=self.maximum_s))
        raise ValueError(f"{name} must be between {low} and {high}; got {got}")


#: Ranges by parameter.
ANY_DELAY = DurationRange(0, MAX_DELAY_S)
ACK_DEADLINE = DurationRange(ACK_DEADLINE_MIN_S, ACK_DEADLINE_MAX_S)
RETENTION = DurationRange(RETENTION_MIN_S)
MAX_AGE = DurationRange(MAX_AGE_MIN_S)
UNLIMITED = DurationRange(0)

_DURATION_FORMS = (
    "seconds as a number, a timedelta, words ('5m', '1 day', '500ms') "
    "or an ISO-8601 duration ('PT5M')"
)
_DELAY_FORMS = (
    "seconds as a number, a timedelta, a datetime, words ('5m', '1 day', '500ms'), "
    "an ISO-8601 duration ('PT5M') or time ('2026-01-14T17:46:05Z')"
)
_MILLISECONDS = re.compile(
    r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?:ms|msecs?|milliseconds?)", re.IGNORECASE
)
_SECONDS = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_UNITS = (("days", 86400), ("h", 3600), ("min", 60))


def parse_delay(
    value: DelayLike, *, name: str = "delay", now: datetime | None = None
) -> timedelta | datetime | None:
    """Read a delay: relative (`timedelta`), absolute (aware UTC `datetime`) or None for now.

    A relative delay is checked against the one-year limit here; an absolute time
    is left to the broker, whose clock decides what "a year ahead" is.

    Args:
        value: The delay as the user wrote it (a number is seconds).
        name: The parameter, for error messages.
        now: The current time, for calendar durations such as `P1M` (default: the clock).

    Raises:
        ValueError: The value cannot be read as a delay, or is negative or over a year.

    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.lstrip("+-")[:1] not in ("P", "p") and not _SECONDS.fullmatch(stripped):
            try:
                return as_utc(datetime.fromisoformat(stripped))
            except ValueError:
                pass
    return ANY_DELAY.check(name, _length(value, name, _DELAY_FORMS, now))


def parse_duration(
    value: DurationLike,
    *,
    name: str,
    limits: DurationRange = UNLIMITED,
    now: datetime | None = None,
) -> timedelta:
    """Read a length of time (no absolute times) and check it against `limits`.

    Args:
        value: The length as the user wrote it (a number is seconds).
        name: The parameter, for error messages (`ack_deadline`, `retry_delays[2]`).
        limits: The lengths the parameter accepts (default: any that is not negative).
        now: The current time, for calendar durations such as `P1M` (default: the clock).

    Raises:
        ValueError: The value is not a length of time, or is outside `limits`.

    """
    if isinstance(value, datetime):
        raise ValueError(f"{name}: {value!r} is not a length of time; give {_DURATION_FORMS}")
    return limits.check(name, _length(value, name, _DURATION_FORMS, now))


def format_duration(value: timedelta) -> str:
    """A length of time as people write it in limits and logs: `0.5 s`, `12 h`, `366 days`."""
    seconds = value.total_seconds()
    if seconds and abs(seconds) >= 60:
        for unit, size in _UNITS:
            if seconds % size == 0:
                count = seconds / size
                return f"{count:g} {'day' if unit == 'days' and count == 1 else unit}"
    return f"{seconds:g} s"


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _length(value: object, name: str, forms: str, now: datetime | None) -> timedelta:
    """Any relative form as a timedelta, negative ones included (the range refuses those)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        return _parse_string(value, name, forms, now)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: cannot read {value!r} as a length of time; give {forms}")
    return _seconds(value, name)


def _seconds(value: float, name: str) -> timedelta:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds; got {value!r}")
    try:
        return timedelta(seconds=value)
    except OverflowError as error:
        raise ValueError(f"{name} of {value!r} s is too long") from error


def _parse_string(text: str, name: str, forms: str, now: datetime | None) -> timedelta:
    stripped = text.strip()
    if _SECONDS.fullmatch(stripped):
        return _seconds(float(stripped), name)
    sign = -1 if stripped.startswith("-") else 1
    unsigned = stripped.lstrip("+-").strip()
    milliseconds = _MILLISECONDS.fullmatch(unsigned)
    if milliseconds:
        return sign * timedelta(milliseconds=float(milliseconds["number"]))
    if unsigned[:1] in ("P", "p"):
        return sign * _iso_duration(text, name, unsigned.upper(), now)
    seconds = parse_words(stripped)
    if seconds is None:
        raise ValueError(f"{name}: cannot read {text!r} as a length of time; give {forms}")
    return timedelta(seconds=seconds)


def _iso_duration(text: str, name: str, upper: str, now: datetime | None) -> timedelta:
    try:
        parsed = isodate.parse_duration(upper)
    except (isodate.ISO8601Error, ValueError) as error:
        raise ValueError(
            f"{name}: cannot read {text!r} as an ISO-8601 duration: {error}"
        ) from error
    if isinstance(parsed, timedelta):
        return parsed
    calendar: timedelta = parsed.totimedelta(start=now or datetime.now(UTC))
    return calendar
