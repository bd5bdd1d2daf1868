/**
 * Conversion between plain values and the generated messages, in one place:
 * JSON data to and from `google.protobuf.Value`, milliseconds and Dates to and
 * from `Duration` and `Timestamp`, deliveries to `Message`s.
 */
import { randomUUID } from "node:crypto";

import { type DelayLike, type DurationLike, parseDelay } from "./durations";
import { invalidArgument } from "./errors";
import * as pb from "./gen/eventbroker/v1/broker";
import type { Duration } from "./gen/google/protobuf/duration";

/** Any JSON value: what `data` carries. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

const MS_PER_S = 1000;
const NS_PER_MS = 1_000_000;
const NS_PER_S = 1_000_000_000;
const IDENTIFIER_RE = /^[A-Za-z_$][\w$]*$/;

/**
 * `data` as the JSON value the broker will store: exactly what
 * `JSON.stringify` would send (a Date becomes its ISO string, an `undefined`
 * property is left out, `toJSON` is called), so no value is dropped or
 * reshaped silently on the way. What JSON cannot hold, or what
 * `JSON.stringify` would silently turn into something else (a bigint, NaN or
 * Infinity, a Map or Set, a circular reference), is refused with a
 * `BrokerError` naming its path (`event.data.order.total`); nothing is sent.
 */
export function toJsonValue(data: unknown, path = "data"): JsonValue {
  const value = walkJson(data, "", path, new Set());
  if (value === undefined) {
    throw invalidArgument(path, `must be a JSON value; got ${data === undefined ? "undefined" : typeof data}`);
  }
  return value;
}

/** One value as JSON.stringify sees it; undefined where JSON.stringify leaves it out. */
function walkJson(input: unknown, key: string, path: string, open: Set<object>): JsonValue | undefined {
  let value = input;
  if ((typeof value === "object" && value !== null) || typeof value === "bigint") {
    const toJSON = (value as { toJSON?: unknown }).toJSON;
    if (typeof toJSON === "function") value = (toJSON as (key: string) => unknown).call(value, key);
  }
  if (value instanceof Number || value instanceof String || value instanceof Boolean) value = value.valueOf();
  switch (typeof value) {
    case "string":
    case "boolean":
      return value;
    case "number":
      if (!Number.isFinite(value)) {
        throw invalidArgument(path, `${value} is not a JSON number (JSON.stringify would send null)`);
      }
      return value;
    case "bigint":
      throw invalidArgument(
        path,
        `a bigint (${value}n) is not a JSON value: send it as a string, or as a number if it is below 2^53`,
      );
    case "undefined":
    case "function":
    case "symbol":
      return undefined;
  }
  if (value === null) return null;
  const object = value as object;
  if (object instanceof Map || object instanceof Set) {
    throw invalidArgument(
      path,
      `a ${object.constructor.name} is not a JSON value (JSON.stringify would send {}): convert it to an object or array`,
    );
  }
  if (open.has(object)) throw invalidArgument(path, "a circular reference is not a JSON value");
  open.add(object);
  try {
    if (Array.isArray(object)) {
      return object.map((item: unknown, index) => walkJson(item, String(index), `${path}[${index}]`, open) ?? null);
    }
    const result: { [key: string]: JsonValue } = {};
    for (const [field, item] of Object.entries(object)) {
      const fieldPath = IDENTIFIER_RE.test(field) ? `${path}.${field}` : `${path}[${JSON.stringify(field)}]`;
      const converted = walkJson(item, field, fieldPath, open);
      if (converted !== undefined) result[field] = converted;
    }
    return result;
  } finally {
    open.delete(object);
  }
}

/** A number of seconds as a Duration. */
export function durationFromS(seconds: number): Duration {
  const whole = Math.floor(seconds);
  return { seconds: whole, nanos: Math.round((seconds - whole) * NS_PER_S) };
}

/** A Duration as seconds (undefined when unset). */
export function durationToS(duration: Duration | undefined): number | undefined {
  return duration === undefined ? undefined : duration.seconds + duration.nanos / NS_PER_S;
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
export const NAME_RE = /^[a-z0-9._\-/:]{1,255}$/i;
export const NAME_RULE = "must be 1 to 255 characters of letters, digits and . _ - / :";
export const PRIORITY_MIN = -50;
export const PRIORITY_MAX = 50;
export const ID_MAX_LENGTH = 255;
export const ORDERING_KEY_MAX_LENGTH = 255;
export const CONTENT_TYPE_MAX_LENGTH = 255;
export const HEADERS_MAX_COUNT = 64;

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
export function eventFromArgs(name: string, data: unknown, options: PublishOptions, path = "event"): OutgoingEvent {
  if (typeof name !== "string" || !NAME_RE.test(name)) {
    throw invalidArgument(`${path}.name`, NAME_RULE + (name ? `; got ${JSON.stringify(name)}` : " (it is empty)"));
  }
  const priority = options.priority ?? 0;
  if (!Number.isInteger(priority) || priority < PRIORITY_MIN || priority > PRIORITY_MAX) {
    throw invalidArgument(`${path}.priority`, `must be an integer between ${PRIORITY_MIN} and ${PRIORITY_MAX}; got ${priority}`);
  }
  checkLength(`${path}.id`, options.id ?? "", ID_MAX_LENGTH);
  checkLength(`${path}.ordering_key`, options.orderingKey ?? "", ORDERING_KEY_MAX_LENGTH);
  checkLength(`${path}.content_type`, options.contentType ?? "", CONTENT_TYPE_MAX_LENGTH);
  const headers = { ...options.headers };
  const headerNames = Object.keys(headers);
  if (headerNames.length > HEADERS_MAX_COUNT) {
    throw invalidArgument(`${path}.headers`, `at most ${HEADERS_MAX_COUNT} headers; got ${headerNames.length}`);
  }
  let sizeBytes = Buffer.byteLength(name);
  for (const [header, text] of Object.entries(headers)) {
    if (typeof text !== "string") {
      throw invalidArgument(`${path}.headers[${JSON.stringify(header)}]`, `must be a string; got ${typeof text}`);
    }
    sizeBytes += Buffer.byteLength(header) + Buffer.byteLength(text);
  }
  const event: pb.Event = {
    name,
    contentType: options.contentType ?? "",
    headers,
    id: options.id || randomUUID(),
    priority,
    orderingKey: options.orderingKey ?? "",
  };
  if (data instanceof Uint8Array) {
    event.binaryData = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    sizeBytes += data.byteLength;
  } else if (data !== undefined) {
    event.data = toJsonValue(data, `${path}.data`);
    sizeBytes += Buffer.byteLength(JSON.stringify(event.data));
  }
  if (options.delay !== undefined) {
    let delay: number | Date;
    try {
      delay = parseDelay(options.delay, `${path}.delay`);
    } catch (error) {
      throw invalidArgument(`${path}.delay`, error instanceof Error ? error.message : String(error));
    }
    if (delay instanceof Date) event.deliverAt = delay;
    else event.delay = durationFromS(delay);
  }
  return { event, sizeBytes };
}

function checkLength(field: string, value: string, maximum: number): void {
  if (typeof value !== "string" || value.length > maximum) {
    throw invalidArgument(field, `at most ${maximum} characters; got ${typeof value === "string" ? value.length : typeof value}`);
  }
}

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
export function publishResult(result: pb.PublishResult | pb.PublishResponse): PublishResult {
  return {
    eventId: result.eventId,
    status: result.status === pb.PublishStatus.PUBLISH_STATUS_DUPLICATE ? "DUPLICATE" : "CREATED",
    matchedSubscriptions: result.matchedSubscriptions,
  };
}

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
export function subscriptionFromProto(subscription: pb.Subscription | undefined): Subscription {
  if (subscription === undefined) throw new Error("the broker answered without the subscription");
  return {
    name: subscription.name,
    filter: [...subscription.filter],
    ackDeadline: durationToS(subscription.ackDeadline) ?? 0,
    maxAttempts: subscription.maxAttempts,
    minBackoff: durationToS(subscription.retryPolicy?.minBackoff),
    maxBackoff: durationToS(subscription.retryPolicy?.maxBackoff),
    retryDelays: (subscription.retryPolicy?.delays ?? []).map((d) => durationToS(d) ?? 0),
    maxInFlight: subscription.maxInFlight,
    ordered: subscription.ordered,
    maxInFlightPerKey: subscription.maxInFlightPerKey,
    keyHeader: subscription.keyHeader,
    retention: durationToS(subscription.retention),
    maxAge: durationToS(subscription.maxAge),
    createTime: subscription.createTime,
  };
}
