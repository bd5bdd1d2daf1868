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
exports.Client = exports.SUBSCRIPTION_DIFFERS_WARNING = exports.MAX_RECONNECT_BACKOFF_MS = exports.DEFAULT_TIMEOUT_S = exports.DEFAULT_TARGET = void 0;
/**
 * The client: publish plain JSON, run a consumer per subscription, manage
 * subscriptions. Everything goes through the generated grpc-js stub, which
 * stays at hand as `client.stub` for the calls this layer does not wrap.
 */
const node_util_1 = require("node:util");
const grpc_js_1 = require("@grpc/grpc-js");
const consumer_1 = require("./consumer");
const convert_1 = require("./convert");
const durations_1 = require("./durations");
const errors_1 = require("./errors");
const pb = __importStar(require("./gen/eventbroker/v1/broker"));
const publisher_1 = require("./publisher");
const tracing_1 = require("./tracing");
/** The target when none is given or set in `EVENTBROKER_TARGET`. */
exports.DEFAULT_TARGET = "127.0.0.1:50051";
/** Deadline of one unary call unless `ClientConfig.timeout` says otherwise. */
exports.DEFAULT_TIMEOUT_S = 30;
/**
 * Longest pause between grpc-js's reconnect attempts unless the channel options
 * say otherwise: 10 s, as the consumer's own backoff, instead of grpc-js's 120 s,
 * so a restarted broker is found again soon.
 */
exports.MAX_RECONNECT_BACKOFF_MS = 10_000;
const MS_PER_S = 1000;
/** The warning code of `createSubscription({existOk})` when the existing settings differ. */
exports.SUBSCRIPTION_DIFFERS_WARNING = "EVENTBROKER_SUBSCRIPTION_DIFFERS";
/**
 * A connection to the broker.
 *
 * ```ts
 * const client = new Client(); // EVENTBROKER_TARGET, default 127.0.0.1:50051
 * await client.publish("user.joined", { plan: "pro" }, { id: "signup-42", delay: "5m" });
 * ```
 */
class Client {
    /** The generated grpc-js stub, for every RPC (with `metadata` carrying the key). */
    stub;
    /** Call metadata: the bearer key when there is one. */
    metadata;
    /** @internal */
    publisher;
    timeoutS;
    publishTimeoutS;
    target;
    constructor(target = process.env.EVENTBROKER_TARGET ?? exports.DEFAULT_TARGET, config = {}) {
        this.timeoutS = positive("timeout", config.timeout ?? exports.DEFAULT_TIMEOUT_S);
        this.publishTimeoutS = positive("publishTimeout", config.publishTimeout ?? publisher_1.PUBLISH_TIMEOUT_S);
        this.target = target;
        this.stub = new pb.EventBrokerServiceClient(target, config.credentials ?? grpc_js_1.credentials.createInsecure(), { "grpc.max_reconnect_backoff_ms": exports.MAX_RECONNECT_BACKOFF_MS, ...config.channelOptions });
        this.metadata = new grpc_js_1.Metadata();
        const apiKey = config.apiKey ?? process.env.EVENTBROKER_API_KEY;
        if (apiKey)
            this.metadata.set("authorization", `Bearer ${apiKey}`);
        this.publisher = new publisher_1.Publisher({
            publish: async (event, deadlineMs) => (0, convert_1.publishResult)(await this.unary(this.stub.publish, { event }, deadlineMs)),
            batchPublish: async (events, deadlineMs) => (await this.unary(this.stub.batchPublish, { events }, deadlineMs)).results.map(convert_1.publishResult),
        }, config.publishBatching ?? {});
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
    async publish(name, data, options = {}) {
        const outgoing = (0, convert_1.eventFromArgs)(name, data, options);
        const timeoutS = options.timeout === undefined ? this.publishTimeoutS : positive("timeout", options.timeout);
        const [result] = await (0, tracing_1.tracedPublish)([outgoing], (traced) => this.publisher.submit(traced, true, timeoutS), this.target);
        return result;
    }
    /**
     * Publish many events in one transaction: all are stored or none. Results in
     * order. Sent as one BatchPublish of its own (never joined with others).
     */
    async publishBatch(events) {
        if (events.length === 0)
            throw (0, errors_1.invalidArgument)("events", "at least one event is required");
        const outgoing = events.map((e, index) => (0, convert_1.eventFromArgs)(e.name, e.data, e.options ?? {}, `events[${index}]`));
        return (0, tracing_1.tracedPublish)(outgoing, (traced) => this.publisher.submit(traced, false, this.publishTimeoutS), this.target, true);
    }
    /**
     * Create a durable subscription to the events matching `filter` (`user.*`,
     * `orders.>`). Resolves to the subscription with every setting filled in
     * (the existing one, with `existOk`).
     *
     * @throws RangeError A duration is out of its range (nothing was sent).
     * @throws BrokerError `ALREADY_EXISTS` without `existOk`, or the broker's refusal.
     */
    async createSubscription(name, filter, options = {}) {
        const subscription = {
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
        if (asked.ackDeadline !== undefined)
            subscription.ackDeadline = (0, convert_1.durationFromS)(asked.ackDeadline);
        if (asked.retention !== undefined)
            subscription.retention = (0, convert_1.durationFromS)(asked.retention);
        if (asked.maxAge !== undefined)
            subscription.maxAge = (0, convert_1.durationFromS)(asked.maxAge);
        if (asked.minBackoff !== undefined || asked.maxBackoff !== undefined || asked.retryDelays !== undefined) {
            subscription.retryPolicy = { delays: (asked.retryDelays ?? []).map(convert_1.durationFromS) };
            if (asked.minBackoff !== undefined)
                subscription.retryPolicy.minBackoff = (0, convert_1.durationFromS)(asked.minBackoff);
            if (asked.maxBackoff !== undefined)
                subscription.retryPolicy.maxBackoff = (0, convert_1.durationFromS)(asked.maxBackoff);
        }
        try {
            const response = await this.unary(this.stub.createSubscription, { subscription });
            return (0, convert_1.subscriptionFromProto)(response.subscription);
        }
        catch (error) {
            if (!(options.existOk && error instanceof errors_1.BrokerError && error.code === grpc_js_1.status.ALREADY_EXISTS))
                throw error;
        }
        const existing = await this.getSubscription(name);
        const differences = settingDifferences(existing, { ...asked, filter: subscription.filter, ordered: options.ordered });
        if (differences.length > 0) {
            process.emitWarning(`subscription ${JSON.stringify(name)} exists with other settings than asked, kept as they are ` +
                `(updateSubscription changes them): ${differences.join("; ")}`, { type: "EventbrokerWarning", code: exports.SUBSCRIPTION_DIFFERS_WARNING });
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
    async updateSubscription(name, changes) {
        const subscription = {
            name,
            filter: [],
            maxAttempts: 0,
            maxInFlight: 0,
            ordered: false,
            startPosition: pb.StartPosition.START_POSITION_UNSPECIFIED,
            maxInFlightPerKey: 0,
            keyHeader: "",
        };
        const mask = [];
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
            subscription.ackDeadline = (0, convert_1.durationFromS)(asked.ackDeadline);
            mask.push("ack_deadline");
        }
        if (asked.retention !== undefined) {
            subscription.retention = (0, convert_1.durationFromS)(asked.retention);
            mask.push("retention");
        }
        if (changes.maxAge !== undefined) {
            if (asked.maxAge !== undefined)
                subscription.maxAge = (0, convert_1.durationFromS)(asked.maxAge);
            mask.push("max_age");
        }
        if (asked.minBackoff !== undefined || asked.maxBackoff !== undefined || asked.retryDelays !== undefined) {
            subscription.retryPolicy = { delays: (asked.retryDelays ?? []).map(convert_1.durationFromS) };
            if (asked.minBackoff !== undefined) {
                subscription.retryPolicy.minBackoff = (0, convert_1.durationFromS)(asked.minBackoff);
                mask.push("retry_policy.min_backoff");
            }
            if (asked.maxBackoff !== undefined) {
                subscription.retryPolicy.maxBackoff = (0, convert_1.durationFromS)(asked.maxBackoff);
                mask.push("retry_policy.max_backoff");
            }
            if (asked.retryDelays !== undefined)
                mask.push("retry_policy.delays");
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
        if (mask.length === 0)
            throw new RangeError("updateSubscription: nothing to change; give at least one setting");
        const response = await this.unary(this.stub.updateSubscription, { subscription, updateMask: mask });
        return (0, convert_1.subscriptionFromProto)(response.subscription);
    }
    /** The subscription called `name` (`NOT_FOUND` if there is none). */
    async getSubscription(name) {
        const response = await this.unary(this.stub.getSubscription, { name });
        return (0, convert_1.subscriptionFromProto)(response.subscription);
    }
    /** Delete a subscription and its pending deliveries. */
    async deleteSubscription(name) {
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
    subscribe(subscription, handler, options = {}) {
        return new consumer_1.Consumer(this, subscription, handler, options);
    }
    /** Acknowledge deliveries; resolves to the ack ids that were not applied. */
    async ack(ackIds) {
        const response = await this.unary(this.stub.ack, { ackIds: [...ackIds] });
        return response.notAppliedAckIds;
    }
    /** Give deliveries back for a retry (or dead-letter them with `terminal`); resolves to the ids not applied. */
    async nack(ackIds, options = {}) {
        const request = {
            ackIds: [...ackIds],
            terminal: options.terminal ?? false,
            error: options.error ?? "",
        };
        if (options.delay !== undefined)
            request.delay = (0, convert_1.durationFromS)((0, durations_1.parseDuration)(options.delay, "delay", durations_1.ANY_DELAY));
        const response = await this.unary(this.stub.nack, request);
        return response.notAppliedAckIds;
    }
    /** Keep leases for `extension` from now (a number is seconds; 1 s .. 12 h); resolves to the ids not extended. */
    async extendAckDeadline(ackIds, extension) {
        const seconds = (0, durations_1.parseDuration)(extension, "extension", durations_1.ACK_DEADLINE);
        const response = await this.unary(this.stub.extendAckDeadline, {
            ackIds: [...ackIds],
            extension: (0, convert_1.durationFromS)(seconds),
        });
        return response.notAppliedAckIds;
    }
    /** Close the channel; publishes still waiting are refused, calls still running end with CANCELLED. */
    close() {
        this.publisher.close();
        this.stub.close();
    }
    /**
     * Call a unary method of the stub as a promise; a failure rejects with a
     * BrokerError. The call's deadline is the client's timeout, or `deadlineMs`
     * (epoch milliseconds) if sooner.
     */
    unary(method, request, deadlineMs = Infinity) {
        return new Promise((resolve, reject) => {
            method.call(this.stub, request, this.metadata, { deadline: Math.min(Date.now() + this.timeoutS * MS_PER_S, deadlineMs) }, (error, response) => {
                if (error)
                    reject((0, errors_1.asBrokerError)(error));
                else
                    resolve(response);
            });
        });
    }
}
exports.Client = Client;
function askedSettings(options) {
    const asked = {};
    if (options.ackDeadline !== undefined)
        asked.ackDeadline = (0, durations_1.parseDuration)(options.ackDeadline, "ackDeadline", durations_1.ACK_DEADLINE);
    if (options.minBackoff !== undefined)
        asked.minBackoff = (0, durations_1.parseDuration)(options.minBackoff, "minBackoff", durations_1.UNLIMITED);
    if (options.maxBackoff !== undefined)
        asked.maxBackoff = (0, durations_1.parseDuration)(options.maxBackoff, "maxBackoff", durations_1.UNLIMITED);
    if (options.retention !== undefined)
        asked.retention = (0, durations_1.parseDuration)(options.retention, "retention", durations_1.AT_LEAST_ONE_SECOND);
    if (options.maxAge !== undefined)
        asked.maxAge = (0, durations_1.parseDuration)(options.maxAge, "maxAge", durations_1.AT_LEAST_ONE_SECOND);
    if (options.retryDelays !== undefined) {
        asked.retryDelays = options.retryDelays.map((d, i) => (0, durations_1.parseDuration)(d, `retryDelays[${i}]`, durations_1.ANY_DELAY));
    }
    if (options.maxAttempts !== undefined)
        asked.maxAttempts = options.maxAttempts;
    if (options.maxInFlight !== undefined)
        asked.maxInFlight = options.maxInFlight;
    if (options.maxInFlightPerKey !== undefined)
        asked.maxInFlightPerKey = options.maxInFlightPerKey;
    if (options.keyHeader !== undefined)
        asked.keyHeader = options.keyHeader;
    return asked;
}
/** Each asked setting the existing subscription has otherwise, as `name: has X (asked Y)`. */
function settingDifferences(existing, asked) {
    const differences = [];
    const seconds = (value) => (value === undefined ? "none" : (0, durations_1.formatDuration)(value));
    const compare = (name, has, wanted, show) => {
        if (wanted === undefined || (0, node_util_1.isDeepStrictEqual)(has, wanted))
            return;
        differences.push(`${name}: has ${show(has)} (asked ${show(wanted)})`);
    };
    const list = (values) => JSON.stringify(values);
    const delays = (values) => `[${values.map((v) => (0, durations_1.formatDuration)(v)).join(", ")}]`;
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
function positive(name, value) {
    const seconds = (0, durations_1.parseDuration)(value, name, durations_1.UNLIMITED);
    if (seconds <= 0)
        throw new RangeError(`${name} must be more than 0 s; got ${(0, durations_1.formatDuration)(seconds)}`);
    return seconds;
}
