"""Limits on a published event and a batch: the broker's defaults and its name rule.

The client checks an event against them before it joins the event to others in
one `BatchPublish` (the broker refuses a batch whole, so an event it would refuse
is sent on its own instead, and its refusal reaches its own caller only). The
broker refuses what breaks them with `INVALID_ARGUMENT` (or `RESOURCE_EXHAUSTED`
for sizes) naming the field; the sizes are its defaults, which `broker serve`
can change (`--event-max-bytes`, `--batch-max-events`, `--batch-max-bytes`).
"""

from __future__ import annotations

import re

__all__ = [
    "BATCH_MAX_BYTES_DEFAULT",
    "BATCH_MAX_EVENTS_DEFAULT",
    "CONTENT_TYPE_MAX_LENGTH",
    "DEDUP_ID_MAX_LENGTH",
    "EVENT_MAX_BYTES_DEFAULT",
    "HEADERS_MAX_COUNT",
    "NAME_MAX_LENGTH",
    "ORDERING_KEY_MAX_LENGTH",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "is_valid_name",
]

#: An event name: 1 to 255 letters, digits and `. _ - / :`, compared lower-cased.
NAME_MAX_LENGTH = 255
NAME_PATTERN = re.compile(rf"[a-z0-9._\-/:]{{1,{NAME_MAX_LENGTH}}}")
#: One event (name, data and headers) at most, in bytes, by default.
EVENT_MAX_BYTES_DEFAULT = 256 * 1024
#: One BatchPublish at most, in events and in bytes of the request, by default.
BATCH_MAX_EVENTS_DEFAULT = 1000
BATCH_MAX_BYTES_DEFAULT = 4 * 1024 * 1024
PRIORITY_MIN = -50
PRIORITY_MAX = 50
HEADERS_MAX_COUNT = 64
DEDUP_ID_MAX_LENGTH = 255
ORDERING_KEY_MAX_LENGTH = 255
CONTENT_TYPE_MAX_LENGTH = 255


def is_valid_name(name: str) -> bool:
    """Whether `name` is an event name the broker takes (case does not matter)."""
    return NAME_PATTERN.fullmatch(name.lower()) is not None
