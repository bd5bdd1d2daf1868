"""A publisher in a process of its own, tracing with the OpenTelemetry SDK, for the tracing tests.

`python -m tests.e2e.trace_publisher TARGET NAME [DATA_JSON]` sets its own
tracer provider (spans kept in memory), publishes one event inside a span
`checkout` with the blocking `Client`, and prints one JSON object on stdout:
the event id and every span it finished, each as `tests.e2e.spans.span_record`
describes it. So a test sees a publish made elsewhere, as a consumer does.
"""

from __future__ import annotations

import json
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventbroker import Client
from tests.e2e.spans import span_record


def main(target: str, name: str, data: object) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    with (
        trace.get_tracer("checkout-service").start_as_current_span("checkout"),
        Client(target) as client,
    ):
        result = client.publish(name, data)
    provider.shutdown()
    spans = [span_record(span) for span in exporter.get_finished_spans()]
    print(json.dumps({"event_id": result.event_id, "spans": spans}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else None)
