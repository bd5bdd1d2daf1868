/**
 * TypeScript client of the eventbroker gRPC API.
 *
 * `Client` publishes plain JSON (joining publishes made while one is in flight
 * into one BatchPublish) and manages subscriptions; `client.subscribe` starts a
 * `Consumer` that runs a handler per delivery (ack on resolve, nack on throw),
 * batches its acks, renews leases, reconnects, and drains on SIGTERM/SIGINT.
 * Every duration is a number of seconds or a string (`"5m"`, `"1 day"`,
 * `"PT5M"`). Failures reject with a `BrokerError` carrying the gRPC code, the
 * ErrorInfo reason and the field violations. The generated messages and the
 * grpc-js stub are `pb`.
 */
export { Client, type ClientConfig, DEFAULT_TARGET, DEFAULT_TIMEOUT_S, type NackOptions, SUBSCRIPTION_DIFFERS_WARNING, type SubscriptionChanges, type SubscriptionOptions, } from "./client";
export { ATTACHED_HEADER, type Attachment, CONSUMER_HEADER, Consumer, type ConsumerEvents, type ConsumerOptions, Context, DEFAULT_HANDLER_TIMEOUT_S, DEFAULT_MAX_OUTSTANDING, type Disconnection, type Handler, } from "./consumer";
export { type JsonValue, type Message, type PublishOptions, type PublishResult, type Subscription, } from "./convert";
export { ACK_DEADLINE_MAX_S, ACK_DEADLINE_MIN_S, type DelayLike, type DurationLike, MAX_DELAY_S, parseDelay, parseDuration, } from "./durations";
export { BrokerError, type FieldViolation, RetryError, TerminalError } from "./errors";
export { FLUSH_INTERVAL_MS, MAX_PENDING } from "./settler";
export { type PublishBatching } from "./publisher";
export * as pb from "./gen/eventbroker/v1/broker";
export { status } from "@grpc/grpc-js";
