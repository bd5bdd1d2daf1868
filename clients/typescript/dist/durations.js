"use strict";
var __importDefault = (this && this.__importDefault) || function (mod) {
    return (mod && mod.__esModule) ? mod : { "default": mod };
};
Object.defineProperty(exports, "__esModule", { value: true });
exports.UNLIMITED = exports.AT_LEAST_ONE_SECOND = exports.ACK_DEADLINE = exports.ANY_DELAY = exports.ACK_DEADLINE_MAX_S = exports.ACK_DEADLINE_MIN_S = exports.MAX_DELAY_S = void 0;
exports.parseDuration = parseDuration;
exports.parseDelay = parseDelay;
exports.formatDuration = formatDuration;
/**
 * Lengths of time in the client: one rule, one parser, and the broker's limits.
 *
 * The rule, the same as the Python client's, for every duration and delay this
 * client takes (publish `delay`, subscription settings, nack and retry delays,
 * lease extensions, handler timeouts): **a bare number is seconds**. A string
 * may be words (`"5m"`, `"1 day"`, `"2 weeks"`, `"1h30m"`), an explicit
 * `"500ms"`, an ISO-8601 duration (`"PT5M"`) or a number of seconds (`"90"`).
 * A delay may also be an absolute time: a `Date` or an ISO-8601 time string.
 * Durations the client returns (a subscription's settings) are numbers of
 * seconds too.
 *
 * Values outside a limit are refused before anything is sent, with an error
 * naming the parameter, the unit and the range ("ackDeadline must be between
 * 1 s and 12 h; got 0.5 s"). The limits are the broker's (`eventbroker.durations`
 * in the Python client, which the broker reads its own from).
 */
const ms_1 = __importDefault(require("ms"));
const tinyduration_1 = require("tinyduration");
/** Longest delay of an event, a nack or a retry: "at most one year ahead", a leap year included. */
exports.MAX_DELAY_S = 366 * 24 * 3600;
/** Shortest and longest lease: a subscription's ack deadline and each extension. */
exports.ACK_DEADLINE_MIN_S = 1;
exports.ACK_DEADLINE_MAX_S = 12 * 3600;
/** Ranges by parameter. */
exports.ANY_DELAY = { minimumS: 0, maximumS: exports.MAX_DELAY_S };
exports.ACK_DEADLINE = { minimumS: exports.ACK_DEADLINE_MIN_S, maximumS: exports.ACK_DEADLINE_MAX_S };
exports.AT_LEAST_ONE_SECOND = { minimumS: 1 };
exports.UNLIMITED = { minimumS: 0 };
const DURATION_FORMS = "seconds as a number, or a string: words ('5m', '1 day', '500ms'), an ISO-8601 duration ('PT5M') or seconds ('90')";
const DELAY_FORMS = `${DURATION_FORMS}, or a Date or ISO-8601 time ('2026-01-14T17:46:05Z')`;
const SECONDS_RE = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$/;
/** One `<number><unit>` part of a compound such as `1h30m` or `2 days 4 hours`. */
const WORD_PART_RE = /(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)/gi;
const WORDS_RE = /^(?:\s*(?:\d+(?:\.\d*)?|\.\d+)\s*[a-z]+\s*,?)+$/i;
/** An absolute time: a date, optionally with a time (ISO-8601). */
const ISO_TIME_RE = /^\d{4}-\d{2}-\d{2}(?:[T ][\d:.]+(?:Z|[+-]\d{2}:?\d{2})?)?$/i;
const UNITS = [
    ["days", 86_400],
    ["h", 3600],
    ["min", 60],
];
const MS_PER_S = 1000;
/**
 * Read a length of time (no absolute times) in seconds, and check it against `limits`.
 *
 * @param value - The length as the user wrote it (a number is seconds).
 * @param name - The parameter, for error messages (`ackDeadline`, `retryDelays[2]`).
 * @param limits - The lengths the parameter accepts (default: any that is not negative).
 * @throws RangeError The value is not a length of time, or is outside `limits`.
 */
function parseDuration(value, name, limits = exports.UNLIMITED) {
    if (value instanceof Date) {
        throw new RangeError(`${name}: a Date is not a length of time; give ${DURATION_FORMS}`);
    }
    return checkRange(name, lengthS(value, name, DURATION_FORMS), limits);
}
/**
 * Read a delay: seconds from now (a number), or an absolute `Date`.
 *
 * A relative delay is checked against the one-year limit here; an absolute time
 * is left to the broker, whose clock decides what "a year ahead" is.
 *
 * @throws RangeError The value cannot be read as a delay, or is negative or over a year.
 */
function parseDelay(value, name = "delay") {
    if (value instanceof Date) {
        if (Number.isNaN(value.getTime()))
            throw new RangeError(`${name}: the Date is invalid`);
        return value;
    }
    if (typeof value === "string" && ISO_TIME_RE.test(value.trim())) {
        const moment = new Date(value.trim());
        if (Number.isNaN(moment.getTime())) {
            throw new RangeError(`${name}: cannot read ${JSON.stringify(value)} as a time; give ${DELAY_FORMS}`);
        }
        return moment;
    }
    return checkRange(name, lengthS(value, name, DELAY_FORMS), exports.ANY_DELAY);
}
/** A length of time as people write it in limits and logs: `0.5 s`, `12 h`, `366 days`. */
function formatDuration(seconds) {
    if (seconds !== 0 && Math.abs(seconds) >= 60) {
        for (const [unit, size] of UNITS) {
            if (seconds % size === 0) {
                const count = seconds / size;
                return `${count} ${unit === "days" && count === 1 ? "day" : unit}`;
            }
        }
    }
    return `${Number(seconds.toPrecision(6))} s`;
}
function checkRange(name, seconds, limits) {
    const tooLong = limits.maximumS !== undefined && seconds > limits.maximumS;
    if (seconds >= limits.minimumS && !tooLong)
        return seconds;
    const low = formatDuration(limits.minimumS);
    const got = formatDuration(seconds);
    if (limits.maximumS === undefined)
        throw new RangeError(`${name} must be at least ${low}; got ${got}`);
    throw new RangeError(`${name} must be between ${low} and ${formatDuration(limits.maximumS)}; got ${got}`);
}
/** Any relative form in seconds, negative ones included (the range refuses those). */
function lengthS(value, name, forms) {
    if (typeof value === "number") {
        if (!Number.isFinite(value))
            throw new RangeError(`${name} must be a finite number of seconds; got ${value}`);
        return value;
    }
    if (typeof value !== "string") {
        throw new RangeError(`${name}: cannot read ${describe(value)} as a length of time; give ${forms}`);
    }
    const text = value.trim();
    if (SECONDS_RE.test(text))
        return Number(text);
    const sign = text.startsWith("-") ? -1 : 1;
    const unsigned = text.replace(/^[+-]\s*/, "");
    if (/^p/i.test(unsigned))
        return sign * isoDurationS(value, name, unsigned.toUpperCase());
    if (WORDS_RE.test(unsigned)) {
        let totalMs = 0;
        for (const [, number, unit] of unsigned.matchAll(WORD_PART_RE)) {
            const partMs = (0, ms_1.default)(`${number}${unit}`);
            if (partMs === undefined || Number.isNaN(partMs)) {
                throw new RangeError(`${name}: cannot read ${JSON.stringify(value)} (unit ${JSON.stringify(unit)}); give ${forms}`);
            }
            totalMs += partMs;
        }
        return (sign * totalMs) / MS_PER_S;
    }
    throw new RangeError(`${name}: cannot read ${JSON.stringify(value)} as a length of time; give ${forms}`);
}
/** An ISO-8601 duration in seconds; years and months are counted from now, as a calendar does. */
function isoDurationS(text, name, upper) {
    let parts;
    try {
        parts = (0, tinyduration_1.parse)(upper);
    }
    catch (error) {
        throw new RangeError(`${name}: cannot read ${JSON.stringify(text)} as an ISO-8601 duration: ${String(error)}`);
    }
    const now = new Date();
    const later = new Date(now);
    later.setUTCFullYear(later.getUTCFullYear() + Math.trunc(parts.years ?? 0));
    later.setUTCMonth(later.getUTCMonth() + Math.trunc(parts.months ?? 0));
    const calendarS = (later.getTime() - now.getTime()) / MS_PER_S;
    const seconds = calendarS +
        ((parts.years ?? 0) % 1) * 365 * 86_400 +
        ((parts.months ?? 0) % 1) * 30 * 86_400 +
        (parts.weeks ?? 0) * 7 * 86_400 +
        (parts.days ?? 0) * 86_400 +
        (parts.hours ?? 0) * 3600 +
        (parts.minutes ?? 0) * 60 +
        (parts.seconds ?? 0);
    return parts.negative ? -seconds : seconds;
}
function describe(value) {
    if (typeof value === "bigint")
        return `${value}n`;
    if (value === null || value === undefined)
        return String(value);
    return typeof value === "object" ? Object.prototype.toString.call(value) : `${typeof value} ${String(value)}`;
}
