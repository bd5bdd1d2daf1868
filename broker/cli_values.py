"""Reading durations, delays and start positions typed on the `broker` command line.

A bare number is seconds (`--ack-deadline 45`, `--delay 5`, `--max-age 3600`), as
in `nats`, Celery and dramatiq's command lines; any other text is read by the
client's duration parser (`5m`, `1 day`, `PT5M`; for `--delay` and `--start` also
an ISO-8601 time such as `2026-11-29T21:05:03Z`). Each flag has a range, taken from
the broker's own limits, and a value outside it is refused before anything is sent,
naming the flag, the unit and the range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import typer

from broker import config
from eventbroker._delay import parse_delay, parse_duration

#: What a duration flag accepts, for its help and its errors.
DURATION_FORMS = "seconds, or '5m', '1 day', 'PT5M'"
#: The longest delay or retry delay the broker takes ("at most one year ahead").
YEAR = timedelta(seconds=config.MAX_DELAY_S)


@dataclass(frozen=True, slots=True)
class Range:
    """The lengths of time a flag takes: at least `low`, at most `high` (None: no limit)."""

    low: timedelta
    high: timedelta | None

    def describe(self) -> str:
        """`1 s .. 12 h`, `at least 1 s`."""
        if self.high is None:
            return f"at least {human(self.low)}"
        return f"{human(self.low)} .. {human(self.high)}"


ACK_DEADLINE = Range(
    timedelta(seconds=config.ACK_DEADLINE_MIN_S), timedelta(seconds=config.ACK_DEADLINE_MAX_S)
)
BACKOFF = Range(timedelta(0), YEAR)
RETRY_DELAY = Range(timedelta(0), YEAR)
DELAY = Range(timedelta(0), YEAR)
MAX_AGE = Range(timedelta(seconds=1), None)
RETENTION = Range(timedelta(seconds=1), None)


def human(value: timedelta) -> str:
    """A length of time in its largest whole unit: `45 s`, `12 h`, `366 d`, `0.5 s`."""
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


def _number_of_seconds(text: str, flag: str) -> timedelta | None:
    """A bare number read as seconds, or None when the text is not a number."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    if not math.isfinite(seconds):
        raise typer.BadParameter(f"{text!r} is not a number of seconds", param_hint=repr(flag))
    try:
        return timedelta(seconds=seconds)
    except OverflowError as error:
        raise typer.BadParameter(f"{text} s is too long", param_hint=repr(flag)) from error


def _in_range(value: timedelta, text: str, allowed: Range, flag: str) -> timedelta:
    too_long = allowed.high is not None and value > allowed.high
    if value < allowed.low or too_long:
        raise typer.BadParameter(
            f"{text.strip()} is {human(value)}, out of range: {allowed.describe()} "
            f"({DURATION_FORMS})",
            param_hint=repr(flag),
        )
    return value


def duration(flag: str, text: str, allowed: Range) -> timedelta:
    """A length of time from a flag's text, checked against its range.

    Args:
        flag: The flag, named in the error (`--ack-deadline`).
        text: What was typed.
        allowed: The range the flag takes.

    Raises:
        typer.BadParameter: Not a length of time, or out of range.

    """
    stripped = text.strip()
    value = _number_of_seconds(stripped, flag)
    if value is None:
        try:
            value = parse_duration(stripped)
        except ValueError as error:
            raise typer.BadParameter(
                f"{text!r} is not a length of time ({DURATION_FORMS})", param_hint=repr(flag)
            ) from error
    return _in_range(value, text, allowed, flag)


def optional_duration(flag: str, text: str, allowed: Range) -> timedelta | None:
    """Like `duration`, but `none` (or `off`) means no value: it removes the setting."""
    if text.strip().lower() in ("none", "off"):
        return None
    return duration(flag, text, allowed)


def duration_list(flag: str, text: str) -> tuple[timedelta, ...]:
    """A retry table from `10s,1m,10m` (each in the retry delay range); `''` or `none`: none."""
    stripped = text.strip()
    if stripped.lower() in ("", "none"):
        return ()
    return tuple(duration(flag, item, RETRY_DELAY) for item in stripped.split(","))


def delay(flag: str, text: str) -> timedelta | datetime:
    """A publish delay: seconds, a length of time, or an ISO-8601 time (UTC unless it says)."""
    stripped = text.strip()
    value = _number_of_seconds(stripped, flag)
    if value is not None:
        return _in_range(value, text, DELAY, flag)
    try:
        parsed = parse_delay(stripped)
    except ValueError as error:
        raise typer.BadParameter(
            f"{text!r} is neither a length of time ({DURATION_FORMS}) "
            "nor an ISO-8601 time ('2026-11-29T21:05:03Z')",
            param_hint=repr(flag),
        ) from error
    assert parsed is not None
    if isinstance(parsed, datetime):
        return parsed  # the broker checks the year ahead against its own clock
    return _in_range(parsed, text, DELAY, flag)


def start(flag: str, text: str) -> str | datetime:
    """Where a new subscription starts: `new`, `beginning`, or an ISO-8601 time."""
    stripped = text.strip().lower()
    if stripped in ("new", "beginning"):
        return stripped
    try:
        parsed = parse_delay(text.strip())
    except ValueError:
        parsed = None
    if not isinstance(parsed, datetime):
        raise typer.BadParameter(
            f"{text!r}: give 'new', 'beginning' or an ISO-8601 time ('2026-11-29T21:05:03Z')",
            param_hint=repr(flag),
        )
    return parsed
