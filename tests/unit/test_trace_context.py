"""The trace id the broker reads out of an event's `traceparent` header (W3C Trace Context)."""

from __future__ import annotations

import pytest

from broker.trace_context import trace_id

TRACE = "0af7651916cd43dd8448eb211c80319c"
VALID = f"00-{TRACE}-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": VALID},
        {"TraceParent": VALID},  # header names ignore case
        {"traceparent": f" {VALID} "},
        {"traceparent": f"00-{TRACE}-b7ad6b7169203331-00"},  # not sampled: still its trace
        {"traceparent": f"01-{TRACE}-b7ad6b7169203331-01-later-fields"},  # a later version
        {"src": "web", "traceparent": VALID, "tracestate": "vendor=1"},
    ],
)
def test_a_valid_traceparent_gives_its_trace_id(headers: dict[str, str]) -> None:
    assert trace_id(headers) == TRACE


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        VALID.upper(),  # W3C allows lowercase hex only
        f"00-{TRACE}-b7ad6b7169203331-01-extra",  # version 00 has exactly four fields
        f"ff-{TRACE}-b7ad6b7169203331-01",  # version ff is invalid
        f"00-{'0' * 32}-b7ad6b7169203331-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE[:-1]}-b7ad6b7169203331-01",  # one digit short
    ],
)
def test_an_invalid_traceparent_gives_no_trace_id(value: str) -> None:
    assert trace_id({"traceparent": value}) == ""


def test_no_traceparent_gives_no_trace_id() -> None:
    assert trace_id({}) == ""
    assert trace_id({"tracestate": "vendor=1"}) == ""
