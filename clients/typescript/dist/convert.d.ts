/**
 * Conversion between plain values and the generated messages, in one place:
 * JSON data to and from `google.protobuf.Value`, milliseconds and Dates to and
 * from `Duration` and `Timestamp`, deliveries to `Message`s.
 */
import * as pb from "./gen/eventbroker/v1/broker";
import type { Duration } from "./gen/google/protobuf/duration";
/** Any JSON value: what `data` carries. */
export type JsonValue = null | boolean | number | string | JsonValue[] | {
    [key: string]: JsonValue;
};
/**
 * `data` as the JSON value the broker will store: exactly what
 * `JSON.stringify` would send (a Date becomes its ISO string, an `undefined`
 * property is left out), so no value is dropped or reshaped silently on the way.
 * A value JSON cannot hold (a function, a symbol, a bigint) is refused here.
 */
export declare function toJsonValue(data: unknown): JsonValue;
/** A non-negative number of milliseconds as a Duration. */
export declare function durationFromMs(ms: number): Duration;
/** A Duration as milliseconds (0 when unset). */
export declare function durationToMs(duration: Duration | undefined): number;
/** One delivery, as a handler receives it. */
export interface Message {
    /** Id to ack or nack this delivery with (the layer does both for a handler). */
    readonly ackId: string;
    /** The broker-assigned event id. */
    readonly eventId: string;
    /** The event name, lower-cased. */
    readonly name: string;
    /** The JSON data (`undefined` when the event carried none, or carried binary data). */
    readonly data: JsonValue | undefined;
    /** Binary data, when the event was published with bytes. */
    readonly binaryData: Buffer | undefined;
    /** Content type of the payload. */
    readonly contentType: string;
    /** Headers given at publish. */
    readonly headers: Readonly<Record<string, string>>;
    /** When the event was published. */
    readonly publishTime: Date | undefined;
    /** The delay it was given, in milliseconds. */
    readonly delayMs: number;
    /** Priority given at publish. */
    readonly priority: number;
    /** Attempt number: 1 on the first delivery, 2 on the first retry, ... */
    readonly attempt: number;
    /** When this lease ends unless acked. */
    readonly ackDeadline: Date | undefined;
    /** The subscription it was delivered for. */
    readonly subscription: string;
    /** Ordering key given at publish ("" for none). */
    readonly orderingKey: string;
    /** The deduplication id given at publish ("" for none). */
    readonly dedupId: string;
}
/** A delivery as a Message. */
export declare function messageFromDelivery(delivery: pb.Delivery): Message;
/** How `publish` takes an event's options. */
export interface PublishOptions {
    /** Idempotency id: a second publish with it inside the dedup window is a DUPLICATE. */
    id?: string;
    /** Milliseconds from now, or an absolute time (at most one year ahead). */
    delay?: number | Date;
    /** -50..50, default 0: higher goes first among deliveries ready together. */
    priority?: number;
    /** FIFO per key on ordered subscriptions. */
    orderingKey?: string;
    /** String headers delivered with the event. */
    headers?: Record<string, string>;
    /** Content type of binary data (when `data` is a Buffer or Uint8Array). */
    contentType?: string;
}
/** An event message from `publish`'s arguments. */
export declare function eventFromArgs(name: string, data: unknown, options: PublishOptions): pb.Event;
