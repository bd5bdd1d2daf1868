/**
 * The client: publish plain JSON, run a handler per delivery, manage
 * subscriptions. Everything goes through the generated grpc-js stub, which
 * stays at hand as `client.stub` for the calls this layer does not wrap.
 */
import {
  type CallOptions,
  type ChannelCredentials,
  type ClientOptions,
  credentials as grpcCredentials,
  Metadata,
  type ServiceError,
} from "@grpc/grpc-js";

import { eventFromArgs, type PublishOptions, durationFromMs } from "./convert";
import { asBrokerError } from "./errors";
import * as pb from "./gen/eventbroker/v1/broker";
import { type Handler, type SubscribeOptions, Subscriber } from "./subscriber";

/** The target when none is given or set in `EVENTBROKER_TARGET`. */
export const DEFAULT_TARGET = "127.0.0.1:50051";
/** Deadline of a unary call unless `ClientConfig.timeoutMs` says otherwise. */
export const DEFAULT_TIMEOUT_MS = 30_000;

/** How to reach the broker. */
export interface ClientConfig {
  /** Bearer key, sent as `authorization: Bearer <key>`; default `EVENTBROKER_API_KEY`. */
  apiKey?: string;
  /** Channel credentials; default plaintext (`credentials.createSsl()` for TLS). */
  credentials?: ChannelCredentials;
  /** Deadline of each unary call in milliseconds. */
  timeoutMs?: number;
  /** grpc-js channel options (keepalive, message sizes, ...). */
  channelOptions?: Partial<ClientOptions>;
}

/** The outcome of a publish. */
export interface PublishResult {
  /** The broker-assigned event id (the first event's id for a duplicate). */
  eventId: string;
  /** `CREATED`: stored and fanned out; `DUPLICATE`: same id inside the dedup window. */
  status: "CREATED" | "DUPLICATE";
}

/** The settings of a new subscription; unset ones take the broker's defaults. */
export interface SubscriptionOptions {
  /** Time a consumer has to ack, in milliseconds (default 30 s). */
  ackDeadlineMs?: number;
  /** Failed attempts before dead-lettering (default 20). */
  maxAttempts?: number;
  /** Explicit retry delays in milliseconds: after attempt n, retryDelaysMs[n-1]; the last repeats. */
  retryDelaysMs?: number[];
  /** Concurrency limit across all consumers; 0 means unlimited. */
  maxInFlight?: number;
  /** FIFO per ordering key. */
  ordered?: boolean;
  /** Deliver every stored matching event, not only new ones. */
  fromBeginning?: boolean;
}

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => unknown;

/**
 * A connection to the broker.
 *
 * ```ts
 * const client = new Client(); // EVENTBROKER_TARGET, default 127.0.0.1:50051
 * await client.publish("user.joined", { plan: "pro" }, { id: "signup-42" });
 * ```
 */
export class Client {
  /** The generated grpc-js stub, for every RPC (with `metadata` carrying the key). */
  readonly stub: pb.EventBrokerServiceClient;
  /** Call metadata: the bearer key when there is one. */
  readonly metadata: Metadata;
  private readonly timeoutMs: number;

  constructor(target: string = process.env.EVENTBROKER_TARGET ?? DEFAULT_TARGET, config: ClientConfig = {}) {
    this.stub = new pb.EventBrokerServiceClient(
      target,
      config.credentials ?? grpcCredentials.createInsecure(),
      config.channelOptions,
    );
    this.metadata = new Metadata();
    const apiKey = config.apiKey ?? process.env.EVENTBROKER_API_KEY;
    if (apiKey) this.metadata.set("authorization", `Bearer ${apiKey}`);
    this.timeoutMs = config.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /**
   * Publish one event. `data` is any JSON value (sent as `JSON.stringify` would
   * send it), or a Buffer / Uint8Array for binary data; `undefined` for none.
   * Rejects with a BrokerError naming the bad field when the broker refuses it.
   */
  async publish(name: string, data?: unknown, options: PublishOptions = {}): Promise<PublishResult> {
    const response = await this.unary(this.stub.publish, {
      event: eventFromArgs(name, data, options),
    });
    return {
      eventId: response.eventId,
      status: response.status === pb.PublishStatus.PUBLISH_STATUS_DUPLICATE ? "DUPLICATE" : "CREATED",
    };
  }

  /** Publish many events in one transaction: all are stored or none. Results in order. */
  async publishBatch(
    events: readonly { name: string; data?: unknown; options?: PublishOptions }[],
  ): Promise<PublishResult[]> {
    const response = await this.unary(this.stub.batchPublish, {
      events: events.map((e) => eventFromArgs(e.name, e.data, e.options ?? {})),
    });
    return response.results.map((r) => ({
      eventId: r.eventId,
      status: r.status === pb.PublishStatus.PUBLISH_STATUS_DUPLICATE ? "DUPLICATE" : "CREATED",
    }));
  }

  /** Create a durable subscription to the events matching `filter` (`user.*`, `orders.>`). */
  async createSubscription(
    name: string,
    filter: string | readonly string[],
    options: SubscriptionOptions = {},
  ): Promise<pb.Subscription | undefined> {
    const subscription: pb.Subscription = {
      name,
      filter: typeof filter === "string" ? [filter] : [...filter],
      maxAttempts: options.maxAttempts ?? 0,
      maxInFlight: options.maxInFlight ?? 0,
      ordered: options.ordered ?? false,
      startPosition: options.fromBeginning
        ? pb.StartPosition.START_POSITION_BEGINNING
        : pb.StartPosition.START_POSITION_UNSPECIFIED,
    };
    if (options.ackDeadlineMs !== undefined) {
      subscription.ackDeadline = durationFromMs(options.ackDeadlineMs);
    }
    if (options.retryDelaysMs !== undefined) {
      subscription.retryPolicy = { delays: options.retryDelaysMs.map(durationFromMs) };
    }
    const response = await this.unary(this.stub.createSubscription, { subscription });
    return response.subscription;
  }

  /** Delete a subscription and its pending deliveries. */
  async deleteSubscription(name: string): Promise<void> {
    await this.unary(this.stub.deleteSubscription, { name });
  }

  /**
   * Attach a consumer to `subscription` and run `handler` for each delivery:
   * resolved, the delivery is acked; thrown, it is nacked (retried after the
   * subscription's backoff; a `TerminalError` dead-letters it). At most
   * `maxOutstanding` handlers run at once. Await `ready` to know the consumer
   * is attached; `close()` lets running handlers finish and detaches.
   */
  subscribe(subscription: string, handler: Handler, options: SubscribeOptions = {}): Subscriber {
    return new Subscriber(this, subscription, handler, options);
  }

  /** Acknowledge deliveries; resolves to the ack ids that were not applied. */
  async ack(ackIds: readonly string[]): Promise<string[]> {
    const response = await this.unary(this.stub.ack, { ackIds: [...ackIds] });
    return response.notAppliedAckIds;
  }

  /** Give deliveries back for a retry (or dead-letter them with `terminal`). */
  async nack(
    ackIds: readonly string[],
    options: { error?: string; terminal?: boolean; delayMs?: number } = {},
  ): Promise<string[]> {
    const request: pb.NackRequest = {
      ackIds: [...ackIds],
      terminal: options.terminal ?? false,
      error: options.error ?? "",
    };
    if (options.delayMs !== undefined) request.delay = durationFromMs(options.delayMs);
    const response = await this.unary(this.stub.nack, request);
    return response.notAppliedAckIds;
  }

  /** Close the channel; calls still running end with CANCELLED. */
  close(): void {
    this.stub.close();
  }

  /** Call a unary method of the stub as a promise; a failure rejects with a BrokerError. */
  unary<Req, Res>(method: UnaryMethod<Req, Res>, request: Req): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      method.call(
        this.stub,
        request,
        this.metadata,
        { deadline: Date.now() + this.timeoutMs },
        (error: ServiceError | null, response: Res) => {
          if (error) reject(asBrokerError(error));
          else resolve(response);
        },
      );
    });
  }
}
