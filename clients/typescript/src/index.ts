/**
 * TypeScript client of the eventbroker gRPC API.
 *
 * `Client` publishes plain JSON and manages subscriptions; `client.subscribe`
 * runs a handler per delivery (ack on resolve, nack on throw); failures reject
 * with a `BrokerError` carrying the gRPC code, the ErrorInfo reason and the
 * field violations. The generated messages and the grpc-js stub are `pb`.
 */
export {
  Client,
  type ClientConfig,
  DEFAULT_TARGET,
  DEFAULT_TIMEOUT_MS,
  type PublishResult,
  type SubscriptionOptions,
} from "./client";
export { type JsonValue, type Message, type PublishOptions } from "./convert";
export { BrokerError, type FieldViolation, TerminalError } from "./errors";
export {
  ATTACHED_HEADER,
  type Attachment,
  CONSUMER_HEADER,
  DEFAULT_MAX_OUTSTANDING,
  type Handler,
  type SubscribeOptions,
  Subscriber,
} from "./subscriber";
export * as pb from "./gen/eventbroker/v1/broker";
export { status } from "@grpc/grpc-js";
