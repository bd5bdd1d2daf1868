/**
 * Errors as typed objects: the gRPC status code, the `google.rpc.ErrorInfo`
 * reason and the `BadRequest` field violations the broker sends in the
 * `grpc-status-details-bin` trailer, decoded once here.
 */
import { status as Status, type ServiceError } from "@grpc/grpc-js";
import { type DurationLike } from "./durations";
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
export declare class BrokerError extends Error {
    /** gRPC status code. */
    readonly code: Status;
    /** The status message, written for a person. */
    readonly details: string;
    /** `ErrorInfo.reason`, or "" when the broker sent no ErrorInfo. */
    readonly reason: string;
    /** `ErrorInfo.metadata`: the values the error is about (a name, a limit). */
    readonly info: Readonly<Record<string, string>>;
    /** `BadRequest.field_violations`: every bad field of the request. */
    readonly fieldViolations: readonly FieldViolation[];
    readonly name = "BrokerError";
    constructor(
    /** gRPC status code. */
    code: Status, 
    /** The status message, written for a person. */
    details: string, 
    /** `ErrorInfo.reason`, or "" when the broker sent no ErrorInfo. */
    reason?: string, 
    /** `ErrorInfo.metadata`: the values the error is about (a name, a limit). */
    info?: Readonly<Record<string, string>>, 
    /** `BadRequest.field_violations`: every bad field of the request. */
    fieldViolations?: readonly FieldViolation[]);
    /** The status code's name: `INVALID_ARGUMENT`, `NOT_FOUND`, ... */
    get codeName(): string;
}
/**
 * A request refused before it was sent (nothing reached the broker), worded as
 * the broker words the same refusal: `INVALID_ARGUMENT` with the bad field's path.
 */
export declare function invalidArgument(field: string, description: string): BrokerError;
/** Thrown by a handler to dead-letter its delivery at once instead of retrying it. */
export declare class TerminalError extends Error {
    readonly name = "TerminalError";
}
/**
 * Thrown by a handler to have its delivery retried after `delay` (a duration:
 * a number is seconds, or `"30s"`, `"5m"`) instead of the subscription's backoff.
 *
 * ```ts
 * throw new RetryError("rate limited", { delay: "30s" });
 * ```
 */
export declare class RetryError extends Error {
    readonly name = "RetryError";
    /** The delay in seconds; undefined for the subscription's backoff. */
    readonly delayS: number | undefined;
    constructor(message?: string, options?: {
        delay?: DurationLike;
        cause?: unknown;
    });
}
/** The BrokerError a grpc-js error stands for, with its google.rpc details decoded. */
export declare function fromServiceError(error: ServiceError): BrokerError;
/** Wrap anything a call rejected with: grpc-js errors become BrokerErrors, the rest pass. */
export declare function asBrokerError(error: unknown): unknown;
