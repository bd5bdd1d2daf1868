/**
 * Conversion between plain values and the generated messages, in one place:
 * JSON data to and from `google.protobuf.Value`, milliseconds and Dates to and
 * from `Duration` and `Timestamp`, deliveries to `Message`s.
 */
import * as pb from "./gen/eventbroker/v1/broker";
import type { Duration } from "./gen/google/protobuf/duration";

/** Any JSON value: what `data` carries. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

const MS_PER_S = 1000;
const NS_PER_MS = 1_000_000;

/**
 * `data` as the JSON value the broker will store: exactly what
 * `JSON.stringify` would send (a Date becomes its ISO string, an `undefined`
 * property is left out), so no value is dropped or reshaped silently on the way.
 * A value JSON cannot hold (a function, a symbol, a bigint) is refused here.
 */
export function toJsonValue(data: unknown): JsonValue {
  const text = JSON.stringify(data);
  if (text === undefined) {
    throw new TypeError(`data must be a JSON value; got ${typeof data}`);
  }
  return JSON.parse(text) as JsonValue;
}

/** A non-negative number of milliseconds as a Duration. */
export function durationFromMs(ms: number): Duration {
  if (!Number.isFinite(ms) || ms < 0) {
    throw new RangeError(`a duration must be a finite number of milliseconds >= 0; got ${ms}`);
  }
  const whole = Math.floor(ms);
  return {
    seconds: Math.floor(whole / MS_PER_S),
    nanos: (whole % MS_PER_S) * NS_PER_MS + Math.round((ms - whole) * NS_PER_MS),
  };
}

/** A Duration as milliseconds (0 when unset). */
export function durationToMs(duration: Duration | undefined): number {
  return duration === undefined ? 0 : duration.seconds * MS_PER_S + duration.nanos / NS_PER_MS;
}

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
export function messageFromDelivery(delivery: pb.Delivery): Message {
  return {
    ackId: delivery.ackId,
    eventId: delivery.eventId,
    name: delivery.name,
    data: delivery.data as JsonValue | undefined,
    binaryData: delivery.binaryData,
    contentType: delivery.contentType,
    headers: delivery.headers,
    publishTime: delivery.publishTime,
    delayMs: durationToMs(delivery.delay),
    priority: delivery.priority,
    attempt: delivery.attempt,
    ackDeadline: delivery.ackDeadline,
    subscription: delivery.subscription,
    orderingKey: delivery.orderingKey,
    dedupId: delivery.dedupId,
  };
}

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
export function eventFromArgs(name: string, data: unknown, options: PublishOptions): pb.Event {
  const event: pb.Event = {
    name,
    contentType: options.contentType ?? "",
    headers: { ...options.headers },
    id: options.id ?? "",
    priority: options.priority ?? 0,
    orderingKey: options.orderingKey ?? "",
  };
  if (data instanceof Uint8Array) {
    event.binaryData = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  } else if (data !== undefined) {
    event.data = toJsonValue(data);
  }
  if (options.delay instanceof Date) {
    event.deliverAt = options.delay;
  } else if (options.delay !== undefined) {
    event.delay = durationFromMs(options.delay);
  }
  return event;
}
