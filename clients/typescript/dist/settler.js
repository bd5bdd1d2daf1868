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
 * one Nack applies one error to all its ids.
 */
const grpc_js_1 = require("@grpc/grpc-js");
const errors_1 = require("./errors");
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
    flushIntervalMs;
    maxPending;
    /** How many Ack and Nack calls were sent (for logs and tests). */
    calls = 0;
    acks = [];
    nacks = new Map();
    pending = 0;
    timer;
    sending = new Set();
    constructor(settle, 
    /** Told what could not be settled (those deliveries come again after their deadline). */
    warn, flushIntervalMs = exports.FLUSH_INTERVAL_MS, maxPending = exports.MAX_PENDING) {
        this.settle = settle;
        this.warn = warn;
        this.flushIntervalMs = flushIntervalMs;
        this.maxPending = maxPending;
    }
    /** Queue an ack. */
    ack(ackId) {
        this.acks.push(ackId);
        this.added();
    }
    /** Queue a nack: retried after `delayS` (default: the backoff), or dead-lettered when terminal. */
    nack(ackId, options) {
        const key = JSON.stringify([options.terminal, options.error, options.delayS ?? null]);
        const group = this.nacks.get(key);
        if (group)
            group.ids.push(ackId);
        else
            this.nacks.set(key, { ids: [ackId], options });
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
        this.acks = [];
        this.nacks = new Map();
        this.pending = 0;
        if (acks.length > 0)
            this.track(this.send("ack", acks, () => this.settle.ack(acks)));
        for (const { ids, options } of nacks) {
            this.track(this.send("nack", ids, () => this.settle.nack(ids, options)));
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
    async send(kind, ackIds, call) {
        for (let attempt = 1;; attempt += 1) {
            this.calls += 1;
            try {
                const notApplied = await call();
                if (notApplied.length > 0) {
                    this.warn(`${notApplied.length} of ${ackIds.length} ${kind}s not applied ` +
                        "(lease expired or moved on); those deliveries come again");
                }
                return;
            }
            catch (error) {
                const retryable = error instanceof errors_1.BrokerError && error.code === grpc_js_1.status.UNAVAILABLE;
                if (!retryable || attempt >= exports.SETTLE_ATTEMPTS) {
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
