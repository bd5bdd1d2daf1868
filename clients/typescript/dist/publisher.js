"use strict";
Object.defineProperty(exports, "__esModule", { value: true });
exports.Publisher = exports.SPLIT_CODES = exports.RETRY_CODES = exports.RETRY_JITTER_S = exports.RETRY_MAX_S = exports.RETRY_INITIAL_S = exports.PUBLISH_TIMEOUT_S = exports.EVENT_MAX_BYTES_DEFAULT = exports.BROKER_BATCH_MAX_BYTES = exports.BROKER_BATCH_MAX_EVENTS = exports.BATCH_MAX_BYTES_DEFAULT = exports.BATCH_MAX_EVENTS_DEFAULT = void 0;
/**
 * Publishing: group commit at the client, and retries under each event's own id.
 *
 * A publish goes out at once when no publish call of the client is in flight.
 * Publishes made while one is in flight wait for it, and are then sent together
 * as one `BatchPublish` (bounded by `maxEvents` and `maxBytes`), each caller
 * still getting its own result or error: under load, one round trip and one
 * broker transaction serve many callers; with no load, nothing waits. Calls go
 * one at a time, in the order they were made, so one caller's publishes are
 * stored in the order it made them.
 *
 * The broker refuses a batch whole when one event in it is bad, so a joined
 * batch must not let one caller's bad event fail the others: what the client
 * can check (name, priority, lengths, JSON data) is checked before anything is
 * queued, an event larger than the broker's default event limit is sent alone,
 * and when a joined `BatchPublish` is refused (`INVALID_ARGUMENT`,
 * `RESOURCE_EXHAUSTED`, or `PERMISSION_DENIED` for a key limited to some names)
 * each of its events is sent again alone, so only the bad caller's fails.
 *
 * Every event has an id before its first send (the caller's, else a new UUID),
 * and a call the broker could not be reached for (`UNAVAILABLE`) or did not
 * answer in time (`DEADLINE_EXCEEDED`) is sent again under the same ids, with
 * exponential backoff and jitter, until each caller's timeout: an attempt whose
 * answer was lost after the broker stored it comes back as a DUPLICATE, never as
 * a second event.
 */
const grpc_js_1 = require("@grpc/grpc-js");
const errors_1 = require("./errors");
/** Most events in one joined BatchPublish unless `PublishBatching.maxEvents` says otherwise. */
exports.BATCH_MAX_EVENTS_DEFAULT = 500;
/** Most bytes (names, data, headers) in one joined BatchPublish unless `maxBytes` says otherwise. */
exports.BATCH_MAX_BYTES_DEFAULT = 1024 * 1024;
/** The broker's default limits on one batch: a bound larger than these is refused. */
exports.BROKER_BATCH_MAX_EVENTS = 1000;
exports.BROKER_BATCH_MAX_BYTES = 4 * 1024 * 1024;
/** The broker's default limit on one event: a larger event is sent alone, for the broker to judge. */
exports.EVENT_MAX_BYTES_DEFAULT = 256 * 1024;
/** Total time a publish, its retries included, may take unless told otherwise. */
exports.PUBLISH_TIMEOUT_S = 30;
/** Backoff between attempts: 0.1 s doubling up to 5 s, with up to 0.1 s of jitter. */
exports.RETRY_INITIAL_S = 0.1;
exports.RETRY_MAX_S = 5;
exports.RETRY_JITTER_S = 0.1;
/** Codes a publish is sent again on: the event ids make each retry safe. */
exports.RETRY_CODES = new Set([grpc_js_1.status.UNAVAILABLE, grpc_js_1.status.DEADLINE_EXCEEDED]);
/** Codes on which a joined batch is split: the refusal may concern one caller's event only. */
exports.SPLIT_CODES = new Set([
    grpc_js_1.status.INVALID_ARGUMENT,
    grpc_js_1.status.RESOURCE_EXHAUSTED,
    grpc_js_1.status.PERMISSION_DENIED,
]);
const MS_PER_S = 1000;
/** Sends the client's publishes: one call at a time, joining those that wait. */
class Publisher {
    rpc;
    batching;
    /** Publish and BatchPublish calls sent, retries included (for logs and tests). */
    calls = 0;
    queue = [];
    sending = false;
    closed = false;
    maxEvents;
    maxBytes;
    constructor(rpc, batching) {
        this.rpc = rpc;
        this.batching = batching;
        this.maxEvents = batching === false ? 1 : bound("maxEvents", batching.maxEvents, exports.BATCH_MAX_EVENTS_DEFAULT, exports.BROKER_BATCH_MAX_EVENTS);
        this.maxBytes = batching === false ? 0 : bound("maxBytes", batching.maxBytes, exports.BATCH_MAX_BYTES_DEFAULT, exports.BROKER_BATCH_MAX_BYTES);
    }
    /**
     * Publish events: one (joinable with others) or an explicit batch (all or none).
     * Resolves to their results in order; rejects with the error of their call.
     */
    submit(events, joinable, timeoutS) {
        return new Promise((resolve, reject) => {
            if (this.closed) {
                reject(new errors_1.BrokerError(grpc_js_1.status.CANCELLED, "the client is closed"));
                return;
            }
            const sizeBytes = events.reduce((total, e) => total + e.sizeBytes, 0);
            const request = {
                events,
                joinable: joinable && sizeBytes <= exports.EVENT_MAX_BYTES_DEFAULT,
                sizeBytes,
                deadlineMs: Date.now() + timeoutS * MS_PER_S,
                resolve,
                reject,
            };
            if (this.batching === false) {
                void this.send([request]);
                return;
            }
            this.queue.push(request);
            if (!this.sending)
                void this.pump();
        });
    }
    /** Refuse what waits; calls in flight end as the channel closes them. */
    close() {
        this.closed = true;
        for (const request of this.queue.splice(0)) {
            request.reject(new errors_1.BrokerError(grpc_js_1.status.CANCELLED, "the client was closed before this publish was sent"));
        }
    }
    async pump() {
        this.sending = true;
        try {
            while (this.queue.length > 0)
                await this.send(this.take());
        }
        finally {
            this.sending = false;
        }
    }
    /** The next call's requests: the first waiting, and those that may join it within the bounds. */
    take() {
        const first = this.queue.shift();
        const group = [first];
        if (!first.joinable)
            return group;
        let events = first.events.length;
        let bytes = first.sizeBytes;
        while (this.queue.length > 0) {
            const next = this.queue[0];
            if (!next.joinable || events + 1 > this.maxEvents || bytes + next.sizeBytes > this.maxBytes)
                break;
            group.push(next);
            this.queue.shift();
            events += 1;
            bytes += next.sizeBytes;
        }
        return group;
    }
    /** Send one call for `group`, retried while it may; settle each caller. */
    async send(group) {
        let live = group;
        for (let attempt = 1; live.length > 0; attempt += 1) {
            const deadlineMs = Math.max(...live.map((r) => r.deadlineMs));
            let results;
            try {
                results = await this.call(live, deadlineMs);
            }
            catch (error) {
                if (error instanceof errors_1.BrokerError && exports.RETRY_CODES.has(error.code)) {
                    const pauseMs = Math.min(exports.RETRY_MAX_S, exports.RETRY_INITIAL_S * 2 ** (attempt - 1)) * MS_PER_S + Math.random() * exports.RETRY_JITTER_S * MS_PER_S;
                    const retryAtMs = Date.now() + pauseMs;
                    live = live.filter((request) => {
                        if (request.deadlineMs > retryAtMs)
                            return true;
                        request.reject(error);
                        return false;
                    });
                    if (live.length > 0)
                        await new Promise((resolve) => setTimeout(resolve, pauseMs));
                    continue;
                }
                if (live.length > 1 && error instanceof errors_1.BrokerError && exports.SPLIT_CODES.has(error.code)) {
                    for (const request of live)
                        await this.send([request]);
                    return;
                }
                for (const request of live)
                    request.reject(error);
                return;
            }
            let offset = 0;
            for (const request of live) {
                request.resolve(results.slice(offset, offset + request.events.length));
                offset += request.events.length;
            }
            return;
        }
    }
    call(group, deadlineMs) {
        this.calls += 1;
        const only = group[0];
        if (group.length === 1 && only.events.length === 1) {
            return this.rpc.publish(only.events[0].event, deadlineMs).then((result) => [result]);
        }
        return this.rpc.batchPublish(group.flatMap((request) => request.events.map((e) => e.event)), deadlineMs);
    }
}
exports.Publisher = Publisher;
function bound(name, value, fallback, maximum) {
    const chosen = value ?? fallback;
    if (!Number.isInteger(chosen) || chosen < 1 || chosen > maximum) {
        throw new RangeError(`publishBatching.${name} must be a whole number from 1 to ${maximum}; got ${chosen}`);
    }
    return chosen;
}
