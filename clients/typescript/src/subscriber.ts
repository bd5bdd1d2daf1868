/**
 * The consumer side: one Subscribe stream, a handler run per delivery, an ack
 * when it resolves and a nack when it throws.
 */
import { type ClientReadableStream, type Metadata, type ServiceError, status } from "@grpc/grpc-js";

import type { Client } from "./client";
import { type Message, messageFromDelivery } from "./convert";
import { BrokerError, TerminalError, asBrokerError } from "./errors";
import type * as pb from "./gen/eventbroker/v1/broker";

/** Subscribe's response headers, sent by the broker once the consumer is attached. */
export const ATTACHED_HEADER = "eventbroker-attached";
export const CONSUMER_HEADER = "eventbroker-consumer";
/** Deliveries held at once unless `SubscribeOptions.maxOutstanding` says otherwise. */
export const DEFAULT_MAX_OUTSTANDING = 100;
/** The broker's largest batch per stream message. */
const MAX_BATCH_SIZE = 100;

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
export class Subscriber {
  /** Resolves once the broker has attached this consumer; rejects if the stream fails first. */
  readonly ready: Promise<Attachment>;
  /** Resolves when the stream has ended after `close()`; rejects when it failed. */
  readonly closed: Promise<void>;

  private readonly call: ClientReadableStream<pb.SubscribeResponse>;
  private readonly running = new Set<Promise<void>>();
  private stopping = false;

  constructor(
    private readonly client: Client,
    readonly subscription: string,
    private readonly handler: Handler,
    private readonly options: SubscribeOptions,
  ) {
    const maxOutstanding = options.maxOutstanding ?? DEFAULT_MAX_OUTSTANDING;
    this.call = client.stub.subscribe(
      {
        subscription,
        maxOutstanding,
        maxBatchSize: Math.min(maxOutstanding, MAX_BATCH_SIZE),
        filter: [],
        consumerName: options.consumerName ?? "",
        jsonAsBinary: false,
      },
      client.metadata,
    );
    let attached: (attachment: Attachment) => void = () => undefined;
    let attachFailed: (error: unknown) => void = () => undefined;
    this.ready = new Promise<Attachment>((resolve, reject) => {
      attached = resolve;
      attachFailed = reject;
    });
    this.closed = new Promise<void>((resolve, reject) => {
      this.call.on("metadata", (metadata: Metadata) => {
        if (metadata.get(ATTACHED_HEADER)[0] === "1") {
          attached({ consumerId: decodeURIComponent(String(metadata.get(CONSUMER_HEADER)[0] ?? "")) });
        }
      });
      this.call.on("data", (response: pb.SubscribeResponse) => {
        // A broker without the attach headers is attached once it delivers.
        attached({ consumerId: "" });
        for (const delivery of response.deliveries) this.start(messageFromDelivery(delivery));
      });
      this.call.on("error", (error: ServiceError) => {
        const failure =
          this.stopping && error.code === status.CANCELLED ? undefined : asBrokerError(error);
        attachFailed(failure ?? new BrokerError(status.CANCELLED, "closed before attaching"));
        if (failure === undefined) resolve();
        else reject(failure);
      });
      this.call.on("end", () => {
        attachFailed(new BrokerError(status.UNAVAILABLE, "the broker ended the stream"));
        resolve();
      });
    });
    // Both stay observable through the properties; a caller that never awaits
    // one must not bring the process down with an unhandled rejection.
    this.ready.catch(() => undefined);
    this.closed.catch(() => undefined);
  }

  /**
   * Stop taking deliveries, let running handlers finish and settle them, then
   * detach (deliveries received but not started are given back at once).
   */
  async close(): Promise<void> {
    this.stopping = true;
    while (this.running.size > 0) await Promise.allSettled([...this.running]);
    this.call.cancel();
    await this.closed;
  }

  private start(message: Message): void {
    if (this.stopping) return;
    const task = this.handle(message).finally(() => this.running.delete(task));
    this.running.add(task);
  }

  private async handle(message: Message): Promise<void> {
    let settle: Promise<unknown>;
    try {
      await this.handler(message);
      settle = this.client.ack([message.ackId]);
    } catch (error) {
      settle = this.client.nack([message.ackId], {
        error: error instanceof Error ? `${error.name}: ${error.message}` : String(error),
        terminal: error instanceof TerminalError,
      });
    }
    try {
      await settle;
    } catch (error) {
      if (this.options.onSettleError) this.options.onSettleError(error, message);
      else process.emitWarning(`could not settle delivery ${message.ackId}: ${String(error)}`);
    }
  }
}
