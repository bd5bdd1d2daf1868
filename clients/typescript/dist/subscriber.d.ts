import type { Client } from "./client";
import { type Message } from "./convert";
/** Subscribe's response headers, sent by the broker once the consumer is attached. */
export declare const ATTACHED_HEADER = "eventbroker-attached";
export declare const CONSUMER_HEADER = "eventbroker-consumer";
/** Deliveries held at once unless `SubscribeOptions.maxOutstanding` says otherwise. */
export declare const DEFAULT_MAX_OUTSTANDING = 100;
/** Runs for one delivery: resolve to ack it, throw to nack it. */
export type Handler = (message: Message) => unknown;
/** How a consumer attaches. */
export interface SubscribeOptions {
    /** Deliveries held, hence handlers running, at once (default 100, at most 10,000). */
    maxOutstanding?: number;
    /** Shown in attempt history and stats; default the connection's address. */
    consumerName?: string;
    /**
     * Told when an ack or nack could not be sent (the delivery then comes again
     * after its deadline); default a process warning.
     */
    onSettleError?: (error: unknown, message: Message) => void;
}
/** What `ready` resolves to once the consumer is attached. */
export interface Attachment {
    /** The consumer's id, as attempt history and `GetEvent` show it. */
    readonly consumerId: string;
}
/**
 * One consumer attached to a subscription. `ready` resolves as soon as the
 * broker has attached it (before any delivery); `closed` resolves after
 * `close()` and rejects with a BrokerError if the stream fails (the broker went
 * away, the subscription was deleted): subscribe again to go on.
 */
export declare class Subscriber {
    private readonly client;
    readonly subscription: string;
    private readonly handler;
    private readonly options;
    /** Resolves once the broker has attached this consumer; rejects if the stream fails first. */
    readonly ready: Promise<Attachment>;
    /** Resolves when the stream has ended after `close()`; rejects when it failed. */
    readonly closed: Promise<void>;
    private readonly call;
    private readonly running;
    private stopping;
    constructor(client: Client, subscription: string, handler: Handler, options: SubscribeOptions);
    /**
     * Stop taking deliveries, let running handlers finish and settle them, then
     * detach (deliveries received but not started are given back at once).
     */
    close(): Promise<void>;
    private start;
    private handle;
}
