/** A length of time: a number of seconds, or a string (`"5m"`, `"1 day"`, `"500ms"`, `"PT5M"`). */
export type DurationLike = number | string;
/** When an event becomes deliverable: a length of time from now, or an absolute time. */
export type DelayLike = DurationLike | Date;
/** Longest delay of an event, a nack or a retry: "at most one year ahead", a leap year included. */
export declare const MAX_DELAY_S: number;
/** Shortest and longest lease: a subscription's ack deadline and each extension. */
export declare const ACK_DEADLINE_MIN_S = 1;
export declare const ACK_DEADLINE_MAX_S: number;
/** The lengths a parameter accepts, in seconds, both ends included. */
export interface DurationRange {
    readonly minimumS: number;
    /** Longest accepted length; undefined for no upper limit. */
    readonly maximumS?: number;
}
/** Ranges by parameter. */
export declare const ANY_DELAY: DurationRange;
export declare const ACK_DEADLINE: DurationRange;
export declare const AT_LEAST_ONE_SECOND: DurationRange;
export declare const UNLIMITED: DurationRange;
/**
 * Read a length of time (no absolute times) in seconds, and check it against `limits`.
 *
 * @param value - The length as the user wrote it (a number is seconds).
 * @param name - The parameter, for error messages (`ackDeadline`, `retryDelays[2]`).
 * @param limits - The lengths the parameter accepts (default: any that is not negative).
 * @throws RangeError The value is not a length of time, or is outside `limits`.
 */
export declare function parseDuration(value: DurationLike, name: string, limits?: DurationRange): number;
/**
 * Read a delay: seconds from now (a number), or an absolute `Date`.
 *
 * A relative delay is checked against the one-year limit here; an absolute time
 * is left to the broker, whose clock decides what "a year ahead" is.
 *
 * @throws RangeError The value cannot be read as a delay, or is negative or over a year.
 */
export declare function parseDelay(value: DelayLike, name?: string): number | Date;
/** A length of time as people write it in limits and logs: `0.5 s`, `12 h`, `366 days`. */
export declare function formatDuration(seconds: number): string;
