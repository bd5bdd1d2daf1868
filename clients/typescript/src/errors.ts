/**
 * Errors as typed objects: the gRPC status code, the `google.rpc.ErrorInfo`
 * reason and the `BadRequest` field violations the broker sends in the
 * `grpc-status-details-bin` trailer, decoded once here.
 */
import { status as Status, type Metadata, type ServiceError } from "@grpc/grpc-js";

import { type DurationLike, parseDuration, ANY_DELAY } from "./durations";

import { BadRequest, ErrorInfo } from "./gen/google/rpc/error_details";
import { Status as RpcStatus } from "./gen/google/rpc/status";

const DETAILS_TRAILER = "grpc-status-details-bin";
const ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo";
const BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest";

/** One bad field of a request, as the broker named it (`event.name`, `filter[0]`). */
export interface FieldViolation {
  /** Path of the field in the request. */
  readonly field: string;
  /** What is wrong with it, and the limit where there is one. */
  readonly description: string;
}

/**
 * A failed call. `code` is the gRPC status code (compare with `status` from
 * `@grpc/grpc-js`, or read `codeName`); `reason` is the broker's UPPER_SNAKE
 * reason (`INVALID_ARGUMENT`, `SUBSCRIPTION_NOT_FOUND`, ...), empty when the
 * failure did not come from the broker (a dropped connection, a deadline).
 */
export class BrokerError extends Error {
  override readonly name = "BrokerError";

  constructor(
    /** gRPC status code. */
    readonly code: Status,
    /** The status message, written for a person. */
    readonly details: string,
    /** `ErrorInfo.reason`, or "" when the broker sent no ErrorInfo. */
    readonly reason: string = "",
    /** `ErrorInfo.metadata`: the values the error is about (a name, a limit). */
    readonly info: Readonly<Record<string, string>> = {},
    /** `BadRequest.field_violations`: every bad field of the request. */
    readonly fieldViolations: readonly FieldViolation[] = [],
  ) {
    super(`${Status[code] ?? code}${reason ? ` ${reason}` : ""}: ${details}`);
  }

  /** The status code's name: `INVALID_ARGUMENT`, `NOT_FOUND`, ... */
  get codeName(): string {
    return Status[this.code] ?? String(this.code);
  }
}

/**
 * A request refused before it was sent (nothing reached the broker), worded as
 * the broker words the same refusal: `INVALID_ARGUMENT` with the bad field's path.
 */
export function invalidArgument(field: string, description: string): BrokerError {
  return new BrokerError(
    Status.INVALID_ARGUMENT,
    `${field}: ${description} (refused by the client; nothing was sent)`,
    "INVALID_ARGUMENT",
    {},
    [{ field, description }],
  );
}

/** Thrown by a handler to dead-letter its delivery at once instead of retrying it. */
export class TerminalError extends Error {
  override readonly name = "TerminalError";
}

/**
 * Thrown by a handler to have its delivery retried after `delay` (a duration:
 * a number is seconds, or `"30s"`, `"5m"`) instead of the subscription's backoff.
 *
 * ```ts
 * throw new RetryError("rate limited", { delay: "30s" });
 * ```
 */
export class RetryError extends Error {
  override readonly name = "RetryError";
  /** The delay in seconds; undefined for the subscription's backoff. */
  readonly delayS: number | undefined;

  constructor(message = "retry requested", options: { delay?: DurationLike; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.delayS = options.delay === undefined ? undefined : parseDuration(options.delay, "delay", ANY_DELAY);
  }
}

/** The BrokerError a grpc-js error stands for, with its google.rpc details decoded. */
export function fromServiceError(error: ServiceError): BrokerError {
  const decoded = decodeDetails(error.metadata);
  return new BrokerError(
    error.code,
    error.details,
    decoded.reason,
    decoded.info,
    decoded.fieldViolations,
  );
}

/** Wrap anything a call rejected with: grpc-js errors become BrokerErrors, the rest pass. */
export function asBrokerError(error: unknown): unknown {
  if (error instanceof BrokerError) return error;
  if (error instanceof Error && typeof (error as Partial<ServiceError>).code === "number") {
    return fromServiceError(error as ServiceError);
  }
  return error;
}

interface DecodedDetails {
  reason: string;
  info: Record<string, string>;
  fieldViolations: FieldViolation[];
}

function decodeDetails(metadata: Metadata | undefined): DecodedDetails {
  const decoded: DecodedDetails = { reason: "", info: {}, fieldViolations: [] };
  const raw = metadata?.get(DETAILS_TRAILER)[0];
  if (!(raw instanceof Buffer)) return decoded;
  let status: RpcStatus;
  try {
    status = RpcStatus.decode(raw);
  } catch {
    return decoded; // a malformed trailer must not hide the status code itself
  }
  for (const detail of status.details) {
    if (detail.typeUrl === ERROR_INFO_TYPE) {
      const info = ErrorInfo.decode(detail.value);
      decoded.reason = info.reason;
      decoded.info = info.metadata;
    } else if (detail.typeUrl === BAD_REQUEST_TYPE) {
      for (const violation of BadRequest.decode(detail.value).fieldViolations) {
        decoded.fieldViolations.push({
          field: violation.field,
          description: violation.description,
        });
      }
    }
  }
  return decoded;
}
