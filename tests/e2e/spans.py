"""Finished OpenTelemetry spans as plain records, and a tracer provider a test can wait on.

A record is JSON-ready (the publisher in another process prints them), with ids
as lowercase hex, as W3C `traceparent` writes them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

#: How long a test waits for a span to end.
WAIT_S = 10.0

SpanRecord = dict[str, Any]


def span_record(span: ReadableSpan) -> SpanRecord:
    """A finished span as a plain dict: name, kind, ids, parent, links, attributes, status."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "events": [event.name for event in span.events],
    }


class _Notifying(SimpleSpanProcessor):
    """Exports each span as it ends (to memory), then wakes whoever waits for spans."""

    def __init__(self, exporter: InMemorySpanExporter, ended: threading.Condition) -> None:
        super().__init__(exporter)
        self._ended = ended

    def on_end(self, span: ReadableSpan) -> None:
        super().on_end(span)
        with self._ended:
            self._ended.notify_all()


class RecordedSpans:
    """The spans this process finished, kept by the SDK's InMemorySpanExporter."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self._ended = threading.Condition()
        self.provider = TracerProvider()
        self.provider.add_span_processor(_Notifying(self.exporter, self._ended))

    def all(self) -> list[SpanRecord]:
        """Every span finished so far, in the order they ended."""
        return [span_record(span) for span in self.exporter.get_finished_spans()]

    def named(self, name: str) -> list[SpanRecord]:
        """The finished spans called `name`."""
        return [span for span in self.all() if span["name"] == name]

    def wait_for(
        self, name: str, count: int = 1, where: Callable[[SpanRecord], bool] = lambda _: True
    ) -> list[SpanRecord]:
        """Wait until `count` spans called `name` (and matching `where`) ended; return them."""

        def found() -> list[SpanRecord]:
            return [span for span in self.named(name) if where(span)]

        with self._ended:
            assert self._ended.wait_for(lambda: len(found()) >= count, WAIT_S), (
                f"no {count} spans {name!r} ended in time; ended: {[s['name'] for s in self.all()]}"
            )
        return found()


def _reset_global_provider() -> None:
    """Forget the global tracer provider, so that another can be set (as the SDK's tests do)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@contextmanager
def global_tracer_provider(provider: trace.TracerProvider | None) -> Iterator[None]:
    """Make `provider` the global one for a while (None: none set, the API's default)."""
    _reset_global_provider()
    if provider is not None:
        trace.set_tracer_provider(provider)
    try:
        yield
    finally:
        _reset_global_provider()
