import { type Message, type OutgoingEvent, type PublishResult } from "./convert";
/** The name of the tracer every span of this client comes from. */
export declare const TRACER_NAME = "eventbroker";
/** The W3C Trace Context headers. */
export declare const TRACEPARENT_HEADER = "traceparent";
export declare const TRACESTATE_HEADER = "tracestate";
/** `messaging.system` of every span. */
export declare const MESSAGING_SYSTEM = "eventbroker";
/** The attributes of the OpenTelemetry messaging semantic conventions, and this system's own. */
export declare const ATTRIBUTES: {
    readonly system: "messaging.system";
    readonly operationType: "messaging.operation.type";
    readonly operationName: "messaging.operation.name";
    readonly destination: "messaging.destination.name";
    readonly subscription: "messaging.destination.subscription.name";
    readonly consumerGroup: "messaging.consumer.group.name";
    readonly messageId: "messaging.message.id";
    readonly batchCount: "messaging.batch.message_count";
    readonly serverAddress: "server.address";
    readonly serverPort: "server.port";
    readonly errorType: "error.type";
    readonly ackId: "messaging.eventbroker.message.ack_id";
    readonly deliveryAttempt: "messaging.eventbroker.message.delivery_attempt";
    readonly orderingKey: "messaging.eventbroker.message.ordering_key";
    readonly duplicate: "messaging.eventbroker.duplicate";
    readonly terminal: "messaging.eventbroker.nack.terminal";
    readonly notApplied: "messaging.eventbroker.not_applied";
};
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
/** True when spans are made and trace context is sent: the API is installed and a provider registered. */
export declare function tracingEnabled(): boolean;
/**
 * Publish `events` through `send`, each in a PRODUCER span whose context goes
 * into the event's headers; without tracing, `send(events)` as it is. `batch`:
 * the events are one `publishBatch`, whose call gets a CLIENT span of its own.
 * `target` is the broker's `HOST:PORT`.
 */
export declare function tracedPublish(events: readonly OutgoingEvent[], send: (events: readonly OutgoingEvent[]) => Promise<PublishResult[]>, target: string, batch?: boolean): Promise<PublishResult[]>;
/**
 * Start the process span of a delivery: its parent is the trace context in
 * the event's headers (a new trace when there is none), which it also links to.
 * Undefined when tracing is off.
 */
export declare function startProcess(subscription: string, message: Message): DeliverySpan | undefined;
/**
 * Start the span of one Ack or Nack call for `count` deliveries, linking the
 * process spans in `links` (a root span: one call settles deliveries of many
 * traces). Undefined when tracing is off or no delivery of the call was traced.
 * `terminal`: a nack that dead-letters.
 */
export declare function startSettle(kind: SettleKind, subscription: string, count: number, links: readonly TraceLink[], terminal?: boolean): SettleSpan | undefined;
