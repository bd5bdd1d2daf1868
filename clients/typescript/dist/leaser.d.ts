/** A lease is renewed once this fraction of it has passed. */
export declare const RENEW_AT_FRACTION = 0.75;
/** Leases due within this fraction of their length are renewed together with the first. */
export declare const BATCH_FRACTION = 0.1;
/** Up to this fraction of a lease is taken off its renewal time at random. */
export declare const JITTER_FRACTION = 0.05;
/** After a failed renewal call, try again this soon (or sooner for short leases). */
export declare const RETRY_AFTER_FAILURE_MS = 250;
/** Extends leases by `seconds`; resolves to the ack ids that were not extended. */
export type ExtendMany = (ackIds: string[], seconds: number) => Promise<string[]>;
/** Renews the leases of deliveries in progress, in batches, until each is released. */
export declare class Leaser {
    private readonly extendMany;
    private readonly warn;
    /** How many `ExtendAckDeadline` calls the leaser made (for logs and tests). */
    renewals: number;
    private readonly leases;
    private timer;
    private renewing;
    private closed;
    constructor(extendMany: ExtendMany, warn: (message: string, error?: unknown) => void);
    /** How many leases are held. */
    get size(): number;
    /** Start keeping a delivery's lease (a no-op for one without a deadline). */
    hold(ackId: string, ackDeadline: Date | undefined): void;
    /** Stop keeping a lease: its handler is done (it is about to be acked or nacked). */
    release(ackId: string): void;
    /** Extend one lease now (for `Context.extend`); later renewals keep that length. Resolves false if lost. */
    extend(ackId: string, seconds: number): Promise<boolean>;
    /** Stop renewing (leases still held lapse at their deadline). */
    close(): void;
    private track;
    private schedule;
    private renewDue;
    private renew;
}
