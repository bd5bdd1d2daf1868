"use strict";
Object.defineProperty(exports, "__esModule", { value: true });
exports.Settler = exports.SETTLE_ATTEMPTS = exports.MAX_PENDING = exports.FLUSH_INTERVAL_MS = void 0;
/**
 * Batched acks and nacks for the consumer: one RPC settles many deliveries.
 *
 * Handlers finish one at a time, but an Ack per delivery would cost a round
 * trip and a database transaction each. The settler collects ack ids and sends
 * them together `FLUSH_INTERVAL_MS` after the first one is queued, or at once
 * when `MAX_PENDING` are waiting (the Python client's `_settle` rule). Nacks
 * are grouped by what they carry (error text, terminal or not, delay), since
 * one Nack applies one error to all its ids. With tracing on, each call is a
 * span linking the process spans of the deliveries it settles.
 */
const grpc_js_1 = require("@grpc/grpc-js");
const errors_1 = require("./errors");
const tracing_1 = require("./tracing");
/** How long the first queued settlement waits for others to join it. */
exports.FLUSH_INTERVAL_MS = 5;
/** Settlements sent at once when this many are queued. */
exports.MAX_PENDING = 100;
/** Attempts of one Ack or Nack while the broker is briefly unavailable. */
exports.SETTLE_ATTEMPTS = 3;
const RETRY_MULTIPLIER_MS = 50;
const RETRY_MAX_MS = 1000;
/** Collects acks and nacks and sends them in batches. */
class Settler {
    settle;
    warn;
    subscription;
    flushIntervalMs;
    maxPending;
    /** How many Ack and Nack calls were sent (for logs and tests). */
    calls = 0;
    acks = { ids: [], links: [] };
    nacks = new Map();
    pending = 0;
    timer;
    sending = new Set();
    constructor(settle, 
    /** Told what could not be settled (those deliveries come again after their deadline). */
    warn, 
    /** The subscription settled, for the spans' names. */
    subscription = "", flushIntervalMs = exports.FLUSH_INTERVAL_MS, maxPending = exports.MAX_PENDING) {
        this.settle = settle;
        this.warn = warn;
        this.subscription = subscription;
        this.flushIntervalMs = flushIntervalMs;
        this.maxPending = maxPending;
    }
    /** Queue an ack; `link` is the delivery's process span, when traced. */
    ack(ackId, link) {
        queue(this.acks, ackId, link);
        this.added();
    }
    /** Queue a nack: retried after `delayS` (default: the backoff), or dead-lettered when terminal. */
    nack(ackId, options, link) {
        const key = JSON.stringify([options.terminal, options.error, options.delayS ?? null]);
        let group = this.nacks.get(key);
        if (group === undefined) {
            group = { ids: [], links: [], options };
            this.nacks.set(key, group);
        }
        queue(group, ackId, link);
        this.added();
    }
    /** Send everything queued now, and wait until every send under way has ended. */
    async drain() {
        this.flush();
        while (this.sending.size > 0)
            await Promise.all([...this.sending]);
    }
    added() {
        this.pending += 1;
        if (this.pending >= this.maxPending)
            this.flush();
        else
            this.timer ??= setTimeout(() => this.flush(), this.flushIntervalMs);
    }
    flush() {
        clearTimeout(this.timer);
        this.timer = undefined;
        const acks = this.acks;
        const nacks = [...this.nacks.values()];
        this.acks = { ids: [], links: [] };
        this.nacks = new Map();
        this.pending = 0;
        if (acks.ids.length > 0)
            this.track(this.send("ack", acks, () => this.settle.ack(acks.ids)));
        for (const batch of nacks) {
            this.track(this.send("nack", batch, () => this.settle.nack(batch.ids, batch.options)));
        }
    }
    track(send) {
        this.sending.add(send);
        void send.finally(() => this.sending.delete(send));
    }
    /**
     * Settle, retrying a broker that is briefly unavailable. A delivery whose
     * settlement is lost is delivered again after its deadline (at-least-once),
     * so a failure here is reported, not thrown.
     */
    async send(kind, batch, call) {
        const ackIds = batch.ids;
        const span = (0, tracing_1.startSettle)(kind, this.subscription, ackIds.length, batch.links, batch.options?.terminal);
        for (let attempt = 1;; attempt += 1) {
            this.calls += 1;
            try {
                const notApplied = await call();
                span?.succeeded(notApplied.length);
                if (notApplied.length > 0) {
                    this.warn(`${notApplied.length} of ${ackIds.length} ${kind}s not applied ` +
                        "(lease expired or moved on); those deliveries come again");
                }
                return;
            }
            catch (error) {
                const retryable = error instanceof errors_1.BrokerError && error.code === grpc_js_1.status.UNAVAILABLE;
                if (!retryable || attempt >= exports.SETTLE_ATTEMPTS) {
                    span?.failed(error);
                    this.warn(`could not ${kind} ${ackIds.length} deliveries; they will be delivered again`, error);
                    return;
                }
                const ceilingMs = Math.min(RETRY_MAX_MS, RETRY_MULTIPLIER_MS * 2 ** attempt);
                await new Promise((resolve) => setTimeout(resolve, Math.random() * ceilingMs));
            }
        }
    }
}
exports.Settler = Settler;
function queue(batch, ackId, link) {
    batch.ids.push(ackId);
    if (link !== undefined)
        batch.links.push(link);
}
