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
import { ACK_DEADLINE_MAX_S, ACK_DEADLINE_MIN_S } from "./durations";

/** A lease is renewed once this fraction of it has passed. */
export const RENEW_AT_FRACTION = 0.75;
/** Leases due within this fraction of their length are renewed together with the first. */
export const BATCH_FRACTION = 0.1;
/** Up to this fraction of a lease is taken off its renewal time at random. */
export const JITTER_FRACTION = 0.05;
/** After a failed renewal call, try again this soon (or sooner for short leases). */
export const RETRY_AFTER_FAILURE_MS = 250;
const MS_PER_S = 1000;

/** Extends leases by `seconds`; resolves to the ack ids that were not extended. */
export type ExtendMany = (ackIds: string[], seconds: number) => Promise<string[]>;

interface Lease {
  lengthS: number;
  renewAtMs: number;
  /** After a failed call: no new attempt before this. */
  notBeforeMs: number;
}

/** Renews the leases of deliveries in progress, in batches, until each is released. */
export class Leaser {
  /** How many `ExtendAckDeadline` calls the leaser made (for logs and tests). */
  renewals = 0;
  private readonly leases = new Map<string, Lease>();
  private timer: NodeJS.Timeout | undefined;
  private renewing = false;
  private closed = false;

  constructor(
    private readonly extendMany: ExtendMany,
    private readonly warn: (message: string, error?: unknown) => void,
  ) {}

  /** How many leases are held. */
  get size(): number {
    return this.leases.size;
  }

  /** Start keeping a delivery's lease (a no-op for one without a deadline). */
  hold(ackId: string, ackDeadline: Date | undefined): void {
    if (!ackId || ackDeadline === undefined) return;
    const remainingS = (ackDeadline.getTime() - Date.now()) / MS_PER_S;
    this.track(ackId, leaseLength(remainingS), performance.now() + remainingS * MS_PER_S);
  }

  /** Stop keeping a lease: its handler is done (it is about to be acked or nacked). */
  release(ackId: string): void {
    this.leases.delete(ackId);
  }

  /** Extend one lease now (for `Context.extend`); later renewals keep that length. Resolves false if lost. */
  async extend(ackId: string, seconds: number): Promise<boolean> {
    const notApplied = await this.extendMany([ackId], seconds);
    if (notApplied.includes(ackId)) {
      this.release(ackId);
      return false;
    }
    if (this.leases.has(ackId)) this.track(ackId, leaseLength(seconds), performance.now() + seconds * MS_PER_S);
    return true;
  }

  /** Stop renewing (leases still held lapse at their deadline). */
  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.leases.clear();
  }

  private track(ackId: string, lengthS: number, endsAtMs: number): void {
    const jitterMs = Math.random() * JITTER_FRACTION * lengthS * MS_PER_S;
    const renewAtMs = endsAtMs - (1 - RENEW_AT_FRACTION) * lengthS * MS_PER_S - jitterMs;
    this.leases.set(ackId, { lengthS, renewAtMs, notBeforeMs: 0 });
    this.schedule();
  }

  private schedule(): void {
    if (this.renewing || this.closed) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    let nextMs = Infinity;
    for (const lease of this.leases.values()) {
      nextMs = Math.min(nextMs, Math.max(lease.renewAtMs - BATCH_FRACTION * lease.lengthS * MS_PER_S, lease.notBeforeMs));
    }
    if (nextMs === Infinity) return;
    this.timer = setTimeout(() => void this.renewDue(), Math.max(0, nextMs - performance.now()));
  }

  private async renewDue(): Promise<void> {
    this.timer = undefined;
    this.renewing = true;
    try {
      const now = performance.now();
      const byLength = new Map<number, string[]>();
      for (const [ackId, lease] of this.leases) {
        const due = now >= lease.notBeforeMs && now >= lease.renewAtMs - BATCH_FRACTION * lease.lengthS * MS_PER_S;
        if (!due) continue;
        const ids = byLength.get(lease.lengthS);
        if (ids) ids.push(ackId);
        else byLength.set(lease.lengthS, [ackId]);
      }
      await Promise.all([...byLength].map(([lengthS, ackIds]) => this.renew(lengthS, ackIds)));
    } finally {
      this.renewing = false;
      this.schedule();
    }
  }

  private async renew(lengthS: number, ackIds: string[]): Promise<void> {
    const startedMs = performance.now();
    this.renewals += 1;
    let notApplied: string[];
    try {
      notApplied = await this.extendMany(ackIds, lengthS);
    } catch (error) {
      this.warn(`could not renew ${ackIds.length} leases; retrying`, error);
      const retryAtMs = performance.now() + Math.min(RETRY_AFTER_FAILURE_MS, 0.1 * lengthS * MS_PER_S);
      for (const ackId of ackIds) {
        const lease = this.leases.get(ackId);
        if (lease) lease.notBeforeMs = retryAtMs;
      }
      return;
    }
    const lost = new Set(notApplied);
    if (lost.size > 0) {
      this.warn(
        `${lost.size} leases were lost before renewal (expired or given to another consumer); ` +
          "those deliveries will come again",
      );
    }
    for (const ackId of ackIds) {
      if (lost.has(ackId)) {
        this.release(ackId);
      } else if (this.leases.has(ackId)) {
        const jitterMs = Math.random() * JITTER_FRACTION * lengthS * MS_PER_S;
        const endsAtMs = startedMs + lengthS * MS_PER_S;
        this.leases.set(ackId, {
          lengthS,
          renewAtMs: endsAtMs - (1 - RENEW_AT_FRACTION) * lengthS * MS_PER_S - jitterMs,
          notBeforeMs: 0,
        });
      }
    }
  }
}

/** A lease length the broker accepts, in whole seconds, from a measured remainder. */
function leaseLength(seconds: number): number {
  return Math.min(ACK_DEADLINE_MAX_S, Math.max(ACK_DEADLINE_MIN_S, Math.ceil(seconds - 0.05)));
}
