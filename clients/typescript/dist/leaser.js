"use strict";
Object.defineProperty(exports, "__esModule", { value: true });
exports.Leaser = exports.RETRY_AFTER_FAILURE_MS = exports.JITTER_FRACTION = exports.BATCH_FRACTION = exports.RENEW_AT_FRACTION = void 0;
/**
 * Lease renewal for the consumer: keep a delivery while its handler runs.
 *
 * A handler may take longer than the subscription's ack deadline; without help
 * the broker would hand its delivery to another consumer mid-run. The leaser
 * holds the lease of every delivery whose handler is running and renews it
 * before it ends, as the Python client's `_leaser` (and Pub/Sub's client) does:
 * each lease is renewed once `RENEW_AT_FRACTION` of it has passed (less a
 * little jitter, so that leases received together do not all come due at the
 * same instant), and every lease coming due within the next `BATCH_FRACTION` of
 * its length is renewed in the same `ExtendAckDeadline` call. A renewal
 * extends by the lease's own length: the subscription's ack deadline, or what
 * the handler last asked for through `Context.extend`.
 *
 * Times are measured on the monotonic clock (`performance.now()`); a
 * delivery's remaining lease is read once, on receipt, from its deadline.
 */
const durations_1 = require("./durations");
/** A lease is renewed once this fraction of it has passed. */
exports.RENEW_AT_FRACTION = 0.75;
/** Leases due within this fraction of their length are renewed together with the first. */
exports.BATCH_FRACTION = 0.1;
/** Up to this fraction of a lease is taken off its renewal time at random. */
exports.JITTER_FRACTION = 0.05;
/** After a failed renewal call, try again this soon (or sooner for short leases). */
exports.RETRY_AFTER_FAILURE_MS = 250;
const MS_PER_S = 1000;
/** Renews the leases of deliveries in progress, in batches, until each is released. */
class Leaser {
    extendMany;
    warn;
    /** How many `ExtendAckDeadline` calls the leaser made (for logs and tests). */
    renewals = 0;
    leases = new Map();
    timer;
    renewing = false;
    closed = false;
    constructor(extendMany, warn) {
        this.extendMany = extendMany;
        this.warn = warn;
    }
    /** How many leases are held. */
    get size() {
        return this.leases.size;
    }
    /** Start keeping a delivery's lease (a no-op for one without a deadline). */
    hold(ackId, ackDeadline) {
        if (!ackId || ackDeadline === undefined)
            return;
        const remainingS = (ackDeadline.getTime() - Date.now()) / MS_PER_S;
        this.track(ackId, leaseLength(remainingS), performance.now() + remainingS * MS_PER_S);
    }
    /** Stop keeping a lease: its handler is done (it is about to be acked or nacked). */
    release(ackId) {
        this.leases.delete(ackId);
    }
    /** Extend one lease now (for `Context.extend`); later renewals keep that length. Resolves false if lost. */
    async extend(ackId, seconds) {
        const notApplied = await this.extendMany([ackId], seconds);
        if (notApplied.includes(ackId)) {
            this.release(ackId);
            return false;
        }
        if (this.leases.has(ackId))
            this.track(ackId, leaseLength(seconds), performance.now() + seconds * MS_PER_S);
        return true;
    }
    /** Stop renewing (leases still held lapse at their deadline). */
    close() {
        this.closed = true;
        clearTimeout(this.timer);
        this.leases.clear();
    }
    track(ackId, lengthS, endsAtMs) {
        const jitterMs = Math.random() * exports.JITTER_FRACTION * lengthS * MS_PER_S;
        const renewAtMs = endsAtMs - (1 - exports.RENEW_AT_FRACTION) * lengthS * MS_PER_S - jitterMs;
        this.leases.set(ackId, { lengthS, renewAtMs, notBeforeMs: 0 });
        this.schedule();
    }
    schedule() {
        if (this.renewing || this.closed)
            return;
        clearTimeout(this.timer);
        this.timer = undefined;
        let nextMs = Infinity;
        for (const lease of this.leases.values()) {
            nextMs = Math.min(nextMs, Math.max(lease.renewAtMs - exports.BATCH_FRACTION * lease.lengthS * MS_PER_S, lease.notBeforeMs));
        }
        if (nextMs === Infinity)
            return;
        this.timer = setTimeout(() => void this.renewDue(), Math.max(0, nextMs - performance.now()));
    }
    async renewDue() {
        this.timer = undefined;
        this.renewing = true;
        try {
            const now = performance.now();
            const byLength = new Map();
            for (const [ackId, lease] of this.leases) {
                const due = now >= lease.notBeforeMs && now >= lease.renewAtMs - exports.BATCH_FRACTION * lease.lengthS * MS_PER_S;
                if (!due)
                    continue;
                const ids = byLength.get(lease.lengthS);
                if (ids)
                    ids.push(ackId);
                else
                    byLength.set(lease.lengthS, [ackId]);
            }
            await Promise.all([...byLength].map(([lengthS, ackIds]) => this.renew(lengthS, ackIds)));
        }
        finally {
            this.renewing = false;
            this.schedule();
        }
    }
    async renew(lengthS, ackIds) {
        const startedMs = performance.now();
        this.renewals += 1;
        let notApplied;
        try {
            notApplied = await this.extendMany(ackIds, lengthS);
        }
        catch (error) {
            this.warn(`could not renew ${ackIds.length} leases; retrying`, error);
            const retryAtMs = performance.now() + Math.min(exports.RETRY_AFTER_FAILURE_MS, 0.1 * lengthS * MS_PER_S);
            for (const ackId of ackIds) {
                const lease = this.leases.get(ackId);
                if (lease)
                    lease.notBeforeMs = retryAtMs;
            }
            return;
        }
        const lost = new Set(notApplied);
        if (lost.size > 0) {
            this.warn(`${lost.size} leases were lost before renewal (expired or given to another consumer); ` +
                "those deliveries will come again");
        }
        for (const ackId of ackIds) {
            if (lost.has(ackId)) {
                this.release(ackId);
            }
            else if (this.leases.has(ackId)) {
                const jitterMs = Math.random() * exports.JITTER_FRACTION * lengthS * MS_PER_S;
                const endsAtMs = startedMs + lengthS * MS_PER_S;
                this.leases.set(ackId, {
                    lengthS,
                    renewAtMs: endsAtMs - (1 - exports.RENEW_AT_FRACTION) * lengthS * MS_PER_S - jitterMs,
                    notBeforeMs: 0,
                });
            }
        }
    }
}
exports.Leaser = Leaser;
/** A lease length the broker accepts, in whole seconds, from a measured remainder. */
function leaseLength(seconds) {
    return Math.min(durations_1.ACK_DEADLINE_MAX_S, Math.max(durations_1.ACK_DEADLINE_MIN_S, Math.ceil(seconds - 0.05)));
}
