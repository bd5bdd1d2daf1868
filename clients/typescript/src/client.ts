/**
 * The client: publish plain JSON, run a consumer per subscription, manage
 * subscriptions. Everything goes through the generated grpc-js stub, which
 * stays at hand as `client.stub` for the calls this layer does not wrap.
 */
import { isDeepStrictEqual } from "node:util";

import {
  type CallOptions,
  type ChannelCredentials,
  type ClientOptions,
  credentials as grpcCredentials,
  Metadata,
  type ServiceError,
  status,
} from "@grpc/grpc-js";

import { type Consumer as ConsumerType, type ConsumerOptions, type Handler, Consumer } from "./consumer";
import {
  durationFromS,
  eventFromArgs,
  type PublishOptions,
  type PublishResult,
  publishResult,
  type Subscription,
  subscriptionFromProto,
} from "./convert";
import {
  ACK_DEADLINE,
  AT_LEAST_ONE_SECOND,
  ANY_DELAY,
  type DurationLike,
  formatDuration,
  parseDuration,
  UNLIMITED,
} from "./durations";
import { BrokerError, asBrokerError, invalidArgument } from "./errors";
import * as pb from "./gen/eventbroker/v1/broker";
import { type PublishBatching, Publisher, PUBLISH_TIMEOUT_S } from "./publisher";
import { tracedPublish } from "./tracing";

/** The target when none is given or set in `EVENTBROKER_TARGET`. */
export const DEFAULT_TARGET = "127.0.0.1:50051";
/** Deadline of one unary call unless `ClientConfig.timeout` says otherwise. */
export const DEFAULT_TIMEOUT_S = 30;
/**
 * Longest pause between grpc-js's reconnect attempts unless the channel options
 * say otherwise: 10 s, as the consumer's own backoff, instead of grpc-js's 120 s,
 * so a restarted broker is found again soon.
 */
export const MAX_RECONNECT_BACKOFF_MS = 10_000;
const MS_PER_S = 1000;

/** How to reach the broker. */
export interface ClientConfig {
  /** Bearer key, sent as `authorization: Bearer <key>`; default `EVENTBROKER_API_KEY`. */
  apiKey?: string;
  /** Channel credentials; default plaintext (`credentials.createSsl()` for TLS). */
  credentials?: ChannelCredentials;
  /** Deadline of each call (a duration: a number is seconds, or `"30s"`); default 30 s. */
  timeout?: DurationLike;
  /** Total time of a publish, its retries included (default 30 s); `PublishOptions.timeout` overrides it. */
  publishTimeout?: DurationLike;
  /**
   * Joining publishes made while another is in flight into one BatchPublish
   * (default on, with its bounds: `{maxEvents: 500, maxBytes: 1 MiB}`); `false`
   * sends every publish as its own call at once.
   */
  publishBatching?: PublishBatching | false;
  /** grpc-js channel options (keepalive, message sizes, interceptors, ...). */
  channelOptions?: Partial<ClientOptions>;
}

/**
 * The settings of a new subscription; unset ones take the broker's defaults.
 * Durations follow the one rule: a number is seconds, a string is `"30s"`,
 * `"5m"`, `"1 day"`, `"PT1H"`.
 */
export interface SubscriptionOptions {
  /** Time a consumer has to ack (default 30 s; 1 s .. 12 h). */
  ackDeadline?: DurationLike;
  /** Failed attempts before dead-lettering (default 20). */
  maxAttempts?: number;
  /** First retry delay of the exponential backoff (default 1 s). */
  minBackoff?: DurationLike;
  /** Longest retry delay (default 10 min). */
  maxBackoff?: DurationLike;
  /** An explicit retry table instead of the backoff: after attempt n, `retryDelays[n-1]`; the last repeats. */
  retryDelays?: readonly DurationLike[];
  /** Concurrency limit across all consumers; 0 (the default) means unlimited. */
  maxInFlight?: number;
  /** FIFO per ordering key. */
  ordered?: boolean;
  /**
   * Concurrency limit per key: at most this many deliveries of one key in
   * flight at once, across all consumers and brokers; 0 (the default) means
   * no cap. With `ordered`, only 0 or 1.
   */
  maxInFlightPerKey?: number;
  /** The header whose value is an event's key (for `ordered` and `maxInFlightPerKey`); default: its ordering key. */
  keyHeader?: string;
  /** Deliver every stored matching event, not only new ones. */
  fromBeginning?: boolean;
  /** How long acked and dead deliveries stay queryable (default 7 days). */
  retention?: DurationLike;
  /** Dead-letter deliveries of events older than this instead of delivering them (default: no limit). */
  maxAge?: DurationLike;
  /**
   * If a subscription of that name exists, return it as it is instead of
   * failing with ALREADY_EXISTS, so a program can declare the subscription it
   * needs each time it starts. When its settings differ from the ones asked
   * here, a warning names each one (`process.emitWarning`, type
   * `EventbrokerWarning`, code `EVENTBROKER_SUBSCRIPTION_DIFFERS`); nothing is
   * changed.
   */
  existOk?: boolean;
}

/** The settings `updateSubscription` changes: only those given; `null` removes a limit. */
export interface SubscriptionChanges {
  /** Name patterns, replacing the filter. */
  filter?: string | readonly string[];
  /** Time a consumer has to ack. */
  ackDeadline?: DurationLike;
  /** Failed attempts before dead-lettering. */
  maxAttempts?: number;
  /** First retry delay of the exponential backoff. */
  minBackoff?: DurationLike;
  /** Longest retry delay. */
  maxBackoff?: DurationLike;
  /** An explicit retry table (empty: the exponential backoff again). */
  retryDelays?: readonly DurationLike[];
  /** Concurrency limit across all consumers; null for none. */
  maxInFlight?: number | null;
  /** Concurrency limit per key across all consumers and brokers; null for none. */
  maxInFlightPerKey?: number | null;
  /** The header events are keyed by; null for their ordering key. */
  keyHeader?: string | null;
  /** How long acked and dead deliveries stay queryable. */
  retention?: DurationLike;
  /** Dead-letter deliveries of events older than this; null for no maximum age. */
  maxAge?: DurationLike | null;
}

/** Options of a nack. */
export interface NackOptions {
  /** Why, kept in the delivery's attempt history. */
  error?: string;
  /** Dead-letter now instead of retrying. */
  terminal?: boolean;
  /** Retry after this long (a number is seconds) instead of the subscription's backoff. */
  delay?: DurationLike;
}

/** The warning code of `createSubscription({existOk})` when the existing settings differ. */
export const SUBSCRIPTION_DIFFERS_WARNING = "EVENTBROKER_SUBSCRIPTION_DIFFERS";

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => unknown;

/**
 * A connection to the broker.
 *
 * ```ts
 * const client = new Client(); // EVENTBROKER_TARGET, default 127.0.0.1:50051
 * await client.publish("user.joined", { plan: "pro" }, { id: "signup-42", delay: "5m" });
 * ```
 */
export class Client {
  /** The generated grpc-js stub, for every RPC (with `metadata` carrying the key). */
  readonly stub: pb.EventBrokerServiceClient;
  /** Call metadata: the bearer key when there is one. */
  readonly metadata: Metadata;
  /** @internal */
  readonly publisher: Publisher;
  private readonly timeoutS: number;
  private readonly publishTimeoutS: number;
  private readonly target: string;

  constructor(target: string = process.env.EVENTBROKER_TARGET ?? DEFAULT_TARGET, config: ClientConfig = {}) {
    this.timeoutS = positive("timeout", config.timeout ?? DEFAULT_TIMEOUT_S);
    this.publishTimeoutS = positive("publishTimeout", config.publishTimeout ?? PUBLISH_TIMEOUT_S);
    this.target = target;
    this.stub = new pb.EventBrokerServiceClient(
      target,
      config.credentials ?? grpcCredentials.createInsecure(),
      { "grpc.max_reconnect_backoff_ms": MAX_RECONNECT_BACKOFF_MS, ...config.channelOptions },
    );
    this.metadata = new Metadata();
    const apiKey = config.apiKey ?? process.env.EVENTBROKER_API_KEY;
    if (apiKey) this.metadata.set("authorization", `Bearer ${apiKey}`);
    this.publisher = new Publisher(
      {
        publish: async (event, deadlineMs) =>
          publishResult(await this.unary(this.stub.publish, { event }, deadlineMs)),
        batchPublish: async (events, deadlineMs) =>
          (await this.unary(this.stub.batchPublish, { events }, deadlineMs)).results.map(publishResult),
      },
      config.publishBatching ?? {},
    );
  }

  /**
   * Publish one event. `data` is any JSON value (sent as `JSON.stringify`
   * would send it), or a Buffer / Uint8Array for binary data; `undefined` for none.
   * `options.delay` is seconds as a number, or `"5m"`, `"1 day"`, a `Date`.
   *
   * While another publish of this client is in flight, this one waits for it
   * and then goes with the others waiting in one BatchPublish (see
   * `ClientConfig.publishBatching`); its result and errors are its own either way.
   * Retried under the same event id while the broker is unreachable, until the
   * publish timeout. With OpenTelemetry on (see `tracing.ts`), a PRODUCER span
   * `publish {name}` covers it and its trace context goes in the headers.
   *
   * @throws BrokerError `INVALID_ARGUMENT` naming the bad field (`event.name`,
   *   `event.data.order.total` for a bigint) before anything is sent, or the
   *   broker's refusal.
   */
  async publish(name: string, data?: unknown, options: PublishOptions = {}): Promise<PublishResult> {
    const outgoing = eventFromArgs(name, data, options);
    const timeoutS = options.timeout === undefined ? this.publishTimeoutS : positive("timeout", options.timeout);
    const [result] = await tracedPublish([outgoing], (traced) => this.publisher.submit(traced, true, timeoutS), this.target);
    return result as PublishResult;
  }

  /**
   * Publish many events in one transaction: all are stored or none. Results in
   * order. Sent as one BatchPublish of its own (never joined with others).
   */
  async publishBatch(
    events: readonly { name: string; data?: unknown; options?: PublishOptions }[],
  ): Promise<PublishResult[]> {
    if (events.length === 0) throw invalidArgument("events", "at least one event is required");
    const outgoing = events.map((e, index) => eventFromArgs(e.name, e.data, e.options ?? {}, `events[${index}]`));
    return tracedPublish(outgoing, (traced) => this.publisher.submit(traced, false, this.publishTimeoutS), this.target, true);
  }

  /**
   * Create a durable subscription to the events matching `filter` (`user.*`,
   * `orders.>`). Resolves to the subscription with every setting filled in
   * (the existing one, with `existOk`).
   *
   * @throws RangeError A duration is out of its range (nothing was sent).
   * @throws BrokerError `ALREADY_EXISTS` without `existOk`, or the broker's refusal.
   */
  async createSubscription(
    name: string,
    filter: string | readonly string[],
    options: SubscriptionOptions = {},
  ): Promise<Subscription> {
    const subscription: pb.Subscription = {
      name,
      filter: typeof filter === "string" ? [filter] : [...filter],
      maxAttempts: options.maxAttempts ?? 0,
      maxInFlight: options.maxInFlight ?? 0,
      ordered: options.ordered ?? false,
      maxInFlightPerKey: options.maxInFlightPerKey ?? 0,
      keyHeader: options.keyHeader ?? "",
      startPosition: options.fromBeginning
        ? pb.StartPosition.START_POSITION_BEGINNING
        : pb.StartPosition.START_POSITION_UNSPECIFIED,
    };
    const asked = askedSettings(options);
    if (asked.ackDeadline !== undefined) subscription.ackDeadline = durationFromS(asked.ackDeadline);
    if (asked.retention !== undefined) subscription.retention = durationFromS(asked.retention);
    if (asked.maxAge !== undefined) subscription.maxAge = durationFromS(asked.maxAge);
    if (asked.minBackoff !== undefined || asked.maxBackoff !== undefined || asked.retryDelays !== undefined) {
      subscription.retryPolicy = { delays: (asked.retryDelays ?? []).map(durationFromS) };
      if (asked.minBackoff !== undefined) subscription.retryPolicy.minBackoff = durationFromS(asked.minBackoff);
      if (asked.maxBackoff !== undefined) subscription.retryPolicy.maxBackoff = durationFromS(asked.maxBackoff);
    }
    try {
      const response = await this.unary(this.stub.createSubscription, { subscription });
      return subscriptionFromProto(response.subscription);
    } catch (error) {
      if (!(options.existOk && error instanceof BrokerError && error.code === status.ALREADY_EXISTS)) throw error;
    }
    const existing = await this.getSubscription(name);
    const differences = settingDifferences(existing, { ...asked, filter: subscription.filter, ordered: options.ordered });
    if (differences.length > 0) {
      process.emitWarning(
        `subscription ${JSON.stringify(name)} exists with other settings than asked, kept as they are ` +
          `(updateSubscription changes them): ${differences.join("; ")}`,
        { type: "EventbrokerWarning", code: SUBSCRIPTION_DIFFERS_WARNING },
      );
    }
    return existing;
  }

  /**
   * Change the settings given, and only those (`ordered` and the start are fixed
   * at creation). `null` removes a limit: `maxInFlight`, `maxInFlightPerKey`,
   * `maxAge`; `keyHeader: null` keys events by their ordering key again. A raised
   * `maxInFlightPerKey` lets blocked deliveries through at once; a lowered one
   * takes no delivery back (a key drains down to it).
   *
   * @throws RangeError A duration is out of its range, or nothing is to change (nothing was sent).
   * @throws BrokerError `NOT_FOUND`, or the broker's refusal (`INVALID_ARGUMENT` naming the field).
   */
  async updateSubscription(name: string, changes: SubscriptionChanges): Promise<Subscription> {
    const subscription: pb.Subscription = {
      name,
      filter: [],
      maxAttempts: 0,
      maxInFlight: 0,
      ordered: false,
      startPosition: pb.StartPosition.START_POSITION_UNSPECIFIED,
      maxInFlightPerKey: 0,
      keyHeader: "",
    };
    const mask: string[] = [];
    if (changes.filter !== undefined) {
      subscription.filter = typeof changes.filter === "string" ? [changes.filter] : [...changes.filter];
      mask.push("filter");
    }
    const asked = askedSettings({
      ackDeadline: changes.ackDeadline,
      minBackoff: changes.minBackoff,
      maxBackoff: changes.maxBackoff,
      retention: changes.retention,
      retryDelays: changes.retryDelays,
      maxAge: changes.maxAge ?? undefined,
    });
    if (asked.ackDeadline !== undefined) {
      subscription.ackDeadline = durationFromS(asked.ackDeadline);
      mask.push("ack_deadline");
    }
    if (asked.retention !== undefined) {
      subscription.retention = durationFromS(asked.retention);
      mask.push("retention");
    }
    if (changes.maxAge !== undefined) {
      if (asked.maxAge !== undefined) subscription.maxAge = durationFromS(asked.maxAge);
      mask.push("max_age");
    }
    if (asked.minBackoff !== undefined || asked.maxBackoff !== undefined || asked.retryDelays !== undefined) {
      subscription.retryPolicy = { delays: (asked.retryDelays ?? []).map(durationFromS) };
      if (asked.minBackoff !== undefined) {
        subscription.retryPolicy.minBackoff = durationFromS(asked.minBackoff);
        mask.push("retry_policy.min_backoff");
      }
      if (asked.maxBackoff !== undefined) {
        subscription.retryPolicy.maxBackoff = durationFromS(asked.maxBackoff);
        mask.push("retry_policy.max_backoff");
      }
      if (asked.retryDelays !== undefined) mask.push("retry_policy.delays");
    }
    if (changes.maxAttempts !== undefined) {
      subscription.maxAttempts = changes.maxAttempts;
      mask.push("max_attempts");
    }
    if (changes.maxInFlight !== undefined) {
      subscription.maxInFlight = changes.maxInFlight ?? 0;
      mask.push("max_in_flight");
    }
    if (changes.maxInFlightPerKey !== undefined) {
      subscription.maxInFlightPerKey = changes.maxInFlightPerKey ?? 0;
      mask.push("max_in_flight_per_key");
    }
    if (changes.keyHeader !== undefined) {
      subscription.keyHeader = changes.keyHeader ?? "";
      mask.push("key_header");
    }
    if (mask.length === 0) throw new RangeError("updateSubscription: nothing to change; give at least one setting");
    const response = await this.unary(this.stub.updateSubscription, { subscription, updateMask: mask });
    return subscriptionFromProto(response.subscription);
  }

  /** The subscription called `name` (`NOT_FOUND` if there is none). */
  async getSubscription(name: string): Promise<Subscription> {
    const response = await this.unary(this.stub.getSubscription, { name });
    return subscriptionFromProto(response.subscription);
  }

  /** Delete a subscription and its pending deliveries. */
  async deleteSubscription(name: string): Promise<void> {
    await this.unary(this.stub.deleteSubscription, { name });
  }

  /**
   * Start a consumer of `subscription` that runs `handler(message, context)` for
   * each delivery: resolved, the delivery is acked; thrown, it is nacked (retried
   * after the subscription's backoff, or after `RetryError`'s delay; a
   * `TerminalError` dead-letters it). At most `maxOutstanding` handlers run at
   * once; acks are batched, leases renewed, the stream reconnected, and the
   * consumer drains on SIGTERM/SIGINT. Await `ready` to know it is attached;
   * `close()` lets running handlers finish and detaches.
   */
  subscribe(subscription: string, handler: Handler, options: ConsumerOptions = {}): ConsumerType {
    return new Consumer(this, subscription, handler, options);
  }

  /** Acknowledge deliveries; resolves to the ack ids that were not applied. */
  async ack(ackIds: readonly string[]): Promise<string[]> {
    const response = await this.unary(this.stub.ack, { ackIds: [...ackIds] });
    return response.notAppliedAckIds;
  }

  /** Give deliveries back for a retry (or dead-letter them with `terminal`); resolves to the ids not applied. */
  async nack(ackIds: readonly string[], options: NackOptions = {}): Promise<string[]> {
    const request: pb.NackRequest = {
      ackIds: [...ackIds],
      terminal: options.terminal ?? false,
      error: options.error ?? "",
    };
    if (options.delay !== undefined) request.delay = durationFromS(parseDuration(options.delay, "delay", ANY_DELAY));
    const response = await this.unary(this.stub.nack, request);
    return response.notAppliedAckIds;
  }

  /** Keep leases for `extension` from now (a number is seconds; 1 s .. 12 h); resolves to the ids not extended. */
  async extendAckDeadline(ackIds: readonly string[], extension: DurationLike): Promise<string[]> {
    const seconds = parseDuration(extension, "extension", ACK_DEADLINE);
    const response = await this.unary(this.stub.extendAckDeadline, {
      ackIds: [...ackIds],
      extension: durationFromS(seconds),
    });
    return response.notAppliedAckIds;
  }

  /** Close the channel; publishes still waiting are refused, calls still running end with CANCELLED. */
  close(): void {
    this.publisher.close();
    this.stub.close();
  }

  /**
   * Call a unary method of the stub as a promise; a failure rejects with a
   * BrokerError. The call's deadline is the client's timeout, or `deadlineMs`
   * (epoch milliseconds) if sooner.
   */
  unary<Req, Res>(method: UnaryMethod<Req, Res>, request: Req, deadlineMs = Infinity): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      method.call(
        this.stub,
        request,
        this.metadata,
        { deadline: Math.min(Date.now() + this.timeoutS * MS_PER_S, deadlineMs) },
        (error: ServiceError | null, response: Res) => {
          if (error) reject(asBrokerError(error));
          else resolve(response);
        },
      );
    });
  }
}

/** The settings a createSubscription asked for, durations in seconds. */
interface AskedSettings {
  ackDeadline?: number;
  maxAttempts?: number;
  minBackoff?: number;
  maxBackoff?: number;
  retryDelays?: number[];
  maxInFlight?: number;
  maxInFlightPerKey?: number;
  keyHeader?: string;
  retention?: number;
  maxAge?: number;
}

function askedSettings(options: SubscriptionOptions): AskedSettings {
  const asked: AskedSettings = {};
  if (options.ackDeadline !== undefined) asked.ackDeadline = parseDuration(options.ackDeadline, "ackDeadline", ACK_DEADLINE);
  if (options.minBackoff !== undefined) asked.minBackoff = parseDuration(options.minBackoff, "minBackoff", UNLIMITED);
  if (options.maxBackoff !== undefined) asked.maxBackoff = parseDuration(options.maxBackoff, "maxBackoff", UNLIMITED);
  if (options.retention !== undefined) asked.retention = parseDuration(options.retention, "retention", AT_LEAST_ONE_SECOND);
  if (options.maxAge !== undefined) asked.maxAge = parseDuration(options.maxAge, "maxAge", AT_LEAST_ONE_SECOND);
  if (options.retryDelays !== undefined) {
    asked.retryDelays = options.retryDelays.map((d, i) => parseDuration(d, `retryDelays[${i}]`, ANY_DELAY));
  }
  if (options.maxAttempts !== undefined) asked.maxAttempts = options.maxAttempts;
  if (options.maxInFlight !== undefined) asked.maxInFlight = options.maxInFlight;
  if (options.maxInFlightPerKey !== undefined) asked.maxInFlightPerKey = options.maxInFlightPerKey;
  if (options.keyHeader !== undefined) asked.keyHeader = options.keyHeader;
  return asked;
}

/** Each asked setting the existing subscription has otherwise, as `name: has X (asked Y)`. */
function settingDifferences(
  existing: Subscription,
  asked: AskedSettings & { filter: string[]; ordered: boolean | undefined },
): string[] {
  const differences: string[] = [];
  const seconds = (value: number | undefined): string => (value === undefined ? "none" : formatDuration(value));
  const compare = (name: string, has: unknown, wanted: unknown, show: (v: never) => string): void => {
    if (wanted === undefined || isDeepStrictEqual(has, wanted)) return;
    differences.push(`${name}: has ${show(has as never)} (asked ${show(wanted as never)})`);
  };
  const list = (values: readonly string[]): string => JSON.stringify(values);
  const delays = (values: readonly number[]): string => `[${values.map((v) => formatDuration(v)).join(", ")}]`;
  compare("filter", [...existing.filter].sort(), asked.filter.map((f) => f.toLowerCase()).sort(), list);
  compare("ackDeadline", existing.ackDeadline, asked.ackDeadline, seconds);
  compare("maxAttempts", existing.maxAttempts, asked.maxAttempts, String);
  compare("minBackoff", existing.minBackoff, asked.minBackoff, seconds);
  compare("maxBackoff", existing.maxBackoff, asked.maxBackoff, seconds);
  compare("retryDelays", existing.retryDelays, asked.retryDelays, delays);
  compare("maxInFlight", existing.maxInFlight, asked.maxInFlight, String);
  compare("ordered", existing.ordered, asked.ordered, String);
  compare("maxInFlightPerKey", existing.maxInFlightPerKey, asked.maxInFlightPerKey, String);
  compare("keyHeader", existing.keyHeader, asked.keyHeader, JSON.stringify);
  compare("retention", existing.retention, asked.retention, seconds);
  compare("maxAge", existing.maxAge, asked.maxAge, seconds);
  return differences;
}

function positive(name: string, value: DurationLike): number {
  const seconds = parseDuration(value, name, UNLIMITED);
  if (seconds <= 0) throw new RangeError(`${name} must be more than 0 s; got ${formatDuration(seconds)}`);
  return seconds;
}
