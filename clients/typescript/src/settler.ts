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
import { status } from "@grpc/grpc-js";

import { BrokerError } from "./errors";
import { type SettleKind, type TraceLink, startSettle } from "./tracing";

/** How long the first queued settlement waits for others to join it. */
export const FLUSH_INTERVAL_MS = 5;
/** Settlements sent at once when this many are queued. */
export const MAX_PENDING = 100;
/** Attempts of one Ack or Nack while the broker is briefly unavailable. */
export const SETTLE_ATTEMPTS = 3;
const RETRY_MULTIPLIER_MS = 50;
const RETRY_MAX_MS = 1000;

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
export class Settler {
  /** How many Ack and Nack calls were sent (for logs and tests). */
  calls = 0;
  private acks: Batch = { ids: [], links: [] };
  private nacks = new Map<string, Batch & { readonly options: NackOptions }>();
  private pending = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly sending = new Set<Promise<void>>();

  constructor(
    private readonly settle: SettleCalls,
    /** Told what could not be settled (those deliveries come again after their deadline). */
    private readonly warn: (message: string, error?: unknown) => void,
    /** The subscription settled, for the spans' names. */
    private readonly subscription = "",
    private readonly flushIntervalMs = FLUSH_INTERVAL_MS,
    private readonly maxPending = MAX_PENDING,
  ) {}

  /** Queue an ack; `link` is the delivery's process span, when traced. */
  ack(ackId: string, link?: TraceLink): void {
    queue(this.acks, ackId, link);
    this.added();
  }

  /** Queue a nack: retried after `delayS` (default: the backoff), or dead-lettered when terminal. */
  nack(ackId: string, options: NackOptions, link?: TraceLink): void {
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
  async drain(): Promise<void> {
    this.flush();
    while (this.sending.size > 0) await Promise.all([...this.sending]);
  }

  private added(): void {
    this.pending += 1;
    if (this.pending >= this.maxPending) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), this.flushIntervalMs);
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const acks = this.acks;
    const nacks = [...this.nacks.values()];
    this.acks = { ids: [], links: [] };
    this.nacks = new Map();
    this.pending = 0;
    if (acks.ids.length > 0) this.track(this.send("ack", acks, () => this.settle.ack(acks.ids)));
    for (const batch of nacks) {
      this.track(this.send("nack", batch, () => this.settle.nack(batch.ids, batch.options)));
    }
  }

  private track(send: Promise<void>): void {
    this.sending.add(send);
    void send.finally(() => this.sending.delete(send));
  }

  /**
   * Settle, retrying a broker that is briefly unavailable. A delivery whose
   * settlement is lost is delivered again after its deadline (at-least-once),
   * so a failure here is reported, not thrown.
   */
  private async send(kind: SettleKind, batch: Batch, call: () => Promise<string[]>): Promise<void> {
    const ackIds = batch.ids;
    const span = startSettle(kind, this.subscription, ackIds.length, batch.links, batch.options?.terminal);
    for (let attempt = 1; ; attempt += 1) {
      this.calls += 1;
      try {
        const notApplied = await call();
        span?.succeeded(notApplied.length);
        if (notApplied.length > 0) {
          this.warn(
            `${notApplied.length} of ${ackIds.length} ${kind}s not applied ` +
              "(lease expired or moved on); those deliveries come again",
          );
        }
        return;
      } catch (error) {
        const retryable = error instanceof BrokerError && error.code === status.UNAVAILABLE;
        if (!retryable || attempt >= SETTLE_ATTEMPTS) {
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

/** Ack ids to send in one call, and the process spans of those traced. */
interface Batch {
  readonly ids: string[];
  readonly links: TraceLink[];
  /** A nack's error, terminal flag and delay (none for acks). */
  readonly options?: NackOptions;
}

function queue(batch: Batch, ackId: string, link: TraceLink | undefined): void {
  batch.ids.push(ackId);
  if (link !== undefined) batch.links.push(link);
}
