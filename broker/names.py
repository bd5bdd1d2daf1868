"""Event names and subscription filters: validation and matching.

Names are case-insensitive and stored lower-cased; segments are separated by
`.`. A filter is a name pattern where `*` stands for one segment and `>` (last
segment only) for one or more remaining segments, as in NATS subjects.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

NAME_MAX_LENGTH = 255
#: The characters of a (lower-cased) name, as a bracket expression's inside: read the
#: same by Python and by PostgreSQL's regular expressions (`eventbroker.publish`).
NAME_CHARACTERS = r"a-z0-9._\-/:"
#: A whole valid name (`\Z`, not `$`, which in Python also matches before a final newline).
NAME_PATTERN = rf"^[{NAME_CHARACTERS}]{{1,{NAME_MAX_LENGTH}}}\Z"
_NAME_RE = re.compile(NAME_PATTERN)
_FILTER_SEGMENT_RE = re.compile(r"^[a-z0-9_\-/:]+$")
FILTERS_MAX_COUNT = 100


def normalize_name(name: str) -> str | None:
    """Return the lower-cased name, or None when it is not a valid event name."""
    lowered = name.lower()
    if _NAME_RE.match(lowered) is None:
        return None
    return lowered


def filter_error(pattern: str) -> str | None:
    """Return why a filter pattern is invalid, or None when it is valid."""
    if not 1 <= len(pattern) <= NAME_MAX_LENGTH:
        return f"must be 1 to {NAME_MAX_LENGTH} characters"
    segments = pattern.lower().split(".")
    for index, segment in enumerate(segments):
        if segment in ("*",):
            continue
        if segment == ">":
            if index != len(segments) - 1:
                return "'>' may only be the last segment"
            continue
        if not _FILTER_SEGMENT_RE.match(segment):
            return (
                f"segment {segment!r} must be '*', '>' or letters, digits and '_-/:' "
                "(segments are separated by '.')"
            )
    return None


def _compile(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    segments = pattern.lower().split(".")
    for segment in segments:
        if segment == "*":
            parts.append(r"[^.]+")
        elif segment == ">":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        else:
            parts.append(re.escape(segment))
    return re.compile(r"\.".join(parts) + r"\Z")


@functools.lru_cache(maxsize=4096)
def compile_filters(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regular expression matching a name against any of the patterns."""
    return re.compile("|".join(f"(?:{_compile(p).pattern})" for p in patterns))


#: (patterns, name) pairs whose match is remembered: routing asks for every event and
#: subscription, and most events share a few names.
MATCH_CACHE_MAX = 1 << 16


@functools.lru_cache(maxsize=MATCH_CACHE_MAX)
def matches(patterns: tuple[str, ...], name: str) -> bool:
    """Whether a lower-cased event name matches any of the patterns."""
    return compile_filters(patterns).match(name) is not None


def normalize_filters(patterns: Iterable[str]) -> tuple[str, ...]:
    """Lower-case and de-duplicate patterns, keeping their order."""
    return tuple(dict.fromkeys(p.lower() for p in patterns))
