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
import { status } from "@grpc/grpc-js";
import type { OutgoingEvent, PublishResult } from "./convert";
import type * as pb from "./gen/eventbroker/v1/broker";
/** Most events in one joined BatchPublish unless `PublishBatching.maxEvents` says otherwise. */
export declare const BATCH_MAX_EVENTS_DEFAULT = 500;
/** Most bytes (names, data, headers) in one joined BatchPublish unless `maxBytes` says otherwise. */
export declare const BATCH_MAX_BYTES_DEFAULT: number;
/** The broker's default limits on one batch: a bound larger than these is refused. */
export declare const BROKER_BATCH_MAX_EVENTS = 1000;
export declare const BROKER_BATCH_MAX_BYTES: number;
/** The broker's default limit on one event: a larger event is sent alone, for the broker to judge. */
export declare const EVENT_MAX_BYTES_DEFAULT: number;
/** Total time a publish, its retries included, may take unless told otherwise. */
export declare const PUBLISH_TIMEOUT_S = 30;
/** Backoff between attempts: 0.1 s doubling up to 5 s, with up to 0.1 s of jitter. */
export declare const RETRY_INITIAL_S = 0.1;
export declare const RETRY_MAX_S = 5;
export declare const RETRY_JITTER_S = 0.1;
/** Codes a publish is sent again on: the event ids make each retry safe. */
export declare const RETRY_CODES: ReadonlySet<status>;
/** Codes on which a joined batch is split: the refusal may concern one caller's event only. */
export declare const SPLIT_CODES: ReadonlySet<status>;
/** How publishes made while another is in flight are joined (`false` in `ClientConfig` turns it off). */
export interface PublishBatching {
    /** Most events in one joined BatchPublish (default 500, at most 1,000). */
    maxEvents?: number;
    /** Most bytes of names, data and headers in one joined BatchPublish (default 1 MiB, at most 4 MiB). */
    maxBytes?: number;
}
/** The calls the publisher makes. */
export interface PublishCalls {
    publish(event: pb.Event, deadlineMs: number): Promise<PublishResult>;
    batchPublish(events: pb.Event[], deadlineMs: number): Promise<PublishResult[]>;
}
/** Sends the client's publishes: one call at a time, joining those that wait. */
export declare class Publisher {
    private readonly rpc;
    private readonly batching;
    /** Publish and BatchPublish calls sent, retries included (for logs and tests). */
    calls: number;
    private readonly queue;
    private sending;
    private closed;
    private readonly maxEvents;
    private readonly maxBytes;
    constructor(rpc: PublishCalls, batching: PublishBatching | false);
    /**
     * Publish events: one (joinable with others) or an explicit batch (all or none).
     * Resolves to their results in order; rejects with the error of their call.
     */
    submit(events: readonly OutgoingEvent[], joinable: boolean, timeoutS: number): Promise<PublishResult[]>;
    /** Refuse what waits; calls in flight end as the channel closes them. */
    close(): void;
    private pump;
    /** The next call's requests: the first waiting, and those that may join it within the bounds. */
    private take;
    /** Send one call for `group`, retried while it may; settle each caller. */
    private send;
    private call;
}
