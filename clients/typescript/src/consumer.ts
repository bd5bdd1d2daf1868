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
import { hostname } from "node:os";

import { type ClientReadableStream, type Metadata, type ServiceError, status } from "@grpc/grpc-js";

import type { Client } from "./client";
import { type Message, messageFromDelivery } from "./convert";
import { ACK_DEADLINE, type DurationLike, formatDuration, parseDuration } from "./durations";
import { BrokerError, RetryError, TerminalError, asBrokerError } from "./errors";
import type * as pb from "./gen/eventbroker/v1/broker";
import { Leaser } from "./leaser";
import { Settler } from "./settler";
import { startProcess } from "./tracing";

/** Subscribe's response headers, sent by the broker once the consumer is attached. */
export const ATTACHED_HEADER = "eventbroker-attached";
export const CONSUMER_HEADER = "eventbroker-consumer";
/** Deliveries held at once unless `ConsumerOptions.maxOutstanding` says otherwise. */
export const DEFAULT_MAX_OUTSTANDING = 100;
/** The broker's most deliveries per stream message that the consumer asks for. */
const MAX_BATCH_SIZE = 100;
/** Time a handler may run unless `ConsumerOptions.handlerTimeout` says otherwise. */
export const DEFAULT_HANDLER_TIMEOUT_S = 30;
/**
 * Reconnect backoff: 0.1 s growing by 1.6 per failure up to 10 s (as gRPC's own
 * reconnect grows), plus up to half a second of jitter so consumers spread out.
 */
export const RECONNECT_INITIAL_S = 0.1;
export const RECONNECT_GROWTH = 1.6;
export const RECONNECT_MAX_S = 10;
export const RECONNECT_JITTER_S = 0.5;
/** A stream that lived this long, or delivered anything, was healthy: reconnect at once. */
export const HEALTHY_STREAM_S = 10;
/** Status codes that no retry can fix; they end the consumer. */
export const FATAL_CODES: ReadonlySet<status> = new Set([
  status.INVALID_ARGUMENT,
  status.NOT_FOUND,
  status.PERMISSION_DENIED,
  status.UNAUTHENTICATED,
  status.UNIMPLEMENTED,
]);
const DEFAULT_SIGNALS: readonly NodeJS.Signals[] = ["SIGTERM", "SIGINT"];
const MS_PER_S = 1000;

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
export class Context {
  /** Aborted when the handler's timeout passes or its lease is lost: a handler may stop early. */
  readonly signal: AbortSignal;
  /** @internal */
  timeoutAtMs: number;
  private readonly abortController = new AbortController();
  private deadlineAt: Date | undefined;

  /** @internal */
  constructor(
    /** The delivery as received. */
    readonly message: Message,
    private readonly leaser: Leaser,
    private readonly consumer: Consumer,
    timeoutS: number | null,
    private readonly onTimeoutMoved: () => void,
  ) {
    this.signal = this.abortController.signal;
    this.deadlineAt = message.ackDeadline;
    this.timeoutAtMs = timeoutS === null ? Infinity : performance.now() + timeoutS * MS_PER_S;
  }

  /** Attempt number: 1 on the first delivery, 2 on the first retry, ... */
  get attempt(): number {
    return this.message.attempt;
  }

  /** When the lease ends unless acked or extended. */
  get deadline(): Date | undefined {
    return this.deadlineAt;
  }

  /** True once the consumer is draining: a long handler may wrap up early. */
  get stopping(): boolean {
    return this.consumer.stopping;
  }

  /**
   * Keep the lease for `extension` from now (a number is seconds, or `"5m"`;
   * 1 s .. 12 h) and move the handler's timeout out as far.
   *
   * @returns false when the lease was already lost (expired or given to another
   *   consumer): the delivery will come again and this attempt's ack will not count.
   * @throws RangeError The extension is outside 1 s .. 12 h (nothing was sent).
   * @throws BrokerError The broker refused the call.
   */
  async extend(extension: DurationLike): Promise<boolean> {
    const seconds = parseDuration(extension, "extension", ACK_DEADLINE);
    const kept = await this.leaser.extend(this.message.ackId, seconds);
    if (!kept) return false;
    this.deadlineAt = new Date(Date.now() + seconds * MS_PER_S);
    this.timeoutAtMs = Math.max(this.timeoutAtMs, performance.now() + seconds * MS_PER_S);
    this.onTimeoutMoved();
    return true;
  }

  /** @internal */
  abort(reason: Error): void {
    this.abortController.abort(reason);
  }
}

/** The typed events of a `Consumer`. */
export interface ConsumerEvents {
  /** The broker attached the consumer (first time, and after each reconnect). */
  attached: [Attachment];
  /** The stream dropped; the consumer reconnects after `reconnectInS`. */
  disconnected: [Disconnection];
  /** A stop was asked for (close() or a signal): running handlers finish, then it detaches. */
  draining: [{ readonly inFlight: number; readonly signal?: NodeJS.Signals }];
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
export class Consumer extends EventEmitter<ConsumerEvents> {
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

  private readonly maxOutstanding: number;
  private readonly consumerName: string;
  private readonly handlerTimeoutS: number | null;
  private readonly running = new Set<Promise<void>>();
  private stopRequested = false;
  private isAttached = false;
  private wakeStop: () => void = () => undefined;
  private readonly stopAsked: Promise<void>;
  private readonly signals: readonly NodeJS.Signals[];

  /** @internal use `client.subscribe(...)`. */
  constructor(
    private readonly client: Client,
    subscription: string,
    private readonly handler: Handler,
    options: ConsumerOptions = {},
  ) {
    super();
    const maxOutstanding = options.maxOutstanding ?? DEFAULT_MAX_OUTSTANDING;
    if (!Number.isInteger(maxOutstanding) || maxOutstanding < 1) {
      throw new RangeError(`maxOutstanding must be a whole number of at least 1; got ${maxOutstanding}`);
    }
    this.subscription = subscription;
    this.maxOutstanding = maxOutstanding;
    this.consumerName = options.consumerName ?? `${hostname()}:${process.pid}`;
    const timeout = options.handlerTimeout === undefined ? DEFAULT_HANDLER_TIMEOUT_S : options.handlerTimeout;
    this.handlerTimeoutS = timeout === null ? null : parseDuration(timeout, "handlerTimeout", { minimumS: 0.001 });
    this.signals =
      options.handleSignals === false ? [] : options.handleSignals === true || options.handleSignals === undefined
        ? DEFAULT_SIGNALS
        : options.handleSignals;
    const warn = (message: string, error?: unknown): void => this.warn(message, error);
    this.settler = new Settler(
      {
        ack: (ids) => client.ack(ids),
        nack: (ids, nack) => client.nack(ids, { error: nack.error, terminal: nack.terminal, delay: nack.delayS }),
      },
      warn,
      subscription,
    );
    this.leaser = new Leaser((ids, seconds) => client.extendAckDeadline(ids, seconds), warn);
    this.stopAsked = new Promise<void>((resolve) => (this.wakeStop = resolve));

    let attached: (attachment: Attachment) => void = () => undefined;
    let neverAttached: (error: unknown) => void = () => undefined;
    this.ready = new Promise<Attachment>((resolve, reject) => {
      attached = resolve;
      neverAttached = reject;
    });
    this.on("attached", attached);
    this.closed = this.run().then(
      () => neverAttached(new BrokerError(status.CANCELLED, "closed before attaching")),
      (error: unknown) => {
        neverAttached(error);
        throw error;
      },
    );
    // Both stay observable through the properties; a caller that never awaits
    // one must not bring the process down with an unhandled rejection.
    this.ready.catch(() => undefined);
    this.closed.catch(() => undefined);
    if (this.signals.length > 0) signalWatch.add(this, this.signals);
  }

  /** True while the broker has this consumer attached (false while reconnecting). */
  get attached(): boolean {
    return this.isAttached;
  }

  /** True from a stop request on: the consumer is draining or has stopped. */
  get stopping(): boolean {
    return this.stopRequested;
  }

  /** Deliveries whose handler is running. */
  get inFlight(): number {
    return this.running.size;
  }

  /**
   * Stop taking deliveries, let running handlers finish and settle them, then
   * detach (deliveries received but not started are given back at once).
   * Resolves when done; rejects as `closed` does.
   */
  close(): Promise<void> {
    this.requestStop();
    return this.closed;
  }

  /** @internal */
  requestStop(signal?: NodeJS.Signals): void {
    if (this.stopRequested) return;
    this.stopRequested = true;
    this.emit("draining", signal === undefined ? { inFlight: this.running.size } : { inFlight: this.running.size, signal });
    this.wakeStop();
  }

  private warn(message: string, error?: unknown): void {
    if (this.listenerCount("warning") > 0) this.emit("warning", message, error);
    else process.emitWarning(error === undefined ? message : `${message}: ${String(error)}`, "EventbrokerWarning");
  }

  /** Stream sessions until stopped; reconnect with backoff while retrying can help. */
  private async run(): Promise<void> {
    let failures = 0;
    try {
      while (!this.stopRequested) {
        const outcome = await this.session();
        if (this.stopRequested) break;
        const error = outcome.error;
        if (FATAL_CODES.has(error.code)) throw error;
        let delayS = 0;
        if (outcome.healthy) {
          failures = 0;
        } else {
          failures += 1;
          delayS =
            Math.min(RECONNECT_MAX_S, RECONNECT_INITIAL_S * RECONNECT_GROWTH ** (failures - 1)) +
            Math.random() * RECONNECT_JITTER_S;
        }
        this.emit("disconnected", { error, reconnectInS: delayS });
        if (delayS > 0) await Promise.race([this.stopAsked, sleep(delayS * MS_PER_S)]);
      }
    } finally {
      this.stopRequested = true;
      await this.drain();
      this.leaser.close();
      signalWatch.delete(this);
    }
  }

  /** One stream: ends on stop (after draining) or when the stream drops. */
  private session(): Promise<{ error: BrokerError; healthy: boolean }> {
    const openedMs = performance.now();
    let received = false;
    const call: ClientReadableStream<pb.SubscribeResponse> = this.client.stub.subscribe(
      {
        subscription: this.subscription,
        maxOutstanding: this.maxOutstanding,
        maxBatchSize: Math.min(this.maxOutstanding, MAX_BATCH_SIZE),
        filter: [],
        consumerName: this.consumerName,
        jsonAsBinary: false,
      },
      this.client.metadata,
    );
    return new Promise((resolve) => {
      let failure: BrokerError | undefined;
      let ended = false;
      const finish = (): void => {
        if (ended) return;
        ended = true;
        this.isAttached = false;
        const healthy = received || performance.now() - openedMs >= HEALTHY_STREAM_S * MS_PER_S;
        resolve({ error: failure ?? new BrokerError(status.UNAVAILABLE, "the broker ended the stream"), healthy });
      };
      call.on("metadata", (metadata: Metadata) => {
        if (metadata.get(ATTACHED_HEADER)[0] !== "1") return;
        this.isAttached = true;
        this.emit("attached", { consumerId: decodeURIComponent(String(metadata.get(CONSUMER_HEADER)[0] ?? "")) });
      });
      call.on("data", (response: pb.SubscribeResponse) => {
        received = true;
        for (const delivery of response.deliveries) {
          if (!this.stopRequested) this.start(messageFromDelivery(delivery));
        }
      });
      call.on("error", (error: ServiceError) => {
        failure = asBrokerError(error) as BrokerError;
      });
      call.on("status", finish); // after "error", for every way a call ends
      // On stop: settle what is in flight while the stream (and so the leases)
      // still stand; deliveries not yet started are given back when it closes.
      void this.stopAsked.then(async () => {
        if (ended) return;
        await this.drain();
        call.cancel();
      });
    });
  }

  private async drain(): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running]);
    await this.settler.drain();
  }

  private start(message: Message): void {
    const task = this.deliver(message).finally(() => this.running.delete(task));
    this.running.add(task);
  }

  private async deliver(message: Message): Promise<void> {
    this.leaser.hold(message.ackId, message.ackDeadline);
    let timer: NodeJS.Timeout | undefined;
    let timedOut: (error: Error) => void = () => undefined;
    const timeout = new Promise<never>((_, reject) => (timedOut = reject));
    const arm = (): void => {
      clearTimeout(timer);
      if (context.timeoutAtMs === Infinity) return;
      timer = setTimeout(() => {
        const limit = formatDuration(Math.round(context.timeoutAtMs - performance.now() + 0.5) / MS_PER_S);
        const error = new Error(`handler did not finish within its timeout (${limit} left at the end)`);
        error.name = "TimeoutError";
        timedOut(error);
      }, Math.max(0, context.timeoutAtMs - performance.now()));
    };
    const context = new Context(message, this.leaser, this, this.handlerTimeoutS, () => arm());
    const span = startProcess(this.subscription, message);
    const handle = (): unknown => this.handler(message, context);
    arm();
    try {
      await Promise.race([new Promise((resolve) => resolve(span ? span.run(handle) : handle())), timeout]);
      span?.succeeded();
      this.settler.ack(message.ackId, span?.link);
    } catch (error) {
      span?.failed(error);
      if (error instanceof Error && error.name === "TimeoutError") context.abort(error);
      if (!(error instanceof TerminalError || error instanceof RetryError)) {
        this.warn(`handler failed on ${message.name} ${message.eventId} (attempt ${message.attempt})`, error);
      }
      const nack = {
        error: error instanceof Error ? `${error.name}: ${error.message}` : String(error),
        terminal: error instanceof TerminalError,
        ...(error instanceof RetryError && error.delayS !== undefined ? { delayS: error.delayS } : {}),
      };
      this.settler.nack(message.ackId, nack, span?.link);
    } finally {
      clearTimeout(timer);
      this.leaser.release(message.ackId);
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * The process's signal listeners for every consumer that drains on signals:
 * one listener per signal while any such consumer runs. On a signal, all of
 * them drain; then, if nothing else listens for it, the signal is raised again
 * so that the process ends as it would have without the consumers.
 */
const signalWatch = new (class SignalWatch {
  private readonly consumers = new Map<Consumer, readonly NodeJS.Signals[]>();
  private readonly listening = new Map<NodeJS.Signals, () => void>();

  add(consumer: Consumer, signals: readonly NodeJS.Signals[]): void {
    this.consumers.set(consumer, signals);
    for (const signal of signals) {
      if (this.listening.has(signal)) continue;
      const listener = (): void => void this.onSignal(signal);
      this.listening.set(signal, listener);
      process.on(signal, listener);
    }
  }

  delete(consumer: Consumer): void {
    this.consumers.delete(consumer);
    for (const [signal, listener] of this.listening) {
      if ([...this.consumers.values()].some((signals) => signals.includes(signal))) continue;
      process.removeListener(signal, listener);
      this.listening.delete(signal);
    }
  }

  private async onSignal(signal: NodeJS.Signals): Promise<void> {
    // A second signal is not caught: it ends the process at once.
    for (const [caught, listener] of this.listening) process.removeListener(caught, listener);
    this.listening.clear();
    const draining = [...this.consumers].filter(([, signals]) => signals.includes(signal));
    for (const [consumer] of draining) consumer.requestStop(signal);
    await Promise.allSettled(draining.map(([consumer]) => consumer.closed));
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  }
})();
