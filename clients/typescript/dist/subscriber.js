"use strict";
Object.defineProperty(exports, "__esModule", { value: true });
exports.Subscriber = exports.DEFAULT_MAX_OUTSTANDING = exports.CONSUMER_HEADER = exports.ATTACHED_HEADER = void 0;
/**
 * The consumer side: one Subscribe stream, a handler run per delivery, an ack
 * when it resolves and a nack when it throws.
 */
const grpc_js_1 = require("@grpc/grpc-js");
const convert_1 = require("./convert");
const errors_1 = require("./errors");
/** Subscribe's response headers, sent by the broker once the consumer is attached. */
exports.ATTACHED_HEADER = "eventbroker-attached";
exports.CONSUMER_HEADER = "eventbroker-consumer";
/** Deliveries held at once unless `SubscribeOptions.maxOutstanding` says otherwise. */
exports.DEFAULT_MAX_OUTSTANDING = 100;
/** The broker's largest batch per stream message. */
const MAX_BATCH_SIZE = 100;
/**
 * One consumer attached to a subscription. `ready` resolves as soon as the
 * broker has attached it (before any delivery); `closed` resolves after
 * `close()` and rejects with a BrokerError if the stream fails (the broker went
 * away, the subscription was deleted): subscribe again to go on.
 */
class Subscriber {
    client;
    subscription;
    handler;
    options;
    /** Resolves once the broker has attached this consumer; rejects if the stream fails first. */
    ready;
    /** Resolves when the stream has ended after `close()`; rejects when it failed. */
    closed;
    call;
    running = new Set();
    stopping = false;
    constructor(client, subscription, handler, options) {
        this.client = client;
        this.subscription = subscription;
        this.handler = handler;
        this.options = options;
        const maxOutstanding = options.maxOutstanding ?? exports.DEFAULT_MAX_OUTSTANDING;
        this.call = client.stub.subscribe({
            subscription,
            maxOutstanding,
            maxBatchSize: Math.min(maxOutstanding, MAX_BATCH_SIZE),
            filter: [],
            consumerName: options.consumerName ?? "",
            jsonAsBinary: false,
        }, client.metadata);
        let attached = () => undefined;
        let attachFailed = () => undefined;
        this.ready = new Promise((resolve, reject) => {
            attached = resolve;
            attachFailed = reject;
        });
        this.closed = new Promise((resolve, reject) => {
            this.call.on("metadata", (metadata) => {
                if (metadata.get(exports.ATTACHED_HEADER)[0] === "1") {
                    attached({ consumerId: decodeURIComponent(String(metadata.get(exports.CONSUMER_HEADER)[0] ?? "")) });
                }
            });
            this.call.on("data", (response) => {
                // A broker without the attach headers is attached once it delivers.
                attached({ consumerId: "" });
                for (const delivery of response.deliveries)
                    this.start((0, convert_1.messageFromDelivery)(delivery));
            });
            this.call.on("error", (error) => {
                const failure = this.stopping && error.code === grpc_js_1.status.CANCELLED ? undefined : (0, errors_1.asBrokerError)(error);
                attachFailed(failure ?? new errors_1.BrokerError(grpc_js_1.status.CANCELLED, "closed before attaching"));
                if (failure === undefined)
                    resolve();
                else
                    reject(failure);
            });
            this.call.on("end", () => {
                attachFailed(new errors_1.BrokerError(grpc_js_1.status.UNAVAILABLE, "the broker ended the stream"));
                resolve();
            });
        });
        // Both stay observable through the properties; a caller that never awaits
        // one must not bring the process down with an unhandled rejection.
        this.ready.catch(() => undefined);
        this.closed.catch(() => undefined);
    }
    /**
     * Stop taking deliveries, let running handlers finish and settle them, then
     * detach (deliveries received but not started are given back at once).
     */
    async close() {
        this.stopping = true;
        while (this.running.size > 0)
            await Promise.allSettled([...this.running]);
        this.call.cancel();
        await this.closed;
    }
    start(message) {
        if (this.stopping)
            return;
        const task = this.handle(message).finally(() => this.running.delete(task));
        this.running.add(task);
    }
    async handle(message) {
        let settle;
        try {
            await this.handler(message);
            settle = this.client.ack([message.ackId]);
        }
        catch (error) {
            settle = this.client.nack([message.ackId], {
                error: error instanceof Error ? `${error.name}: ${error.message}` : String(error),
                terminal: error instanceof errors_1.TerminalError,
            });
        }
        try {
            await settle;
        }
        catch (error) {
            if (this.options.onSettleError)
                this.options.onSettleError(error, message);
            else
                process.emitWarning(`could not settle delivery ${message.ackId}: ${String(error)}`);
        }
    }
}
exports.Subscriber = Subscriber;
