"use strict";
Object.defineProperty(exports, "__esModule", { value: true });
exports.ATTRIBUTES = exports.MESSAGING_SYSTEM = exports.TRACESTATE_HEADER = exports.TRACEPARENT_HEADER = exports.TRACER_NAME = void 0;
exports.tracingEnabled = tracingEnabled;
exports.tracedPublish = tracedPublish;
exports.startProcess = startProcess;
exports.startSettle = startSettle;
const convert_1 = require("./convert");
const errors_1 = require("./errors");
/** The name of the tracer every span of this client comes from. */
exports.TRACER_NAME = "eventbroker";
/** The W3C Trace Context headers. */
exports.TRACEPARENT_HEADER = "traceparent";
exports.TRACESTATE_HEADER = "tracestate";
/** `messaging.system` of every span. */
exports.MESSAGING_SYSTEM = "eventbroker";
/** The attributes of the OpenTelemetry messaging semantic conventions, and this system's own. */
exports.ATTRIBUTES = {
    system: "messaging.system",
    operationType: "messaging.operation.type",
    operationName: "messaging.operation.name",
    destination: "messaging.destination.name",
    subscription: "messaging.destination.subscription.name",
    consumerGroup: "messaging.consumer.group.name",
    messageId: "messaging.message.id",
    batchCount: "messaging.batch.message_count",
    serverAddress: "server.address",
    serverPort: "server.port",
    errorType: "error.type",
    ackId: "messaging.eventbroker.message.ack_id",
    deliveryAttempt: "messaging.eventbroker.message.delivery_attempt",
    orderingKey: "messaging.eventbroker.message.ordering_key",
    duplicate: "messaging.eventbroker.duplicate",
    terminal: "messaging.eventbroker.nack.terminal",
    notApplied: "messaging.eventbroker.not_applied",
};
/** The API module: undefined until first asked for, null when it is not installed. */
let api;
/** The API when tracing is on (the API installed and a tracer provider registered), else undefined. */
function tracingApi() {
    if (api === undefined) {
        try {
            // Loaded here, not imported: the API is an optional peer dependency.
            api = require("@opentelemetry/api");
        }
        catch {
            api = null;
        }
    }
    if (api === null)
        return undefined;
    // The global provider is always the API's proxy; until an SDK registers a
    // provider, the proxy's delegate is the API's no-op provider.
    const provider = api.trace.getTracerProvider();
    const delegate = provider.getDelegate?.() ?? provider;
    return delegate.constructor.name === "NoopTracerProvider" ? undefined : api;
}
/** True when spans are made and trace context is sent: the API is installed and a provider registered. */
function tracingEnabled() {
    return tracingApi() !== undefined;
}
/**
 * Publish `events` through `send`, each in a PRODUCER span whose context goes
 * into the event's headers; without tracing, `send(events)` as it is. `batch`:
 * the events are one `publishBatch`, whose call gets a CLIENT span of its own.
 * `target` is the broker's `HOST:PORT`.
 */
function tracedPublish(events, send, target, batch = false) {
    const otel = tracingApi();
    return otel === undefined ? send(events) : publishInSpans(otel, events, send, target, batch);
}
async function publishInSpans(otel, events, send, target, batch) {
    const tracer = otel.trace.getTracer(exports.TRACER_NAME);
    const propagator = headerPropagator(otel);
    const server = serverAttributes(target);
    const spans = [];
    const traced = events.map((outgoing) => {
        const name = outgoing.event.name.toLowerCase();
        const span = tracer.startSpan(`publish ${name}`, {
            kind: otel.SpanKind.PRODUCER,
            attributes: {
                [exports.ATTRIBUTES.system]: exports.MESSAGING_SYSTEM,
                [exports.ATTRIBUTES.destination]: name,
                [exports.ATTRIBUTES.operationType]: batch ? "create" : "send",
                [exports.ATTRIBUTES.operationName]: "publish",
                ...server,
            },
        });
        spans.push(span);
        return withTraceHeaders(otel, propagator, outgoing, span);
    });
    if (batch) {
        // Named for its destination when all its events share one, as the conventions say.
        const names = new Set(events.map((outgoing) => outgoing.event.name.toLowerCase()));
        const [only] = names;
        spans.push(tracer.startSpan(names.size === 1 ? `send ${only}` : "send", {
            kind: otel.SpanKind.CLIENT,
            links: spans.map((span) => ({ context: span.spanContext() })),
            attributes: {
                [exports.ATTRIBUTES.system]: exports.MESSAGING_SYSTEM,
                [exports.ATTRIBUTES.operationType]: "send",
                [exports.ATTRIBUTES.operationName]: "batch_publish",
                [exports.ATTRIBUTES.batchCount]: events.length,
                ...(names.size === 1 && only !== undefined ? { [exports.ATTRIBUTES.destination]: only } : {}),
                ...server,
            },
        }));
    }
    try {
        const results = await send(traced);
        results.forEach((result, index) => {
            spans[index]?.setAttribute(exports.ATTRIBUTES.messageId, result.eventId);
            if (result.status === "DUPLICATE")
                spans[index]?.setAttribute(exports.ATTRIBUTES.duplicate, true);
        });
        return results;
    }
    catch (error) {
        for (const span of spans)
            recordFailure(otel, span, error);
        throw error;
    }
    finally {
        for (const span of spans)
            span.end();
    }
}
/** `server.address` and `server.port` of a `HOST:PORT` target. */
function serverAttributes(target) {
    const colon = target.lastIndexOf(":");
    const host = target.slice(0, colon);
    const port = target.slice(colon + 1);
    if (colon < 1 || !/^\d+$/.test(port))
        return { [exports.ATTRIBUTES.serverAddress]: target };
    return { [exports.ATTRIBUTES.serverAddress]: host.replace(/^\[|\]$/g, ""), [exports.ATTRIBUTES.serverPort]: Number(port) };
}
/**
 * The event with the span's trace context added to its headers, unless the
 * caller set `traceparent` (their context is kept whole) or there is no room
 * for more headers. Headers the caller set are never replaced (names compared
 * ignoring case, as the Python client compares them).
 */
function withTraceHeaders(otel, propagator, outgoing, span) {
    const headers = outgoing.event.headers;
    const callerSet = new Set(Object.keys(headers).map((header) => header.toLowerCase()));
    if (callerSet.has(exports.TRACEPARENT_HEADER))
        return outgoing;
    const carrier = {};
    propagator.inject(otel.trace.setSpan(otel.context.active(), span), carrier, otel.defaultTextMapSetter);
    const added = Object.entries(carrier).filter(([header]) => !callerSet.has(header.toLowerCase()));
    if (added.length === 0 || Object.keys(headers).length + added.length > convert_1.HEADERS_MAX_COUNT)
        return outgoing;
    let sizeBytes = outgoing.sizeBytes;
    for (const [header, value] of added)
        sizeBytes += Buffer.byteLength(header) + Buffer.byteLength(value);
    return { event: { ...outgoing.event, headers: { ...headers, ...Object.fromEntries(added) } }, sizeBytes };
}
/**
 * Start the process span of a delivery: its parent is the trace context in
 * the event's headers (a new trace when there is none), which it also links to.
 * Undefined when tracing is off.
 */
function startProcess(subscription, message) {
    const otel = tracingApi();
    if (otel === undefined)
        return undefined;
    const parent = headerPropagator(otel).extract(otel.ROOT_CONTEXT, message.headers, otel.defaultTextMapGetter);
    const creation = otel.trace.getSpanContext(parent);
    const span = otel.trace.getTracer(exports.TRACER_NAME).startSpan(`process ${subscription}`, {
        kind: otel.SpanKind.CONSUMER,
        attributes: {
            [exports.ATTRIBUTES.system]: exports.MESSAGING_SYSTEM,
            [exports.ATTRIBUTES.operationType]: "process",
            [exports.ATTRIBUTES.operationName]: "process",
            [exports.ATTRIBUTES.destination]: message.name,
            [exports.ATTRIBUTES.subscription]: subscription,
            [exports.ATTRIBUTES.consumerGroup]: subscription,
            [exports.ATTRIBUTES.messageId]: message.eventId,
            [exports.ATTRIBUTES.ackId]: message.ackId,
            [exports.ATTRIBUTES.deliveryAttempt]: message.attempt,
            ...(message.orderingKey ? { [exports.ATTRIBUTES.orderingKey]: message.orderingKey } : {}),
        },
        links: creation !== undefined && otel.isSpanContextValid(creation) ? [{ context: creation }] : [],
    }, parent);
    const inSpan = otel.trace.setSpan(parent, span);
    return {
        link: span.spanContext(),
        run: (handler) => otel.context.with(inSpan, handler),
        succeeded: () => span.end(),
        failed: (error) => {
            recordFailure(otel, span, error);
            span.end();
        },
    };
}
/**
 * Start the span of one Ack or Nack call for `count` deliveries, linking the
 * process spans in `links` (a root span: one call settles deliveries of many
 * traces). Undefined when tracing is off or no delivery of the call was traced.
 * `terminal`: a nack that dead-letters.
 */
function startSettle(kind, subscription, count, links, terminal) {
    if (links.length === 0)
        return undefined;
    const otel = tracingApi();
    if (otel === undefined)
        return undefined;
    const span = otel.trace.getTracer(exports.TRACER_NAME).startSpan(`${kind} ${subscription}`, {
        kind: otel.SpanKind.CLIENT,
        attributes: {
            [exports.ATTRIBUTES.system]: exports.MESSAGING_SYSTEM,
            [exports.ATTRIBUTES.operationType]: "settle",
            [exports.ATTRIBUTES.operationName]: kind,
            [exports.ATTRIBUTES.subscription]: subscription,
            [exports.ATTRIBUTES.consumerGroup]: subscription,
            [exports.ATTRIBUTES.batchCount]: count,
            ...(terminal === undefined ? {} : { [exports.ATTRIBUTES.terminal]: terminal }),
        },
        links: links.map((link) => ({ context: link })),
    }, otel.ROOT_CONTEXT);
    return {
        succeeded: (notApplied) => {
            if (notApplied > 0)
                span.setAttribute(exports.ATTRIBUTES.notApplied, notApplied);
            span.end();
        },
        failed: (error) => {
            recordFailure(otel, span, error);
            span.end();
        },
    };
}
/** Mark `span` failed by `error`: its status, `error.type` (the gRPC code's name, else the error's), the exception as an event. */
function recordFailure(otel, span, error) {
    const message = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    const type = error instanceof errors_1.BrokerError ? error.codeName : error instanceof Error ? error.name : typeof error;
    span.setAttribute(exports.ATTRIBUTES.errorType, type);
    if (error instanceof Error)
        span.recordException(error);
    span.setStatus({ code: otel.SpanStatusCode.ERROR, message });
}
/** The built-in W3C propagator, made once. */
let builtIn;
/** The global propagator when the application registered one, else W3C Trace Context. */
function headerPropagator(otel) {
    if (otel.propagation.fields().length > 0)
        return otel.propagation;
    builtIn ??= w3cTraceContext(otel);
    return builtIn;
}
/** `version-traceid-spanid-flags`; a future version may append fields after another dash. */
const TRACEPARENT_RE = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;
/**
 * The W3C Trace Context format (https://www.w3.org/TR/trace-context/), as
 * `@opentelemetry/core`'s `W3CTraceContextPropagator` writes and reads it,
 * kept here so that the API stays the only (optional) dependency.
 */
function w3cTraceContext(otel) {
    return {
        inject(context, carrier, setter) {
            const spanContext = otel.trace.getSpanContext(context);
            if (spanContext === undefined || !otel.isSpanContextValid(spanContext))
                return;
            const flags = (spanContext.traceFlags & 0xff).toString(16).padStart(2, "0");
            setter.set(carrier, exports.TRACEPARENT_HEADER, `00-${spanContext.traceId}-${spanContext.spanId}-${flags}`);
            const state = spanContext.traceState?.serialize();
            if (state)
                setter.set(carrier, exports.TRACESTATE_HEADER, state);
        },
        extract(context, carrier, getter) {
            const traceparent = single(getter.get(carrier, exports.TRACEPARENT_HEADER));
            const match = TRACEPARENT_RE.exec(traceparent?.trim() ?? "");
            if (match === null)
                return context;
            const [, version, traceId, spanId, flags, rest] = match;
            if (version === "ff" || (version === "00" && rest !== undefined))
                return context;
            const tracestate = single(getter.get(carrier, exports.TRACESTATE_HEADER));
            const spanContext = {
                traceId,
                spanId,
                traceFlags: parseInt(flags, 16),
                isRemote: true,
                ...(tracestate ? { traceState: otel.createTraceState(tracestate) } : {}),
            };
            return otel.isSpanContextValid(spanContext) ? otel.trace.setSpanContext(context, spanContext) : context;
        },
        fields: () => [exports.TRACEPARENT_HEADER, exports.TRACESTATE_HEADER],
    };
}
function single(value) {
    return Array.isArray(value) ? value.join(",") : value;
}
