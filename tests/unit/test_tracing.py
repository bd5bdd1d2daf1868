"""The client's tracing without a broker: when it is off, and what it adds to an event."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventbroker import _tracing as tracing
from eventbroker.types import EventSpec, PublishResult
from tests.e2e.spans import RecordedSpans, global_tracer_provider


@pytest.fixture
def spans() -> Iterator[RecordedSpans]:
    recorded = RecordedSpans()
    with global_tracer_provider(recorded.provider):
        yield recorded
    recorded.provider.shutdown()


def test_off_without_a_provider_the_events_are_left_alone() -> None:
    specs = [EventSpec(name="order.new", headers={"src": "web"})]
    with global_tracer_provider(None):
        assert tracing.tracer() is None
        with tracing.Publishing(specs, target="127.0.0.1:50051") as traced:
            traced.done([PublishResult(event_id="e1", duplicate=False)])
    assert traced.specs is specs
    assert specs[0].headers == {"src": "web"}


def test_trace_headers_join_the_callers_without_replacing_any(spans: RecordedSpans) -> None:
    specs = [EventSpec(name="Order.New", headers={"src": "web", "tracestate": "mine=1"})]
    with tracing.Publishing(specs, target="[::1]:50051") as traced:
        (spec,) = traced.specs
        traced.done([PublishResult(event_id="e1", duplicate=True)])
    assert specs[0].headers == {"src": "web", "tracestate": "mine=1"}  # the caller's list kept
    assert spec.headers is not None
    (span,) = spans.named("publish order.new")
    assert spec.headers["traceparent"].startswith(f"00-{span['trace_id']}-{span['span_id']}-")
    assert spec.headers["src"] == "web" and spec.headers["tracestate"] == "mine=1"
    assert span["attributes"]["server.address"] == "::1"
    assert span["attributes"]["server.port"] == 50051
    assert span["attributes"]["messaging.eventbroker.duplicate"] is True


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (None, False),
        ({}, False),
        ({"src": "web"}, False),
        ({"traceparent": "x"}, True),
        ({"TRACEPARENT": "x"}, True),
    ],
)
def test_has_traceparent_ignores_case(headers: dict[str, str] | None, expected: bool) -> None:
    assert tracing.has_traceparent(headers) is expected
