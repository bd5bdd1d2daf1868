import { type DelayLike, type DurationLike } from "./durations";
import * as pb from "./gen/eventbroker/v1/broker";
import type { Duration } from "./gen/google/protobuf/duration";
/** Any JSON value: what `data` carries. */
export type JsonValue = null | boolean | number | string | JsonValue[] | {
    [key: string]: JsonValue;
};
/**
 * `data` as the JSON value the broker will store: exactly what
 * `JSON.stringify` would send (a Date becomes its ISO string, an `undefined`
 * property is left out, `toJSON` is called), so no value is dropped or
 * reshaped silently on the way. What JSON cannot hold, or what
 * `JSON.stringify` would silently turn into something else (a bigint, NaN or
 * Infinity, a Map or Set, a circular reference), is refused with a
 * `BrokerError` naming its path (`event.data.order.total`); nothing is sent.
 */
export declare function toJsonValue(data: unknown, path?: string): JsonValue;
/** A number of seconds as a Duration. */
export declare function durationFromS(seconds: number): Duration;
/** A Duration as seconds (undefined when unset). */
export declare function durationToS(duration: Duration | undefined): number | undefined;
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
    /**
     * Idempotency id: a second publish with it inside the dedup window is a
     * DUPLICATE. Without one the client makes one (a random UUID) before the
     * first send, so a retried publish is stored once.
     */
    id?: string;
    /**
     * When the event becomes deliverable (at most one year ahead): a duration
     * from now, where a bare number is **seconds** (`5`, `"5m"`, `"1 day"`,
     * `"500ms"`, `"PT5M"`), or an absolute time (a `Date`, or an ISO-8601 time).
     */
    delay?: DelayLike;
    /** -50..50, default 0: higher goes first among deliveries ready together. */
    priority?: number;
    /** FIFO per key on ordered subscriptions. */
    orderingKey?: string;
    /** String headers delivered with the event. */
    headers?: Record<string, string>;
    /** Content type of binary data (when `data` is a Buffer or Uint8Array). */
    contentType?: string;
    /**
     * Total time for this publish, its retries included (a duration; default the
     * client's `publishTimeout`, 30 s).
     */
    timeout?: DurationLike;
}
/** The broker's fixed rules for an event (SPEC section 3); its size limits are its own settings. */
export declare const NAME_RE: RegExp;
export declare const NAME_RULE = "must be 1 to 255 characters of letters, digits and . _ - / :";
export declare const PRIORITY_MIN = -50;
export declare const PRIORITY_MAX = 50;
export declare const ID_MAX_LENGTH = 255;
export declare const ORDERING_KEY_MAX_LENGTH = 255;
export declare const CONTENT_TYPE_MAX_LENGTH = 255;
export declare const HEADERS_MAX_COUNT = 64;
/** An event ready to send, with the size it counts against the broker's limits. */
export interface OutgoingEvent {
    readonly event: pb.Event;
    /** Bytes of name, data and headers, as the broker's event size limit counts them. */
    readonly sizeBytes: number;
}
/**
 * An event message from `publish`'s arguments, checked against the rules the
 * client knows for certain (name, priority, lengths, JSON data); its id is the
 * caller's or a new UUID. `path` is the request field it goes in (`event`,
 * `events[2]`), for the errors.
 *
 * @throws BrokerError `INVALID_ARGUMENT` naming the bad field; nothing was sent.
 */
export declare function eventFromArgs(name: string, data: unknown, options: PublishOptions, path?: string): OutgoingEvent;
/** The outcome of a publish. */
export interface PublishResult {
    /** The broker-assigned event id (the first event's id for a duplicate). */
    readonly eventId: string;
    /** `CREATED`: stored and fanned out; `DUPLICATE`: same id inside the dedup window. */
    readonly status: "CREATED" | "DUPLICATE";
    /**
     * How many subscriptions the event was delivered to: 0 when no filter matched
     * its name (stored, delivered to nobody: often a misspelt name), and 0 for a
     * duplicate (the first publish of that id reported its own count).
     */
    readonly matchedSubscriptions: number;
}
/** A publish result from the broker's answer. */
export declare function publishResult(result: pb.PublishResult | pb.PublishResponse): PublishResult;
/**
 * A subscription and every one of its settings, as the broker keeps them.
 * Durations are numbers of seconds, as everywhere in this client.
 */
export interface Subscription {
    readonly name: string;
    /** Name patterns: exact, `*` for one segment, `>` for the rest. */
    readonly filter: readonly string[];
    /** Seconds a consumer has to ack a delivery. */
    readonly ackDeadline: number;
    /** Failed attempts before dead-lettering. */
    readonly maxAttempts: number;
    /** First retry delay of the exponential backoff, in seconds. */
    readonly minBackoff: number | undefined;
    /** Longest retry delay, in seconds. */
    readonly maxBackoff: number | undefined;
    /** An explicit retry table in seconds (after attempt n, `retryDelays[n-1]`; the last repeats), or empty. */
    readonly retryDelays: readonly number[];
    /** Concurrency limit across all consumers; 0 for none. */
    readonly maxInFlight: number;
    /** FIFO per ordering key. */
    readonly ordered: boolean;
    /** Concurrency limit per key across all consumers; 0 for none. */
    readonly maxInFlightPerKey: number;
    /** The header whose value is an event's key; empty for its ordering key. */
    readonly keyHeader: string;
    /** Seconds acked and dead deliveries stay queryable. */
    readonly retention: number | undefined;
    /** Deliveries of events older than this many seconds are dead-lettered; undefined for no limit. */
    readonly maxAge: number | undefined;
    /** When it was created. */
    readonly createTime: Date | undefined;
}
/** A subscription message as a plain object (never undefined: a missing message is an error). */
export declare function subscriptionFromProto(subscription: pb.Subscription | undefined): Subscription;
