"""OpenTelemetry spans and W3C trace context, from a publish to the handler that processes it.

Tracing is on only while an OpenTelemetry tracer provider is configured
(`opentelemetry.trace.set_tracer_provider`, as the SDK or an auto-instrumentation
does). The API is an optional dependency (`pip install eventbroker[otel]`),
imported on first use: without it, or with the API's default provider (a proxy
that makes no-op spans), every function here does nothing, no header is added
to an event, and a publish or a delivery costs one check.

When it is on:

- each published event gets a PRODUCER span `publish {name}`, and its context
  goes into the event's headers as `traceparent` (and `tracestate`, plus
  whatever else the configured propagator writes), unless the caller set a
  `traceparent` header itself: then the event's headers are left as they are;
- `publish_batch` (one call, one transaction) also makes a CLIENT span `send`
  linking the events' spans, which are then of operation type `create`;
- `outbox.publish_in` (an event published in the caller's own PostgreSQL
  transaction) makes the same `publish {name}` span and headers;
- the consumer runtime runs each delivery's handlers in a CONSUMER span
  `process {subscription}`, a child of the context in the event's headers (so
  that publish and handling are one trace) that also links to it, as the
  messaging semantic conventions ask;
- each batched ack or nack is a CLIENT span `ack {subscription}` /
  `nack {subscription}` linking the process spans of the deliveries it settles.

The attribute names are those of the OpenTelemetry messaging semantic
conventions (`messaging.*`); those the conventions leave to each system are
under `messaging.eventbroker.*`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from eventbroker.types import EventSpec, Message, PublishResult

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanContext, Tracer, TracerProvider

__all__ = [
    "SYSTEM",
    "TRACEPARENT_HEADER",
    "Processing",
    "Publishing",
    "Settling",
    "tracer",
]

#: `messaging.system`: the name this broker goes by in spans.
SYSTEM = "eventbroker"
#: The W3C Trace Context header a caller may set itself (compared ignoring case).
TRACEPARENT_HEADER = "traceparent"
#: The name the client's tracer goes by (its instrumentation scope).
SCOPE = "eventbroker"

#: `opentelemetry.trace` once imported; False once it was found missing.
_trace_api: ModuleType | bool | None = None
_cached: tuple[TracerProvider, Tracer] | None = None


def _api() -> ModuleType | None:
    """`opentelemetry.trace`, imported on first use; None when it is not installed."""
    global _trace_api
    if _trace_api is None:
        try:
            from opentelemetry import trace
        except ImportError:
            _trace_api = False
        else:
            _trace_api = trace
    return _trace_api if isinstance(_trace_api, ModuleType) else None


def tracer() -> Tracer | None:
    """The tracer of the configured tracer provider, or None while tracing is off.

    Off when the OpenTelemetry API is not installed, or while the global provider
    is the API's default (the proxy that stands in until one is set) or its no-op
    provider. Read on every call, so a provider set later turns tracing on.
    """
    global _cached
    trace = _api()
    if trace is None:
        return None
    provider: TracerProvider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    if _cached is not None and _cached[0] is provider:
        return _cached[1]
    from eventbroker import __version__

    found = provider.get_tracer(SCOPE, __version__)
    _cached = (provider, found)
    return found


def has_traceparent(headers: Mapping[str, str] | None) -> bool:
    """Whether the caller set a `traceparent` header (in any case) on an event."""
    return bool(headers) and any(key.lower() == TRACEPARENT_HEADER for key in headers or ())


def _server_attributes(target: str) -> dict[str, Any]:
    """`server.address` and `server.port` of a `HOST:PORT` target."""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return {"server.address": target}
    return {"server.address": host.strip("[]"), "server.port": int(port)}


def _fail(span: Span, error: BaseException) -> None:
    """Mark `span` failed by `error`: its status, `error.type`, and the exception as an event."""
    from opentelemetry.trace import Status, StatusCode

    code = getattr(error, "code", None)
    error_type = getattr(code, "name", None) or type(error).__qualname__
    span.set_attribute("error.type", error_type)
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class Publishing:
    """The PRODUCER spans of events on their way to the broker, one per event.

    Used as a context manager around the whole publish (all its attempts, and the
    wait of a publish joined to others): `specs` are the events with their trace
    headers, `done(results)` records what the broker answered, and an exception
    leaving the block ends every span with an error status.

    Args:
        specs: The events (each already with its id, when the client makes one).
        target: The broker's `HOST:PORT`; None when it is not called (`publish_in`).
        batch: True for `publish_batch`: the events' spans are of operation type
            `create`, and one CLIENT span `send` stands for the call and links them.
        operation: `messaging.operation.name`: the client's call.

    """

    __slots__ = ("_batch_span", "_spans", "specs")

    def __init__(
        self,
        specs: list[EventSpec],
        *,
        target: str | None,
        batch: bool = False,
        operation: str = "publish",
    ) -> None:
        self.specs = specs
        self._spans: list[Span] = []
        self._batch_span: Span | None = None
        found = tracer()
        if found is not None:
            self.specs = list(specs)  # the caller's list stays as it was
            self._start(found, target, batch, operation)

    def _start(self, found: Tracer, target: str | None, batch: bool, operation: str) -> None:
        from opentelemetry import propagate, trace

        server = _server_attributes(target) if target is not None else {}
        for index, spec in enumerate(self.specs):
            name = spec.name.lower()
            span = found.start_span(
                f"publish {name}",
                kind=trace.SpanKind.PRODUCER,
                attributes={
                    "messaging.system": SYSTEM,
                    "messaging.destination.name": name,
                    "messaging.operation.type": "create" if batch else "send",
                    "messaging.operation.name": operation,
                    **server,
                },
            )
            self._spans.append(span)
            if has_traceparent(spec.headers):
                continue  # the caller's own trace context travels as it set it
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            headers = dict(spec.headers or {})
            for key, value in carrier.items():
                headers.setdefault(key, value)
            self.specs[index] = dataclasses.replace(spec, headers=headers)
        if batch:
            # Named for its destination when all its events share one, as the conventions say.
            names = {spec.name.lower() for spec in self.specs}
            attributes: dict[str, Any] = {
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "batch_publish",
                "messaging.batch.message_count": len(self.specs),
                **server,
            }
            if len(names) == 1:
                attributes["messaging.destination.name"] = next(iter(names))
            self._batch_span = found.start_span(
                f"send {next(iter(names))}" if len(names) == 1 else "send",
                kind=trace.SpanKind.CLIENT,
                links=[trace.Link(span.get_span_context()) for span in self._spans],
                attributes=attributes,
            )

    def done(self, results: Sequence[PublishResult]) -> None:
        """Record the event ids the broker gave (and duplicates) on the events' spans."""
        for span, result in zip(self._spans, results, strict=False):
            span.set_attribute("messaging.message.id", result.event_id)
            if result.duplicate:
                span.set_attribute("messaging.eventbroker.duplicate", True)

    def __enter__(self) -> Publishing:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        spans = self._spans if self._batch_span is None else [*self._spans, self._batch_span]
        for span in spans:
            if exc is not None:
                _fail(span, exc)
            span.end()


class Processing:
    """The CONSUMER span `process {subscription}` of one delivery, current while it is open.

    Its parent is the trace context in the event's headers, so the publisher's
    trace goes on through the handlers; it also links to that context. Handlers
    run inside it (async ones in tasks that copy the context, sync ones in worker
    threads that do too), so the spans they make are its children.
    """

    __slots__ = ("_span", "_token")

    def __init__(self, subscription: str, message: Message) -> None:
        self._span: Span | None = None
        self._token: object = None
        found = tracer()
        if found is not None:
            self._span = self._start(found, subscription, message)

    @staticmethod
    def _start(found: Tracer, subscription: str, message: Message) -> Span:
        from opentelemetry import propagate, trace
        from opentelemetry.context import Context

        # Extracted into an empty context: without trace headers the span starts a
        # trace of its own rather than joining whatever was current in the consumer.
        # Header names are matched ignoring case, as the broker reads `traceparent`.
        carrier = {key.lower(): value for key, value in message.headers.items()}
        parent: Context = propagate.extract(carrier, context=Context())
        publisher = trace.get_current_span(parent).get_span_context()
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": message.name,
            "messaging.destination.subscription.name": subscription,
            "messaging.consumer.group.name": subscription,
            "messaging.message.id": message.event_id,
            "messaging.eventbroker.message.ack_id": message.ack_id,
            "messaging.eventbroker.message.delivery_attempt": message.attempt,
        }
        if message.ordering_key:
            attributes["messaging.eventbroker.message.ordering_key"] = message.ordering_key
        return found.start_span(
            f"process {subscription}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            links=[trace.Link(publisher)] if publisher.is_valid else None,
            attributes=attributes,
        )

    @property
    def span_context(self) -> SpanContext | None:
        """The process span's context, for the settle span to link to; None when off."""
        return self._span.get_span_context() if self._span is not None else None

    def failed(self, description: str, errors: Sequence[BaseException] = ()) -> None:
        """The delivery is nacked: an error status with `description`, each error as an event."""
        if self._span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        for error in errors:
            self._span.record_exception(error)
        first = errors[0] if errors else None
        self._span.set_attribute(
            "error.type", type(first).__qualname__ if first is not None else "nacked"
        )
        self._span.set_status(Status(StatusCode.ERROR, description))

    def __enter__(self) -> Processing:
        if self._span is not None:
            from opentelemetry import context, trace

            self._token = context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._span is None:
            return
        from opentelemetry import context

        if exc is not None:
            _fail(self._span, exc)
        context.detach(self._token)  # type: ignore[arg-type]  # the token attach gave
        self._span.end()


class Settling:
    """The CLIENT span of one Ack or Nack call, linking the process spans of what it settles.

    A root span: one call settles deliveries of many traces, which it links to.
    Nothing when tracing is off or no delivery in the call was traced.
    """

    __slots__ = ("_span",)

    def __init__(
        self,
        operation: str,
        subscription: str,
        count: int,
        links: Sequence[SpanContext | None],
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        self._span: Span | None = None
        found = tracer()
        traced = [link for link in links if link is not None]
        if found is None or not traced:
            return
        from opentelemetry import trace
        from opentelemetry.context import Context

        self._span = found.start_span(
            f"{operation} {subscription}",
            context=Context(),
            kind=trace.SpanKind.CLIENT,
            links=[trace.Link(link) for link in traced],
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "settle",
                "messaging.operation.name": operation,
                "messaging.destination.subscription.name": subscription,
                "messaging.consumer.group.name": subscription,
                "messaging.batch.message_count": count,
                **(attributes or {}),
            },
        )

    def failed(self, error: BaseException) -> None:
        """The call failed for good (the deliveries will come again)."""
        if self._span is not None:
            _fail(self._span, error)

    def not_applied(self, count: int) -> None:
        """Record how many of the call's ids the broker did not apply (lease lost)."""
        if self._span is not None and count:
            self._span.set_attribute("messaging.eventbroker.not_applied", count)

    def __enter__(self) -> Settling:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._span is None:
            return
        if exc is not None:
            _fail(self._span, exc)
        self._span.end()
