/**
 * The consumer runtime for long-lived services, on par with the Python
 * client's `Consumer`.
 *
 * One Subscribe stream delivers at most `maxOutstanding` deliveries at a time;
 * each runs the handler while the leaser keeps its lease (`leaser.ts`), and is
 * acked or nacked through the batching settler (`settler.ts`). A dropped
 * stream is reconnected with exponential backoff and jitter, forever, until
 * `close()`; errors that retrying cannot fix (unknown subscription, bad key)
 * end it by rejecting `closed`. On SIGTERM or SIGINT it drains: no new
 * deliveries are started, running handlers finish and are settled, then it
 * detaches. With OpenTelemetry on (`tracing.ts`), each delivery's handler runs
 * in a `process {subscription}` span continuing the publisher's trace.
 */
import { EventEmitter } from "node:events";
import { status } from "@grpc/grpc-js";
import type { Client } from "./client";
import { type Message } from "./convert";
import { type DurationLike } from "./durations";
import { BrokerError } from "./errors";
import { Leaser } from "./leaser";
import { Settler } from "./settler";
/** Subscribe's response headers, sent by the broker once the consumer is attached. */
export declare const ATTACHED_HEADER = "eventbroker-attached";
export declare const CONSUMER_HEADER = "eventbroker-consumer";
/** Deliveries held at once unless `ConsumerOptions.maxOutstanding` says otherwise. */
export declare const DEFAULT_MAX_OUTSTANDING = 100;
/** Time a handler may run unless `ConsumerOptions.handlerTimeout` says otherwise. */
export declare const DEFAULT_HANDLER_TIMEOUT_S = 30;
/**
 * Reconnect backoff: 0.1 s growing by 1.6 per failure up to 10 s (as gRPC's own
 * reconnect grows), plus up to half a second of jitter so consumers spread out.
 */
export declare const RECONNECT_INITIAL_S = 0.1;
export declare const RECONNECT_GROWTH = 1.6;
export declare const RECONNECT_MAX_S = 10;
export declare const RECONNECT_JITTER_S = 0.5;
/** A stream that lived this long, or delivered anything, was healthy: reconnect at once. */
export declare const HEALTHY_STREAM_S = 10;
/** Status codes that no retry can fix; they end the consumer. */
export declare const FATAL_CODES: ReadonlySet<status>;
/** Runs for one delivery: resolve to ack it; throw to nack it (see `Consumer`). */
export type Handler = (message: Message, context: Context) => unknown;
/** How a consumer attaches and runs its handler. */
export interface ConsumerOptions {
    /** Deliveries held, hence handlers running, at once (default 100, at most 10,000). */
    maxOutstanding?: number;
    /** Shown in attempt history and stats; default `host:pid`. */
    consumerName?: string;
    /**
     * How long the handler may run (a duration: a number is seconds, or `"10m"`;
     * default 30 s; `null` for no limit). Past it the delivery is nacked and
     * `context.signal` aborts; `context.extend()` moves it out. It may exceed the
     * subscription's ack deadline: while a handler runs, its lease is renewed.
     */
    handlerTimeout?: DurationLike | null;
    /**
     * Drain on these signals (default SIGTERM and SIGINT; `false` for none):
     * see `Consumer`.
     */
    handleSignals?: boolean | readonly NodeJS.Signals[];
}
/** What the consumer is attached as, each time it attaches. */
export interface Attachment {
    /** The consumer's id, as attempt history and `GetEvent` show it. */
    readonly consumerId: string;
}
/** Why the stream dropped, and when the consumer connects again. */
export interface Disconnection {
    readonly error: BrokerError;
    /** Seconds until the next attempt (0: at once, the stream was healthy). */
    readonly reconnectInS: number;
}
/** What a handler has at hand besides the message: the attempt, the deadline, more time. */
export declare class Context {
    /** The delivery as received. */
    readonly message: Message;
    private readonly leaser;
    private readonly consumer;
    private readonly onTimeoutMoved;
    /** Aborted when the handler's timeout passes or its lease is lost: a handler may stop early. */
    readonly signal: AbortSignal;
    /** @internal */
    timeoutAtMs: number;
    private readonly abortController;
    private deadlineAt;
    /** @internal */
    constructor(
    /** The delivery as received. */
    message: Message, leaser: Leaser, consumer: Consumer, timeoutS: number | null, onTimeoutMoved: () => void);
    /** Attempt number: 1 on the first delivery, 2 on the first retry, ... */
    get attempt(): number;
    /** When the lease ends unless acked or extended. */
    get deadline(): Date | undefined;
    /** True once the consumer is draining: a long handler may wrap up early. */
    get stopping(): boolean;
    /**
     * Keep the lease for `extension` from now (a number is seconds, or `"5m"`;
     * 1 s .. 12 h) and move the handler's timeout out as far.
     *
     * @returns false when the lease was already lost (expired or given to another
     *   consumer): the delivery will come again and this attempt's ack will not count.
     * @throws RangeError The extension is outside 1 s .. 12 h (nothing was sent).
     * @throws BrokerError The broker refused the call.
     */
    extend(extension: DurationLike): Promise<boolean>;
    /** @internal */
    abort(reason: Error): void;
}
/** The typed events of a `Consumer`. */
export interface ConsumerEvents {
    /** The broker attached the consumer (first time, and after each reconnect). */
    attached: [Attachment];
    /** The stream dropped; the consumer reconnects after `reconnectInS`. */
    disconnected: [Disconnection];
    /** A stop was asked for (close() or a signal): running handlers finish, then it detaches. */
    draining: [{
        readonly inFlight: number;
        readonly signal?: NodeJS.Signals;
    }];
    /** Something the operator may want to see: a settlement or renewal that failed, a handler that failed. */
    warning: [string, unknown];
}
/**
 * Runs a handler for each delivery of one subscription, acking and nacking for it.
 *
 * The handler's promise resolved: the delivery is acked. Thrown (or rejected,
 * or past its timeout): it is nacked with the error and retried after the
 * subscription's backoff; a `RetryError` with a delay retries after that delay;
 * a `TerminalError` dead-letters it at once. Deliveries come at least once:
 * handlers should be idempotent.
 *
 * Acks and nacks are sent in batches (up to 100 ids per call, 5 ms after the
 * first); leases of running handlers are renewed before they end, in one
 * `ExtendAckDeadline` call for all those due together; a dropped stream is
 * reconnected with exponential backoff and jitter. On SIGTERM or SIGINT (unless
 * `handleSignals: false`) every consumer of the process drains, and then the
 * process ends by that signal as it would have without them, unless the
 * application listens for the signal itself (then it decides).
 */
export declare class Consumer extends EventEmitter<ConsumerEvents> {
    private readonly client;
    private readonly handler;
    /** Resolves once the broker first attached this consumer; rejects if it ends before. */
    readonly ready: Promise<Attachment>;
    /** Resolves when the consumer has drained and detached after `close()`; rejects on a fatal error. */
    readonly closed: Promise<void>;
    /** The subscription consumed. */
    readonly subscription: string;
    /** @internal */
    readonly settler: Settler;
    /** @internal */
    readonly leaser: Leaser;
    private readonly maxOutstanding;
    private readonly consumerName;
    private readonly handlerTimeoutS;
    private readonly running;
    private stopRequested;
    private isAttached;
    private wakeStop;
    private readonly stopAsked;
    private readonly signals;
    /** @internal use `client.subscribe(...)`. */
    constructor(client: Client, subscription: string, handler: Handler, options?: ConsumerOptions);
    /** True while the broker has this consumer attached (false while reconnecting). */
    get attached(): boolean;
    /** True from a stop request on: the consumer is draining or has stopped. */
    get stopping(): boolean;
    /** Deliveries whose handler is running. */
    get inFlight(): number;
    /**
     * Stop taking deliveries, let running handlers finish and settle them, then
     * detach (deliveries received but not started are given back at once).
     * Resolves when done; rejects as `closed` does.
     */
    close(): Promise<void>;
    /** @internal */
    requestStop(signal?: NodeJS.Signals): void;
    private warn;
    /** Stream sessions until stopped; reconnect with backoff while retrying can help. */
    private run;
    /** One stream: ends on stop (after draining) or when the stream drops. */
    private session;
    private drain;
    private start;
    private deliver;
}
