/**
 * Trace context from publish to handler, through OpenTelemetry when the
 * application uses it.
 *
 * `@opentelemetry/api` is an optional peer dependency, loaded on first use.
 * When it is not installed, or no tracer provider is registered (the API's
 * global provider is still its no-op proxy), the functions here do nothing but
 * that check: no spans, no headers. A provider registered later is used from
 * then on.
 *
 * With a provider:
 * - each published event gets a PRODUCER span `publish {name}`, and its W3C
 *   `traceparent` and `tracestate` go into the event's headers (the same
 *   headers the Python client writes), unless the caller set `traceparent`
 *   (then the caller's trace context travels as it is) or the event already
 *   holds the most headers the broker takes;
 * - `publishBatch` (one call, one transaction) also makes a CLIENT span
 *   `send {name}` (`send` when its events have several names) linking the
 *   events' spans, which are then of operation type `create`;
 * - each delivery gets a CONSUMER span `process {subscription}` whose parent
 *   is the context in the event's headers, so publisher and handler are one
 *   trace, with a link to that context too; the handler runs in it;
 * - each Ack or Nack call gets a CLIENT span `ack {subscription}` or
 *   `nack {subscription}` linking the process spans of the deliveries it settles.
 *
 * Headers are written and read by the global propagator when the application
 * registered one, else by the W3C Trace Context format built in here, so an
 * application that registers a tracer provider alone (as the SDK's
 * `BasicTracerProvider` leaves it) still carries its traces through the broker.
 *
 * The spans' names and attributes are the Python client's, so traces read the
 * same whichever client made them: the messaging semantic conventions'
 * (`messaging.*`), and this system's own under `messaging.eventbroker.*`.
 *
 * No type of the API appears in what this module exports, so the package's
 * declarations compile where the API is not installed.
 */
import type * as Otel from "@opentelemetry/api";

import { HEADERS_MAX_COUNT, type Message, type OutgoingEvent, type PublishResult } from "./convert";
import { BrokerError } from "./errors";

type Api = typeof Otel;

/** The name of the tracer every span of this client comes from. */
export const TRACER_NAME = "eventbroker";
/** The W3C Trace Context headers. */
export const TRACEPARENT_HEADER = "traceparent";
export const TRACESTATE_HEADER = "tracestate";
/** `messaging.system` of every span. */
export const MESSAGING_SYSTEM = "eventbroker";

/** The attributes of the OpenTelemetry messaging semantic conventions, and this system's own. */
export const ATTRIBUTES = {
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
} as const;

/** A span to link to, opaque outside this module. */
export type TraceLink = object;

/** How acks and nacks are named in spans. */
export type SettleKind = "ack" | "nack";

/** The process span of one delivery. */
export interface DeliverySpan {
  /** The span, for the settle span of its batch to link to. */
  readonly link: TraceLink;
  /** Run `handler` inside the span's context (spans it makes are the span's children). */
  run<T>(handler: () => T): T;
  /** The handler resolved. */
  succeeded(): void;
  /** The handler threw, or did not finish in time. */
  failed(error: unknown): void;
}

/** The span of one Ack or Nack call. */
export interface SettleSpan {
  /** The call ended; `notApplied` ids were not settled (lease expired or moved on). */
  succeeded(notApplied: number): void;
  /** The call failed for good. */
  failed(error: unknown): void;
}

/** The API module: undefined until first asked for, null when it is not installed. */
let api: Api | null | undefined;

/** The API when tracing is on (the API installed and a tracer provider registered), else undefined. */
function tracingApi(): Api | undefined {
  if (api === undefined) {
    try {
      // Loaded here, not imported: the API is an optional peer dependency.
      api = require("@opentelemetry/api") as Api;
    } catch {
      api = null;
    }
  }
  if (api === null) return undefined;
  // The global provider is always the API's proxy; until an SDK registers a
  // provider, the proxy's delegate is the API's no-op provider.
  const provider = api.trace.getTracerProvider() as Partial<Otel.ProxyTracerProvider>;
  const delegate = provider.getDelegate?.() ?? provider;
  return delegate.constructor.name === "NoopTracerProvider" ? undefined : api;
}

/** True when spans are made and trace context is sent: the API is installed and a provider registered. */
export function tracingEnabled(): boolean {
  return tracingApi() !== undefined;
}

/**
 * Publish `events` through `send`, each in a PRODUCER span whose context goes
 * into the event's headers; without tracing, `send(events)` as it is. `batch`:
 * the events are one `publishBatch`, whose call gets a CLIENT span of its own.
 * `target` is the broker's `HOST:PORT`.
 */
export function tracedPublish(
  events: readonly OutgoingEvent[],
  send: (events: readonly OutgoingEvent[]) => Promise<PublishResult[]>,
  target: string,
  batch = false,
): Promise<PublishResult[]> {
  const otel = tracingApi();
  return otel === undefined ? send(events) : publishInSpans(otel, events, send, target, batch);
}

async function publishInSpans(
  otel: Api,
  events: readonly OutgoingEvent[],
  send: (events: readonly OutgoingEvent[]) => Promise<PublishResult[]>,
  target: string,
  batch: boolean,
): Promise<PublishResult[]> {
  const tracer = otel.trace.getTracer(TRACER_NAME);
  const propagator = headerPropagator(otel);
  const server = serverAttributes(target);
  const spans: Otel.Span[] = [];
  const traced = events.map((outgoing) => {
    const name = outgoing.event.name.toLowerCase();
    const span = tracer.startSpan(`publish ${name}`, {
      kind: otel.SpanKind.PRODUCER,
      attributes: {
        [ATTRIBUTES.system]: MESSAGING_SYSTEM,
        [ATTRIBUTES.destination]: name,
        [ATTRIBUTES.operationType]: batch ? "create" : "send",
        [ATTRIBUTES.operationName]: "publish",
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
    spans.push(
      tracer.startSpan(names.size === 1 ? `send ${only}` : "send", {
        kind: otel.SpanKind.CLIENT,
        links: spans.map((span) => ({ context: span.spanContext() })),
        attributes: {
          [ATTRIBUTES.system]: MESSAGING_SYSTEM,
          [ATTRIBUTES.operationType]: "send",
          [ATTRIBUTES.operationName]: "batch_publish",
          [ATTRIBUTES.batchCount]: events.length,
          ...(names.size === 1 && only !== undefined ? { [ATTRIBUTES.destination]: only } : {}),
          ...server,
        },
      }),
    );
  }
  try {
    const results = await send(traced);
    results.forEach((result, index) => {
      spans[index]?.setAttribute(ATTRIBUTES.messageId, result.eventId);
      if (result.status === "DUPLICATE") spans[index]?.setAttribute(ATTRIBUTES.duplicate, true);
    });
    return results;
  } catch (error) {
    for (const span of spans) recordFailure(otel, span, error);
    throw error;
  } finally {
    for (const span of spans) span.end();
  }
}

/** `server.address` and `server.port` of a `HOST:PORT` target. */
function serverAttributes(target: string): Otel.Attributes {
  const colon = target.lastIndexOf(":");
  const host = target.slice(0, colon);
  const port = target.slice(colon + 1);
  if (colon < 1 || !/^\d+$/.test(port)) return { [ATTRIBUTES.serverAddress]: target };
  return { [ATTRIBUTES.serverAddress]: host.replace(/^\[|\]$/g, ""), [ATTRIBUTES.serverPort]: Number(port) };
}

/**
 * The event with the span's trace context added to its headers, unless the
 * caller set `traceparent` (their context is kept whole) or there is no room
 * for more headers. Headers the caller set are never replaced (names compared
 * ignoring case, as the Python client compares them).
 */
function withTraceHeaders(
  otel: Api,
  propagator: Otel.TextMapPropagator,
  outgoing: OutgoingEvent,
  span: Otel.Span,
): OutgoingEvent {
  const headers = outgoing.event.headers;
  const callerSet = new Set(Object.keys(headers).map((header) => header.toLowerCase()));
  if (callerSet.has(TRACEPARENT_HEADER)) return outgoing;
  const carrier: Record<string, string> = {};
  propagator.inject(otel.trace.setSpan(otel.context.active(), span), carrier, otel.defaultTextMapSetter);
  const added = Object.entries(carrier).filter(([header]) => !callerSet.has(header.toLowerCase()));
  if (added.length === 0 || Object.keys(headers).length + added.length > HEADERS_MAX_COUNT) return outgoing;
  let sizeBytes = outgoing.sizeBytes;
  for (const [header, value] of added) sizeBytes += Buffer.byteLength(header) + Buffer.byteLength(value);
  return { event: { ...outgoing.event, headers: { ...headers, ...Object.fromEntries(added) } }, sizeBytes };
}

/**
 * Start the process span of a delivery: its parent is the trace context in
 * the event's headers (a new trace when there is none), which it also links to.
 * Undefined when tracing is off.
 */
export function startProcess(subscription: string, message: Message): DeliverySpan | undefined {
  const otel = tracingApi();
  if (otel === undefined) return undefined;
  const parent = headerPropagator(otel).extract(otel.ROOT_CONTEXT, message.headers, otel.defaultTextMapGetter);
  const creation = otel.trace.getSpanContext(parent);
  const span = otel.trace.getTracer(TRACER_NAME).startSpan(
    `process ${subscription}`,
    {
      kind: otel.SpanKind.CONSUMER,
      attributes: {
        [ATTRIBUTES.system]: MESSAGING_SYSTEM,
        [ATTRIBUTES.operationType]: "process",
        [ATTRIBUTES.operationName]: "process",
        [ATTRIBUTES.destination]: message.name,
        [ATTRIBUTES.subscription]: subscription,
        [ATTRIBUTES.consumerGroup]: subscription,
        [ATTRIBUTES.messageId]: message.eventId,
        [ATTRIBUTES.ackId]: message.ackId,
        [ATTRIBUTES.deliveryAttempt]: message.attempt,
        ...(message.orderingKey ? { [ATTRIBUTES.orderingKey]: message.orderingKey } : {}),
      },
      links: creation !== undefined && otel.isSpanContextValid(creation) ? [{ context: creation }] : [],
    },
    parent,
  );
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
export function startSettle(
  kind: SettleKind,
  subscription: string,
  count: number,
  links: readonly TraceLink[],
  terminal?: boolean,
): SettleSpan | undefined {
  if (links.length === 0) return undefined;
  const otel = tracingApi();
  if (otel === undefined) return undefined;
  const span = otel.trace.getTracer(TRACER_NAME).startSpan(
    `${kind} ${subscription}`,
    {
      kind: otel.SpanKind.CLIENT,
      attributes: {
        [ATTRIBUTES.system]: MESSAGING_SYSTEM,
        [ATTRIBUTES.operationType]: "settle",
        [ATTRIBUTES.operationName]: kind,
        [ATTRIBUTES.subscription]: subscription,
        [ATTRIBUTES.consumerGroup]: subscription,
        [ATTRIBUTES.batchCount]: count,
        ...(terminal === undefined ? {} : { [ATTRIBUTES.terminal]: terminal }),
      },
      links: links.map((link) => ({ context: link as Otel.SpanContext })),
    },
    otel.ROOT_CONTEXT,
  );
  return {
    succeeded: (notApplied) => {
      if (notApplied > 0) span.setAttribute(ATTRIBUTES.notApplied, notApplied);
      span.end();
    },
    failed: (error) => {
      recordFailure(otel, span, error);
      span.end();
    },
  };
}

/** Mark `span` failed by `error`: its status, `error.type` (the gRPC code's name, else the error's), the exception as an event. */
function recordFailure(otel: Api, span: Otel.Span, error: unknown): void {
  const message = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  const type = error instanceof BrokerError ? error.codeName : error instanceof Error ? error.name : typeof error;
  span.setAttribute(ATTRIBUTES.errorType, type);
  if (error instanceof Error) span.recordException(error);
  span.setStatus({ code: otel.SpanStatusCode.ERROR, message });
}

/** The built-in W3C propagator, made once. */
let builtIn: Otel.TextMapPropagator | undefined;

/** The global propagator when the application registered one, else W3C Trace Context. */
function headerPropagator(otel: Api): Otel.TextMapPropagator {
  if (otel.propagation.fields().length > 0) return otel.propagation;
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
function w3cTraceContext(otel: Api): Otel.TextMapPropagator {
  return {
    inject(context, carrier, setter) {
      const spanContext = otel.trace.getSpanContext(context);
      if (spanContext === undefined || !otel.isSpanContextValid(spanContext)) return;
      const flags = (spanContext.traceFlags & 0xff).toString(16).padStart(2, "0");
      setter.set(carrier, TRACEPARENT_HEADER, `00-${spanContext.traceId}-${spanContext.spanId}-${flags}`);
      const state = spanContext.traceState?.serialize();
      if (state) setter.set(carrier, TRACESTATE_HEADER, state);
    },
    extract(context, carrier, getter) {
      const traceparent = single(getter.get(carrier, TRACEPARENT_HEADER));
      const match = TRACEPARENT_RE.exec(traceparent?.trim() ?? "");
      if (match === null) return context;
      const [, version, traceId, spanId, flags, rest] = match as unknown as [string, string, string, string, string, string?];
      if (version === "ff" || (version === "00" && rest !== undefined)) return context;
      const tracestate = single(getter.get(carrier, TRACESTATE_HEADER));
      const spanContext: Otel.SpanContext = {
        traceId,
        spanId,
        traceFlags: parseInt(flags, 16),
        isRemote: true,
        ...(tracestate ? { traceState: otel.createTraceState(tracestate) } : {}),
      };
      return otel.isSpanContextValid(spanContext) ? otel.trace.setSpanContext(context, spanContext) : context;
    },
    fields: () => [TRACEPARENT_HEADER, TRACESTATE_HEADER],
  };
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(",") : value;
}
