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
import { BrokerError } from "./errors";
import type * as pb from "./gen/eventbroker/v1/broker";

/** Most events in one joined BatchPublish unless `PublishBatching.maxEvents` says otherwise. */
export const BATCH_MAX_EVENTS_DEFAULT = 500;
/** Most bytes (names, data, headers) in one joined BatchPublish unless `maxBytes` says otherwise. */
export const BATCH_MAX_BYTES_DEFAULT = 1024 * 1024;
/** The broker's default limits on one batch: a bound larger than these is refused. */
export const BROKER_BATCH_MAX_EVENTS = 1000;
export const BROKER_BATCH_MAX_BYTES = 4 * 1024 * 1024;
/** The broker's default limit on one event: a larger event is sent alone, for the broker to judge. */
export const EVENT_MAX_BYTES_DEFAULT = 256 * 1024;
/** Total time a publish, its retries included, may take unless told otherwise. */
export const PUBLISH_TIMEOUT_S = 30;
/** Backoff between attempts: 0.1 s doubling up to 5 s, with up to 0.1 s of jitter. */
export const RETRY_INITIAL_S = 0.1;
export const RETRY_MAX_S = 5;
export const RETRY_JITTER_S = 0.1;
/** Codes a publish is sent again on: the event ids make each retry safe. */
export const RETRY_CODES: ReadonlySet<status> = new Set([status.UNAVAILABLE, status.DEADLINE_EXCEEDED]);
/** Codes on which a joined batch is split: the refusal may concern one caller's event only. */
export const SPLIT_CODES: ReadonlySet<status> = new Set([
  status.INVALID_ARGUMENT,
  status.RESOURCE_EXHAUSTED,
  status.PERMISSION_DENIED,
]);
const MS_PER_S = 1000;

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

/** One caller's request: a single event (joinable) or an explicit all-or-none batch. */
interface Request {
  readonly events: readonly OutgoingEvent[];
  readonly joinable: boolean;
  readonly sizeBytes: number;
  /** When this caller stops waiting (epoch milliseconds). */
  readonly deadlineMs: number;
  readonly resolve: (results: PublishResult[]) => void;
  readonly reject: (error: unknown) => void;
}

/** Sends the client's publishes: one call at a time, joining those that wait. */
export class Publisher {
  /** Publish and BatchPublish calls sent, retries included (for logs and tests). */
  calls = 0;
  private readonly queue: Request[] = [];
  private sending = false;
  private closed = false;
  private readonly maxEvents: number;
  private readonly maxBytes: number;

  constructor(
    private readonly rpc: PublishCalls,
    private readonly batching: PublishBatching | false,
  ) {
    this.maxEvents = batching === false ? 1 : bound("maxEvents", batching.maxEvents, BATCH_MAX_EVENTS_DEFAULT, BROKER_BATCH_MAX_EVENTS);
    this.maxBytes = batching === false ? 0 : bound("maxBytes", batching.maxBytes, BATCH_MAX_BYTES_DEFAULT, BROKER_BATCH_MAX_BYTES);
  }

  /**
   * Publish events: one (joinable with others) or an explicit batch (all or none).
   * Resolves to their results in order; rejects with the error of their call.
   */
  submit(events: readonly OutgoingEvent[], joinable: boolean, timeoutS: number): Promise<PublishResult[]> {
    return new Promise<PublishResult[]>((resolve, reject) => {
      if (this.closed) {
        reject(new BrokerError(status.CANCELLED, "the client is closed"));
        return;
      }
      const sizeBytes = events.reduce((total, e) => total + e.sizeBytes, 0);
      const request: Request = {
        events,
        joinable: joinable && sizeBytes <= EVENT_MAX_BYTES_DEFAULT,
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
      if (!this.sending) void this.pump();
    });
  }

  /** Refuse what waits; calls in flight end as the channel closes them. */
  close(): void {
    this.closed = true;
    for (const request of this.queue.splice(0)) {
      request.reject(new BrokerError(status.CANCELLED, "the client was closed before this publish was sent"));
    }
  }

  private async pump(): Promise<void> {
    this.sending = true;
    try {
      while (this.queue.length > 0) await this.send(this.take());
    } finally {
      this.sending = false;
    }
  }

  /** The next call's requests: the first waiting, and those that may join it within the bounds. */
  private take(): Request[] {
    const first = this.queue.shift() as Request;
    const group = [first];
    if (!first.joinable) return group;
    let events = first.events.length;
    let bytes = first.sizeBytes;
    while (this.queue.length > 0) {
      const next = this.queue[0] as Request;
      if (!next.joinable || events + 1 > this.maxEvents || bytes + next.sizeBytes > this.maxBytes) break;
      group.push(next);
      this.queue.shift();
      events += 1;
      bytes += next.sizeBytes;
    }
    return group;
  }

  /** Send one call for `group`, retried while it may; settle each caller. */
  private async send(group: Request[]): Promise<void> {
    let live = group;
    for (let attempt = 1; live.length > 0; attempt += 1) {
      const deadlineMs = Math.max(...live.map((r) => r.deadlineMs));
      let results: PublishResult[];
      try {
        results = await this.call(live, deadlineMs);
      } catch (error) {
        if (error instanceof BrokerError && RETRY_CODES.has(error.code)) {
          const pauseMs =
            Math.min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** (attempt - 1)) * MS_PER_S + Math.random() * RETRY_JITTER_S * MS_PER_S;
          const retryAtMs = Date.now() + pauseMs;
          live = live.filter((request) => {
            if (request.deadlineMs > retryAtMs) return true;
            request.reject(error);
            return false;
          });
          if (live.length > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs));
          continue;
        }
        if (live.length > 1 && error instanceof BrokerError && SPLIT_CODES.has(error.code)) {
          for (const request of live) await this.send([request]);
          return;
        }
        for (const request of live) request.reject(error);
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

  private call(group: Request[], deadlineMs: number): Promise<PublishResult[]> {
    this.calls += 1;
    const only = group[0] as Request;
    if (group.length === 1 && only.events.length === 1) {
      return this.rpc.publish((only.events[0] as OutgoingEvent).event, deadlineMs).then((result) => [result]);
    }
    return this.rpc.batchPublish(
      group.flatMap((request) => request.events.map((e) => e.event)),
      deadlineMs,
    );
  }
}

function bound(name: string, value: number | undefined, fallback: number, maximum: number): number {
  const chosen = value ?? fallback;
  if (!Number.isInteger(chosen) || chosen < 1 || chosen > maximum) {
    throw new RangeError(`publishBatching.${name} must be a whole number from 1 to ${maximum}; got ${chosen}`);
  }
  return chosen;
}
