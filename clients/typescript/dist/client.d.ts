import { type CallOptions, type ChannelCredentials, type ClientOptions, Metadata, type ServiceError } from "@grpc/grpc-js";
import { type Consumer as ConsumerType, type ConsumerOptions, type Handler } from "./consumer";
import { type PublishOptions, type PublishResult, type Subscription } from "./convert";
import { type DurationLike } from "./durations";
import * as pb from "./gen/eventbroker/v1/broker";
import { type PublishBatching, Publisher } from "./publisher";
/** The target when none is given or set in `EVENTBROKER_TARGET`. */
export declare const DEFAULT_TARGET = "127.0.0.1:50051";
/** Deadline of one unary call unless `ClientConfig.timeout` says otherwise. */
export declare const DEFAULT_TIMEOUT_S = 30;
/**
 * Longest pause between grpc-js's reconnect attempts unless the channel options
 * say otherwise: 10 s, as the consumer's own backoff, instead of grpc-js's 120 s,
 * so a restarted broker is found again soon.
 */
export declare const MAX_RECONNECT_BACKOFF_MS = 10000;
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
export declare const SUBSCRIPTION_DIFFERS_WARNING = "EVENTBROKER_SUBSCRIPTION_DIFFERS";
type UnaryMethod<Req, Res> = (request: Req, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: Res) => void) => unknown;
/**
 * A connection to the broker.
 *
 * ```ts
 * const client = new Client(); // EVENTBROKER_TARGET, default 127.0.0.1:50051
 * await client.publish("user.joined", { plan: "pro" }, { id: "signup-42", delay: "5m" });
 * ```
 */
export declare class Client {
    /** The generated grpc-js stub, for every RPC (with `metadata` carrying the key). */
    readonly stub: pb.EventBrokerServiceClient;
    /** Call metadata: the bearer key when there is one. */
    readonly metadata: Metadata;
    /** @internal */
    readonly publisher: Publisher;
    private readonly timeoutS;
    private readonly publishTimeoutS;
    private readonly target;
    constructor(target?: string, config?: ClientConfig);
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
    publish(name: string, data?: unknown, options?: PublishOptions): Promise<PublishResult>;
    /**
     * Publish many events in one transaction: all are stored or none. Results in
     * order. Sent as one BatchPublish of its own (never joined with others).
     */
    publishBatch(events: readonly {
        name: string;
        data?: unknown;
        options?: PublishOptions;
    }[]): Promise<PublishResult[]>;
    /**
     * Create a durable subscription to the events matching `filter` (`user.*`,
     * `orders.>`). Resolves to the subscription with every setting filled in
     * (the existing one, with `existOk`).
     *
     * @throws RangeError A duration is out of its range (nothing was sent).
     * @throws BrokerError `ALREADY_EXISTS` without `existOk`, or the broker's refusal.
     */
    createSubscription(name: string, filter: string | readonly string[], options?: SubscriptionOptions): Promise<Subscription>;
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
    updateSubscription(name: string, changes: SubscriptionChanges): Promise<Subscription>;
    /** The subscription called `name` (`NOT_FOUND` if there is none). */
    getSubscription(name: string): Promise<Subscription>;
    /** Delete a subscription and its pending deliveries. */
    deleteSubscription(name: string): Promise<void>;
    /**
     * Start a consumer of `subscription` that runs `handler(message, context)` for
     * each delivery: resolved, the delivery is acked; thrown, it is nacked (retried
     * after the subscription's backoff, or after `RetryError`'s delay; a
     * `TerminalError` dead-letters it). At most `maxOutstanding` handlers run at
     * once; acks are batched, leases renewed, the stream reconnected, and the
     * consumer drains on SIGTERM/SIGINT. Await `ready` to know it is attached;
     * `close()` lets running handlers finish and detaches.
     */
    subscribe(subscription: string, handler: Handler, options?: ConsumerOptions): ConsumerType;
    /** Acknowledge deliveries; resolves to the ack ids that were not applied. */
    ack(ackIds: readonly string[]): Promise<string[]>;
    /** Give deliveries back for a retry (or dead-letter them with `terminal`); resolves to the ids not applied. */
    nack(ackIds: readonly string[], options?: NackOptions): Promise<string[]>;
    /** Keep leases for `extension` from now (a number is seconds; 1 s .. 12 h); resolves to the ids not extended. */
    extendAckDeadline(ackIds: readonly string[], extension: DurationLike): Promise<string[]>;
    /** Close the channel; publishes still waiting are refused, calls still running end with CANCELLED. */
    close(): void;
    /**
     * Call a unary method of the stub as a promise; a failure rejects with a
     * BrokerError. The call's deadline is the client's timeout, or `deadlineMs`
     * (epoch milliseconds) if sooner.
     */
    unary<Req, Res>(method: UnaryMethod<Req, Res>, request: Req, deadlineMs?: number): Promise<Res>;
}
export {};
