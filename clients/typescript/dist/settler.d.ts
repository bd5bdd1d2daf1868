import { type TraceLink } from "./tracing";
/** How long the first queued settlement waits for others to join it. */
export declare const FLUSH_INTERVAL_MS = 5;
/** Settlements sent at once when this many are queued. */
export declare const MAX_PENDING = 100;
/** Attempts of one Ack or Nack while the broker is briefly unavailable. */
export declare const SETTLE_ATTEMPTS = 3;
/** What one Nack carries besides its ids. */
export interface NackOptions {
    readonly error: string;
    readonly terminal: boolean;
    /** Retry after this many seconds instead of the subscription's backoff. */
    readonly delayS?: number;
}
/** The calls the settler makes; each resolves to the ids not applied. */
export interface SettleCalls {
    ack(ackIds: string[]): Promise<string[]>;
    nack(ackIds: string[], options: NackOptions): Promise<string[]>;
}
/** Collects acks and nacks and sends them in batches. */
export declare class Settler {
    private readonly settle;
    /** Told what could not be settled (those deliveries come again after their deadline). */
    private readonly warn;
    /** The subscription settled, for the spans' names. */
    private readonly subscription;
    private readonly flushIntervalMs;
    private readonly maxPending;
    /** How many Ack and Nack calls were sent (for logs and tests). */
    calls: number;
    private acks;
    private nacks;
    private pending;
    private timer;
    private readonly sending;
    constructor(settle: SettleCalls, 
    /** Told what could not be settled (those deliveries come again after their deadline). */
    warn: (message: string, error?: unknown) => void, 
    /** The subscription settled, for the spans' names. */
    subscription?: string, flushIntervalMs?: number, maxPending?: number);
    /** Queue an ack; `link` is the delivery's process span, when traced. */
    ack(ackId: string, link?: TraceLink): void;
    /** Queue a nack: retried after `delayS` (default: the backoff), or dead-lettered when terminal. */
    nack(ackId: string, options: NackOptions, link?: TraceLink): void;
    /** Send everything queued now, and wait until every send under way has ended. */
    drain(): Promise<void>;
    private added;
    private flush;
    private track;
    /**
     * Settle, retrying a broker that is briefly unavailable. A delivery whose
     * settlement is lost is delivered again after its deadline (at-least-once),
     * so a failure here is reported, not thrown.
     */
    private send;
}
