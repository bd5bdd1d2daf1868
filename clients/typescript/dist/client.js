"use strict";
var __createBinding = (this && this.__createBinding) || (Object.create ? (function(o, m, k, k2) {
    if (k2 === undefined) k2 = k;
    var desc = Object.getOwnPropertyDescriptor(m, k);
    if (!desc || ("get" in desc ? !m.__esModule : desc.writable || desc.configurable)) {
      desc = { enumerable: true, get: function() { return m[k]; } };
    }
    Object.defineProperty(o, k2, desc);
}) : (function(o, m, k, k2) {
    if (k2 === undefined) k2 = k;
    o[k2] = m[k];
}));
var __setModuleDefault = (this && this.__setModuleDefault) || (Object.create ? (function(o, v) {
    Object.defineProperty(o, "default", { enumerable: true, value: v });
}) : function(o, v) {
    o["default"] = v;
});
var __importStar = (this && this.__importStar) || (function () {
    var ownKeys = function(o) {
        ownKeys = Object.getOwnPropertyNames || function (o) {
            var ar = [];
            for (var k in o) if (Object.prototype.hasOwnProperty.call(o, k)) ar[ar.length] = k;
            return ar;
        };
        return ownKeys(o);
    };
    return function (mod) {
        if (mod && mod.__esModule) return mod;
        var result = {};
        if (mod != null) for (var k = ownKeys(mod), i = 0; i < k.length; i++) if (k[i] !== "default") __createBinding(result, mod, k[i]);
        __setModuleDefault(result, mod);
        return result;
    };
})();
Object.defineProperty(exports, "__esModule", { value: true });
exports.Client = exports.DEFAULT_TIMEOUT_MS = exports.DEFAULT_TARGET = void 0;
/**
 * The client: publish plain JSON, run a handler per delivery, manage
 * subscriptions. Everything goes through the generated grpc-js stub, which
 * stays at hand as `client.stub` for the calls this layer does not wrap.
 */
const grpc_js_1 = require("@grpc/grpc-js");
const convert_1 = require("./convert");
const errors_1 = require("./errors");
const pb = __importStar(require("./gen/eventbroker/v1/broker"));
const subscriber_1 = require("./subscriber");
/** The target when none is given or set in `EVENTBROKER_TARGET`. */
exports.DEFAULT_TARGET = "127.0.0.1:50051";
/** Deadline of a unary call unless `ClientConfig.timeoutMs` says otherwise. */
exports.DEFAULT_TIMEOUT_MS = 30_000;
/**
 * A connection to the broker.
 *
 * ```ts
 * const client = new Client(); // EVENTBROKER_TARGET, default 127.0.0.1:50051
 * await client.publish("user.joined", { plan: "pro" }, { id: "signup-42" });
 * ```
 */
class Client {
    /** The generated grpc-js stub, for every RPC (with `metadata` carrying the key). */
    stub;
    /** Call metadata: the bearer key when there is one. */
    metadata;
    timeoutMs;
    constructor(target = process.env.EVENTBROKER_TARGET ?? exports.DEFAULT_TARGET, config = {}) {
        this.stub = new pb.EventBrokerServiceClient(target, config.credentials ?? grpc_js_1.credentials.createInsecure(), config.channelOptions);
        this.metadata = new grpc_js_1.Metadata();
        const apiKey = config.apiKey ?? process.env.EVENTBROKER_API_KEY;
        if (apiKey)
            this.metadata.set("authorization", `Bearer ${apiKey}`);
        this.timeoutMs = config.timeoutMs ?? exports.DEFAULT_TIMEOUT_MS;
    }
    /**
     * Publish one event. `data` is any JSON value (sent as `JSON.stringify` would
     * send it), or a Buffer / Uint8Array for binary data; `undefined` for none.
     * Rejects with a BrokerError naming the bad field when the broker refuses it.
     */
    async publish(name, data, options = {}) {
        const response = await this.unary(this.stub.publish, {
            event: (0, convert_1.eventFromArgs)(name, data, options),
        });
        return {
            eventId: response.eventId,
            status: response.status === pb.PublishStatus.PUBLISH_STATUS_DUPLICATE ? "DUPLICATE" : "CREATED",
        };
    }
    /** Publish many events in one transaction: all are stored or none. Results in order. */
    async publishBatch(events) {
        const response = await this.unary(this.stub.batchPublish, {
            events: events.map((e) => (0, convert_1.eventFromArgs)(e.name, e.data, e.options ?? {})),
        });
        return response.results.map((r) => ({
            eventId: r.eventId,
            status: r.status === pb.PublishStatus.PUBLISH_STATUS_DUPLICATE ? "DUPLICATE" : "CREATED",
        }));
    }
    /** Create a durable subscription to the events matching `filter` (`user.*`, `orders.>`). */
    async createSubscription(name, filter, options = {}) {
        const subscription = {
            name,
            filter: typeof filter === "string" ? [filter] : [...filter],
            maxAttempts: options.maxAttempts ?? 0,
            maxInFlight: options.maxInFlight ?? 0,
            ordered: options.ordered ?? false,
            startPosition: options.fromBeginning
                ? pb.StartPosition.START_POSITION_BEGINNING
                : pb.StartPosition.START_POSITION_UNSPECIFIED,
        };
        if (options.ackDeadlineMs !== undefined) {
            subscription.ackDeadline = (0, convert_1.durationFromMs)(options.ackDeadlineMs);
        }
        if (options.retryDelaysMs !== undefined) {
            subscription.retryPolicy = { delays: options.retryDelaysMs.map(convert_1.durationFromMs) };
        }
        const response = await this.unary(this.stub.createSubscription, { subscription });
        return response.subscription;
    }
    /** Delete a subscription and its pending deliveries. */
    async deleteSubscription(name) {
        await this.unary(this.stub.deleteSubscription, { name });
    }
    /**
     * Attach a consumer to `subscription` and run `handler` for each delivery:
     * resolved, the delivery is acked; thrown, it is nacked (retried after the
     * subscription's backoff; a `TerminalError` dead-letters it). At most
     * `maxOutstanding` handlers run at once. Await `ready` to know the consumer
     * is attached; `close()` lets running handlers finish and detaches.
     */
    subscribe(subscription, handler, options = {}) {
        return new subscriber_1.Subscriber(this, subscription, handler, options);
    }
    /** Acknowledge deliveries; resolves to the ack ids that were not applied. */
    async ack(ackIds) {
        const response = await this.unary(this.stub.ack, { ackIds: [...ackIds] });
        return response.notAppliedAckIds;
    }
    /** Give deliveries back for a retry (or dead-letter them with `terminal`). */
    async nack(ackIds, options = {}) {
        const request = {
            ackIds: [...ackIds],
            terminal: options.terminal ?? false,
            error: options.error ?? "",
        };
        if (options.delayMs !== undefined)
            request.delay = (0, convert_1.durationFromMs)(options.delayMs);
        const response = await this.unary(this.stub.nack, request);
        return response.notAppliedAckIds;
    }
    /** Close the channel; calls still running end with CANCELLED. */
    close() {
        this.stub.close();
    }
    /** Call a unary method of the stub as a promise; a failure rejects with a BrokerError. */
    unary(method, request) {
        return new Promise((resolve, reject) => {
            method.call(this.stub, request, this.metadata, { deadline: Date.now() + this.timeoutMs }, (error, response) => {
                if (error)
                    reject((0, errors_1.asBrokerError)(error));
                else
                    resolve(response);
            });
        });
    }
}
exports.Client = Client;
