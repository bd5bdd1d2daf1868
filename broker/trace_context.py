"""The W3C trace context an event carries in its headers, read for people to look up.

Publishers that trace (the Python and TypeScript clients with OpenTelemetry on)
put a `traceparent` header on each event, `00-<trace id>-<span id>-<flags>`, as
W3C Trace Context defines it. The broker keeps headers verbatim and never acts on
them; it only reads the trace id back out, so that `GetEvent`, `broker events get`
and the dashboard can say which trace an event belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: The header W3C Trace Context names (HTTP header names ignore case, so this does too).
TRACEPARENT_HEADER = "traceparent"
#: Version 00 is exactly these four fields; a later version may add fields after a dash.
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<parent_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?"
)
_ZERO_TRACE_ID = "0" * 32
_ZERO_PARENT_ID = "0" * 16


def traceparent(headers: Mapping[str, str]) -> str | None:
    """The event's `traceparent` header, found whatever its case; None without one."""
    value = headers.get(TRACEPARENT_HEADER)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == TRACEPARENT_HEADER:
            return candidate
    return None


def trace_id(headers: Mapping[str, str]) -> str:
    """The trace id of the event's `traceparent` (32 lowercase hex digits), else "".

    A header that W3C Trace Context says to ignore gives "": a malformed one, an
    all-zero trace or parent id, version `ff`, or version 00 with more fields.
    """
    value = traceparent(headers)
    if value is None:
        return ""
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return ""
    version = match["version"]
    if version == "ff" or (version == "00" and match["rest"] is not None):
        return ""
    if match["trace_id"] == _ZERO_TRACE_ID or match["parent_id"] == _ZERO_PARENT_ID:
        return ""
    return match["trace_id"]
