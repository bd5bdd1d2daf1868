"use strict";
Object.defineProperty(exports, "__esModule", { value: true });
exports.RetryError = exports.TerminalError = exports.BrokerError = void 0;
exports.invalidArgument = invalidArgument;
exports.fromServiceError = fromServiceError;
exports.asBrokerError = asBrokerError;
/**
 * Errors as typed objects: the gRPC status code, the `google.rpc.ErrorInfo`
 * reason and the `BadRequest` field violations the broker sends in the
 * `grpc-status-details-bin` trailer, decoded once here.
 */
const grpc_js_1 = require("@grpc/grpc-js");
const durations_1 = require("./durations");
const error_details_1 = require("./gen/google/rpc/error_details");
const status_1 = require("./gen/google/rpc/status");
const DETAILS_TRAILER = "grpc-status-details-bin";
const ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo";
const BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest";
/**
 * A failed call. `code` is the gRPC status code (compare with `status` from
 * `@grpc/grpc-js`, or read `codeName`); `reason` is the broker's UPPER_SNAKE
 * reason (`INVALID_ARGUMENT`, `SUBSCRIPTION_NOT_FOUND`, ...), empty when the
 * failure did not come from the broker (a dropped connection, a deadline).
 */
class BrokerError extends Error {
    code;
    details;
    reason;
    info;
    fieldViolations;
    name = "BrokerError";
    constructor(
    /** gRPC status code. */
    code, 
    /** The status message, written for a person. */
    details, 
    /** `ErrorInfo.reason`, or "" when the broker sent no ErrorInfo. */
    reason = "", 
    /** `ErrorInfo.metadata`: the values the error is about (a name, a limit). */
    info = {}, 
    /** `BadRequest.field_violations`: every bad field of the request. */
    fieldViolations = []) {
        super(`${grpc_js_1.status[code] ?? code}${reason ? ` ${reason}` : ""}: ${details}`);
        this.code = code;
        this.details = details;
        this.reason = reason;
        this.info = info;
        this.fieldViolations = fieldViolations;
    }
    /** The status code's name: `INVALID_ARGUMENT`, `NOT_FOUND`, ... */
    get codeName() {
        return grpc_js_1.status[this.code] ?? String(this.code);
    }
}
exports.BrokerError = BrokerError;
/**
 * A request refused before it was sent (nothing reached the broker), worded as
 * the broker words the same refusal: `INVALID_ARGUMENT` with the bad field's path.
 */
function invalidArgument(field, description) {
    return new BrokerError(grpc_js_1.status.INVALID_ARGUMENT, `${field}: ${description} (refused by the client; nothing was sent)`, "INVALID_ARGUMENT", {}, [{ field, description }]);
}
/** Thrown by a handler to dead-letter its delivery at once instead of retrying it. */
class TerminalError extends Error {
    name = "TerminalError";
}
exports.TerminalError = TerminalError;
/**
 * Thrown by a handler to have its delivery retried after `delay` (a duration:
 * a number is seconds, or `"30s"`, `"5m"`) instead of the subscription's backoff.
 *
 * ```ts
 * throw new RetryError("rate limited", { delay: "30s" });
 * ```
 */
class RetryError extends Error {
    name = "RetryError";
    /** The delay in seconds; undefined for the subscription's backoff. */
    delayS;
    constructor(message = "retry requested", options = {}) {
        super(message, options.cause === undefined ? undefined : { cause: options.cause });
        this.delayS = options.delay === undefined ? undefined : (0, durations_1.parseDuration)(options.delay, "delay", durations_1.ANY_DELAY);
    }
}
exports.RetryError = RetryError;
/** The BrokerError a grpc-js error stands for, with its google.rpc details decoded. */
function fromServiceError(error) {
    const decoded = decodeDetails(error.metadata);
    return new BrokerError(error.code, error.details, decoded.reason, decoded.info, decoded.fieldViolations);
}
/** Wrap anything a call rejected with: grpc-js errors become BrokerErrors, the rest pass. */
function asBrokerError(error) {
    if (error instanceof BrokerError)
        return error;
    if (error instanceof Error && typeof error.code === "number") {
        return fromServiceError(error);
    }
    return error;
}
function decodeDetails(metadata) {
    const decoded = { reason: "", info: {}, fieldViolations: [] };
    const raw = metadata?.get(DETAILS_TRAILER)[0];
    if (!(raw instanceof Buffer))
        return decoded;
    let status;
    try {
        status = status_1.Status.decode(raw);
    }
    catch {
        return decoded; // a malformed trailer must not hide the status code itself
    }
    for (const detail of status.details) {
        if (detail.typeUrl === ERROR_INFO_TYPE) {
            const info = error_details_1.ErrorInfo.decode(detail.value);
            decoded.reason = info.reason;
            decoded.info = info.metadata;
        }
        else if (detail.typeUrl === BAD_REQUEST_TYPE) {
            for (const violation of error_details_1.BadRequest.decode(detail.value).fieldViolations) {
                decoded.fieldViolations.push({
                    field: violation.field,
                    description: violation.description,
                });
            }
        }
    }
    return decoded;
}
