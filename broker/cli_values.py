"""Reading durations, delays and start positions typed on the `broker` command line.

The client's one rule applies (`eventbroker.durations`): a bare number is seconds
(`--ack-deadline 45`, `--delay 5`), and text may be words (`5m`, `1 day`), an
ISO-8601 duration (`PT5M`) or, for `--delay` and `--start`, an ISO-8601 time. The
ranges are the client's too, so the command line, the client and the broker refuse
the same values, and the error names the flag, the unit and the range.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from broker.cli_errors import usage_error
from eventbroker import durations
from eventbroker.durations import DurationRange

#: What a duration flag accepts, for its help.
DURATION_FORMS = "seconds, or '5m', '1 day', 'PT5M'"

ACK_DEADLINE = durations.ACK_DEADLINE
BACKOFF = durations.ANY_DELAY
RETRY_DELAY = durations.ANY_DELAY
MAX_AGE = durations.MAX_AGE
RETENTION = durations.RETENTION
#: `broker publish --timeout`: a tenth of a second at least, no upper limit.
PUBLISH_TIMEOUT = durations.DurationRange(0.1)


def duration(flag: str, text: str, allowed: DurationRange) -> timedelta:
    """A length of time from a flag's text, checked against its range.

    Args:
        flag: The flag, named in the error (`--ack-deadline`).
        text: What was typed.
        allowed: The range the flag takes.

    Raises:
        CommandError: Not a length of time, or out of range (exit status 2).

    """
    try:
        return durations.parse_duration(text, name=flag, limits=allowed)
    except ValueError as error:
        raise usage_error(str(error)) from error


def optional_duration(flag: str, text: str, allowed: DurationRange) -> timedelta | None:
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
    try:
        parsed = durations.parse_delay(text, name=flag)
    except ValueError as error:
        raise usage_error(str(error)) from error
    if parsed is None:
        raise usage_error(f"{flag}: give a delay ({DURATION_FORMS}) or an ISO-8601 time")
    return parsed


def start(flag: str, text: str) -> str | datetime:
    """Where a new subscription starts: `new`, `beginning`, or an ISO-8601 time."""
    stripped = text.strip().lower()
    if stripped in ("new", "beginning"):
        return stripped
    try:
        return durations.as_utc(datetime.fromisoformat(text.strip()))
    except ValueError as error:
        raise usage_error(
            f"{flag} {text!r}: give 'new', 'beginning' or an ISO-8601 time ('2026-11-29T21:05:03Z')"
        ) from error
