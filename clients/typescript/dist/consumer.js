"use strict";
Object.defineProperty(exports, "__esModule", { value: true });
exports.Consumer = exports.Context = exports.FATAL_CODES = exports.HEALTHY_STREAM_S = exports.RECONNECT_JITTER_S = exports.RECONNECT_MAX_S = exports.RECONNECT_GROWTH = exports.RECONNECT_INITIAL_S = exports.DEFAULT_HANDLER_TIMEOUT_S = exports.DEFAULT_MAX_OUTSTANDING = exports.CONSUMER_HEADER = exports.ATTACHED_HEADER = void 0;
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
const node_events_1 = require("node:events");
const node_os_1 = require("node:os");
const grpc_js_1 = require("@grpc/grpc-js");
const convert_1 = require("./convert");
const durations_1 = require("./durations");
const errors_1 = require("./errors");
const leaser_1 = require("./leaser");
const settler_1 = require("./settler");
const tracing_1 = require("./tracing");
/** Subscribe's response headers, sent by the broker once the consumer is attached. */
exports.ATTACHED_HEADER = "eventbroker-attached";
exports.CONSUMER_HEADER = "eventbroker-consumer";
/** Deliveries held at once unless `ConsumerOptions.maxOutstanding` says otherwise. */
exports.DEFAULT_MAX_OUTSTANDING = 100;
/** The broker's most deliveries per stream message that the consumer asks for. */
const MAX_BATCH_SIZE = 100;
/** Time a handler may run unless `ConsumerOptions.handlerTimeout` says otherwise. */
exports.DEFAULT_HANDLER_TIMEOUT_S = 30;
/**
 * Reconnect backoff: 0.1 s growing by 1.6 per failure up to 10 s (as gRPC's own
 * reconnect grows), plus up to half a second of jitter so consumers spread out.
 */
exports.RECONNECT_INITIAL_S = 0.1;
exports.RECONNECT_GROWTH = 1.6;
exports.RECONNECT_MAX_S = 10;
exports.RECONNECT_JITTER_S = 0.5;
/** A stream that lived this long, or delivered anything, was healthy: reconnect at once. */
exports.HEALTHY_STREAM_S = 10;
/** Status codes that no retry can fix; they end the consumer. */
exports.FATAL_CODES = new Set([
    grpc_js_1.status.INVALID_ARGUMENT,
    grpc_js_1.status.NOT_FOUND,
    grpc_js_1.status.PERMISSION_DENIED,
    grpc_js_1.status.UNAUTHENTICATED,
    grpc_js_1.status.UNIMPLEMENTED,
]);
const DEFAULT_SIGNALS = ["SIGTERM", "SIGINT"];
const MS_PER_S = 1000;
/** What a handler has at hand besides the message: the attempt, the deadline, more time. */
class Context {
    message;
    leaser;
    consumer;
    onTimeoutMoved;
    /** Aborted when the handler's timeout passes or its lease is lost: a handler may stop early. */
    signal;
    /** @internal */
    timeoutAtMs;
    abortController = new AbortController();
    deadlineAt;
    /** @internal */
    constructor(
    /** The delivery as received. */
    message, leaser, consumer, timeoutS, onTimeoutMoved) {
        this.message = message;
        this.leaser = leaser;
        this.consumer = consumer;
        this.onTimeoutMoved = onTimeoutMoved;
        this.signal = this.abortController.signal;
        this.deadlineAt = message.ackDeadline;
        this.timeoutAtMs = timeoutS === null ? Infinity : performance.now() + timeoutS * MS_PER_S;
    }
    /** Attempt number: 1 on the first delivery, 2 on the first retry, ... */
    get attempt() {
        return this.message.attempt;
    }
    /** When the lease ends unless acked or extended. */
    get deadline() {
        return this.deadlineAt;
    }
    /** True once the consumer is draining: a long handler may wrap up early. */
    get stopping() {
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
    async extend(extension) {
        const seconds = (0, durations_1.parseDuration)(extension, "extension", durations_1.ACK_DEADLINE);
        const kept = await this.leaser.extend(this.message.ackId, seconds);
        if (!kept)
            return false;
        this.deadlineAt = new Date(Date.now() + seconds * MS_PER_S);
        this.timeoutAtMs = Math.max(this.timeoutAtMs, performance.now() + seconds * MS_PER_S);
        this.onTimeoutMoved();
        return true;
    }
    /** @internal */
    abort(reason) {
        this.abortController.abort(reason);
    }
}
exports.Context = Context;
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
class Consumer extends node_events_1.EventEmitter {
    client;
    handler;
    /** Resolves once the broker first attached this consumer; rejects if it ends before. */
    ready;
    /** Resolves when the consumer has drained and detached after `close()`; rejects on a fatal error. */
    closed;
    /** The subscription consumed. */
    subscription;
    /** @internal */
    settler;
    /** @internal */
    leaser;
    maxOutstanding;
    consumerName;
    handlerTimeoutS;
    running = new Set();
    stopRequested = false;
    isAttached = false;
    wakeStop = () => undefined;
    stopAsked;
    signals;
    /** @internal use `client.subscribe(...)`. */
    constructor(client, subscription, handler, options = {}) {
        super();
        this.client = client;
        this.handler = handler;
        const maxOutstanding = options.maxOutstanding ?? exports.DEFAULT_MAX_OUTSTANDING;
        if (!Number.isInteger(maxOutstanding) || maxOutstanding < 1) {
            throw new RangeError(`maxOutstanding must be a whole number of at least 1; got ${maxOutstanding}`);
        }
        this.subscription = subscription;
        this.maxOutstanding = maxOutstanding;
        this.consumerName = options.consumerName ?? `${(0, node_os_1.hostname)()}:${process.pid}`;
        const timeout = options.handlerTimeout === undefined ? exports.DEFAULT_HANDLER_TIMEOUT_S : options.handlerTimeout;
        this.handlerTimeoutS = timeout === null ? null : (0, durations_1.parseDuration)(timeout, "handlerTimeout", { minimumS: 0.001 });
        this.signals =
            options.handleSignals === false ? [] : options.handleSignals === true || options.handleSignals === undefined
                ? DEFAULT_SIGNALS
                : options.handleSignals;
        const warn = (message, error) => this.warn(message, error);
        this.settler = new settler_1.Settler({
            ack: (ids) => client.ack(ids),
            nack: (ids, nack) => client.nack(ids, { error: nack.error, terminal: nack.terminal, delay: nack.delayS }),
        }, warn, subscription);
        this.leaser = new leaser_1.Leaser((ids, seconds) => client.extendAckDeadline(ids, seconds), warn);
        this.stopAsked = new Promise((resolve) => (this.wakeStop = resolve));
        let attached = () => undefined;
        let neverAttached = () => undefined;
        this.ready = new Promise((resolve, reject) => {
            attached = resolve;
            neverAttached = reject;
        });
        this.on("attached", attached);
        this.closed = this.run().then(() => neverAttached(new errors_1.BrokerError(grpc_js_1.status.CANCELLED, "closed before attaching")), (error) => {
            neverAttached(error);
            throw error;
        });
        // Both stay observable through the properties; a caller that never awaits
        // one must not bring the process down with an unhandled rejection.
        this.ready.catch(() => undefined);
        this.closed.catch(() => undefined);
        if (this.signals.length > 0)
            signalWatch.add(this, this.signals);
    }
    /** True while the broker has this consumer attached (false while reconnecting). */
    get attached() {
        return this.isAttached;
    }
    /** True from a stop request on: the consumer is draining or has stopped. */
    get stopping() {
        return this.stopRequested;
    }
    /** Deliveries whose handler is running. */
    get inFlight() {
        return this.running.size;
    }
    /**
     * Stop taking deliveries, let running handlers finish and settle them, then
     * detach (deliveries received but not started are given back at once).
     * Resolves when done; rejects as `closed` does.
     */
    close() {
        this.requestStop();
        return this.closed;
    }
    /** @internal */
    requestStop(signal) {
        if (this.stopRequested)
            return;
        this.stopRequested = true;
        this.emit("draining", signal === undefined ? { inFlight: this.running.size } : { inFlight: this.running.size, signal });
        this.wakeStop();
    }
    warn(message, error) {
        if (this.listenerCount("warning") > 0)
            this.emit("warning", message, error);
        else
            process.emitWarning(error === undefined ? message : `${message}: ${String(error)}`, "EventbrokerWarning");
    }
    /** Stream sessions until stopped; reconnect with backoff while retrying can help. */
    async run() {
        let failures = 0;
        try {
            while (!this.stopRequested) {
                const outcome = await this.session();
                if (this.stopRequested)
                    break;
                const error = outcome.error;
                if (exports.FATAL_CODES.has(error.code))
                    throw error;
                let delayS = 0;
                if (outcome.healthy) {
                    failures = 0;
                }
                else {
                    failures += 1;
                    delayS =
                        Math.min(exports.RECONNECT_MAX_S, exports.RECONNECT_INITIAL_S * exports.RECONNECT_GROWTH ** (failures - 1)) +
                            Math.random() * exports.RECONNECT_JITTER_S;
                }
                this.emit("disconnected", { error, reconnectInS: delayS });
                if (delayS > 0)
                    await Promise.race([this.stopAsked, sleep(delayS * MS_PER_S)]);
            }
        }
        finally {
            this.stopRequested = true;
            await this.drain();
            this.leaser.close();
            signalWatch.delete(this);
        }
    }
    /** One stream: ends on stop (after draining) or when the stream drops. */
    session() {
        const openedMs = performance.now();
        let received = false;
        const call = this.client.stub.subscribe({
            subscription: this.subscription,
            maxOutstanding: this.maxOutstanding,
            maxBatchSize: Math.min(this.maxOutstanding, MAX_BATCH_SIZE),
            filter: [],
            consumerName: this.consumerName,
            jsonAsBinary: false,
        }, this.client.metadata);
        return new Promise((resolve) => {
            let failure;
            let ended = false;
            const finish = () => {
                if (ended)
                    return;
                ended = true;
                this.isAttached = false;
                const healthy = received || performance.now() - openedMs >= exports.HEALTHY_STREAM_S * MS_PER_S;
                resolve({ error: failure ?? new errors_1.BrokerError(grpc_js_1.status.UNAVAILABLE, "the broker ended the stream"), healthy });
            };
            call.on("metadata", (metadata) => {
                if (metadata.get(exports.ATTACHED_HEADER)[0] !== "1")
                    return;
                this.isAttached = true;
                this.emit("attached", { consumerId: decodeURIComponent(String(metadata.get(exports.CONSUMER_HEADER)[0] ?? "")) });
            });
            call.on("data", (response) => {
                received = true;
                for (const delivery of response.deliveries) {
                    if (!this.stopRequested)
                        this.start((0, convert_1.messageFromDelivery)(delivery));
                }
            });
            call.on("error", (error) => {
                failure = (0, errors_1.asBrokerError)(error);
            });
            call.on("status", finish); // after "error", for every way a call ends
            // On stop: settle what is in flight while the stream (and so the leases)
            // still stand; deliveries not yet started are given back when it closes.
            void this.stopAsked.then(async () => {
                if (ended)
                    return;
                await this.drain();
                call.cancel();
            });
        });
    }
    async drain() {
        while (this.running.size > 0)
            await Promise.allSettled([...this.running]);
        await this.settler.drain();
    }
    start(message) {
        const task = this.deliver(message).finally(() => this.running.delete(task));
        this.running.add(task);
    }
    async deliver(message) {
        this.leaser.hold(message.ackId, message.ackDeadline);
        let timer;
        let timedOut = () => undefined;
        const timeout = new Promise((_, reject) => (timedOut = reject));
        const arm = () => {
            clearTimeout(timer);
            if (context.timeoutAtMs === Infinity)
                return;
            timer = setTimeout(() => {
                const limit = (0, durations_1.formatDuration)(Math.round(context.timeoutAtMs - performance.now() + 0.5) / MS_PER_S);
                const error = new Error(`handler did not finish within its timeout (${limit} left at the end)`);
                error.name = "TimeoutError";
                timedOut(error);
            }, Math.max(0, context.timeoutAtMs - performance.now()));
        };
        const context = new Context(message, this.leaser, this, this.handlerTimeoutS, () => arm());
        const span = (0, tracing_1.startProcess)(this.subscription, message);
        const handle = () => this.handler(message, context);
        arm();
        try {
            await Promise.race([new Promise((resolve) => resolve(span ? span.run(handle) : handle())), timeout]);
            span?.succeeded();
            this.settler.ack(message.ackId, span?.link);
        }
        catch (error) {
            span?.failed(error);
            if (error instanceof Error && error.name === "TimeoutError")
                context.abort(error);
            if (!(error instanceof errors_1.TerminalError || error instanceof errors_1.RetryError)) {
                this.warn(`handler failed on ${message.name} ${message.eventId} (attempt ${message.attempt})`, error);
            }
            const nack = {
                error: error instanceof Error ? `${error.name}: ${error.message}` : String(error),
                terminal: error instanceof errors_1.TerminalError,
                ...(error instanceof errors_1.RetryError && error.delayS !== undefined ? { delayS: error.delayS } : {}),
            };
            this.settler.nack(message.ackId, nack, span?.link);
        }
        finally {
            clearTimeout(timer);
            this.leaser.release(message.ackId);
        }
    }
}
exports.Consumer = Consumer;
function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}
/**
 * The process's signal listeners for every consumer that drains on signals:
 * one listener per signal while any such consumer runs. On a signal, all of
 * them drain; then, if nothing else listens for it, the signal is raised again
 * so that the process ends as it would have without the consumers.
 */
const signalWatch = new (class SignalWatch {
    consumers = new Map();
    listening = new Map();
    add(consumer, signals) {
        this.consumers.set(consumer, signals);
        for (const signal of signals) {
            if (this.listening.has(signal))
                continue;
            const listener = () => void this.onSignal(signal);
            this.listening.set(signal, listener);
            process.on(signal, listener);
        }
    }
    delete(consumer) {
        this.consumers.delete(consumer);
        for (const [signal, listener] of this.listening) {
            if ([...this.consumers.values()].some((signals) => signals.includes(signal)))
                continue;
            process.removeListener(signal, listener);
            this.listening.delete(signal);
        }
    }
    async onSignal(signal) {
        // A second signal is not caught: it ends the process at once.
        for (const [caught, listener] of this.listening)
            process.removeListener(caught, listener);
        this.listening.clear();
        const draining = [...this.consumers].filter(([, signals]) => signals.includes(signal));
        for (const [consumer] of draining)
            consumer.requestStop(signal);
        await Promise.allSettled(draining.map(([consumer]) => consumer.closed));
        if (process.listenerCount(signal) === 0)
            process.kill(process.pid, signal);
    }
})();
