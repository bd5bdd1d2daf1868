"use strict";
var __createBinding = (this && this.__createBinding) || (Object.create ? (function(o, m, k, k2) {
    if (k2 === undefined) k2 = k;
    var desc = Object.getOwnPropertyDescriptor(m, k);
    if (!desc || ("get" in desc ? !m.__esModule : desc.writable || desc.configurable)) {
      desc = { enumerable: true, get: function() { return m[k]; } };
    }
    Object.defineProperty(o, k2, desc);
}) : (function(o, m, k, k2) {
    if (k2 === undefined) k2 = k;
    o[k2] = m[k];
}));
var __setModuleDefault = (this && this.__setModuleDefault) || (Object.create ? (function(o, v) {
    Object.defineProperty(o, "default", { enumerable: true, value: v });
}) : function(o, v) {
    o["default"] = v;
});
var __importStar = (this && this.__importStar) || (function () {
    var ownKeys = function(o) {
        ownKeys = Object.getOwnPropertyNames || function (o) {
            var ar = [];
            for (var k in o) if (Object.prototype.hasOwnProperty.call(o, k)) ar[ar.length] = k;
            return ar;
        };
        return ownKeys(o);
    };
    return function (mod) {
        if (mod && mod.__esModule) return mod;
        var result = {};
        if (mod != null) for (var k = ownKeys(mod), i = 0; i < k.length; i++) if (k[i] !== "default") __createBinding(result, mod, k[i]);
        __setModuleDefault(result, mod);
        return result;
    };
})();
Object.defineProperty(exports, "__esModule", { value: true });
exports.HEADERS_MAX_COUNT = exports.CONTENT_TYPE_MAX_LENGTH = exports.ORDERING_KEY_MAX_LENGTH = exports.ID_MAX_LENGTH = exports.PRIORITY_MAX = exports.PRIORITY_MIN = exports.NAME_RULE = exports.NAME_RE = void 0;
exports.toJsonValue = toJsonValue;
exports.durationFromS = durationFromS;
exports.durationToS = durationToS;
exports.durationFromMs = durationFromMs;
exports.durationToMs = durationToMs;
exports.messageFromDelivery = messageFromDelivery;
exports.eventFromArgs = eventFromArgs;
exports.publishResult = publishResult;
exports.subscriptionFromProto = subscriptionFromProto;
/**
 * Conversion between plain values and the generated messages, in one place:
 * JSON data to and from `google.protobuf.Value`, milliseconds and Dates to and
 * from `Duration` and `Timestamp`, deliveries to `Message`s.
 */
const node_crypto_1 = require("node:crypto");
const durations_1 = require("./durations");
const errors_1 = require("./errors");
const pb = __importStar(require("./gen/eventbroker/v1/broker"));
const MS_PER_S = 1000;
const NS_PER_MS = 1_000_000;
const NS_PER_S = 1_000_000_000;
const IDENTIFIER_RE = /^[A-Za-z_$][\w$]*$/;
/**
 * `data` as the JSON value the broker will store: exactly what
 * `JSON.stringify` would send (a Date becomes its ISO string, an `undefined`
 * property is left out, `toJSON` is called), so no value is dropped or
 * reshaped silently on the way. What JSON cannot hold, or what
 * `JSON.stringify` would silently turn into something else (a bigint, NaN or
 * Infinity, a Map or Set, a circular reference), is refused with a
 * `BrokerError` naming its path (`event.data.order.total`); nothing is sent.
 */
function toJsonValue(data, path = "data") {
    const value = walkJson(data, "", path, new Set());
    if (value === undefined) {
        throw (0, errors_1.invalidArgument)(path, `must be a JSON value; got ${data === undefined ? "undefined" : typeof data}`);
    }
    return value;
}
/** One value as JSON.stringify sees it; undefined where JSON.stringify leaves it out. */
function walkJson(input, key, path, open) {
    let value = input;
    if ((typeof value === "object" && value !== null) || typeof value === "bigint") {
        const toJSON = value.toJSON;
        if (typeof toJSON === "function")
            value = toJSON.call(value, key);
    }
    if (value instanceof Number || value instanceof String || value instanceof Boolean)
        value = value.valueOf();
    switch (typeof value) {
        case "string":
        case "boolean":
            return value;
        case "number":
            if (!Number.isFinite(value)) {
                throw (0, errors_1.invalidArgument)(path, `${value} is not a JSON number (JSON.stringify would send null)`);
            }
            return value;
        case "bigint":
            throw (0, errors_1.invalidArgument)(path, `a bigint (${value}n) is not a JSON value: send it as a string, or as a number if it is below 2^53`);
        case "undefined":
        case "function":
        case "symbol":
            return undefined;
    }
    if (value === null)
        return null;
    const object = value;
    if (object instanceof Map || object instanceof Set) {
        throw (0, errors_1.invalidArgument)(path, `a ${object.constructor.name} is not a JSON value (JSON.stringify would send {}): convert it to an object or array`);
    }
    if (open.has(object))
        throw (0, errors_1.invalidArgument)(path, "a circular reference is not a JSON value");
    open.add(object);
    try {
        if (Array.isArray(object)) {
            return object.map((item, index) => walkJson(item, String(index), `${path}[${index}]`, open) ?? null);
        }
        const result = {};
        for (const [field, item] of Object.entries(object)) {
            const fieldPath = IDENTIFIER_RE.test(field) ? `${path}.${field}` : `${path}[${JSON.stringify(field)}]`;
            const converted = walkJson(item, field, fieldPath, open);
            if (converted !== undefined)
                result[field] = converted;
        }
        return result;
    }
    finally {
        open.delete(object);
    }
}
/** A number of seconds as a Duration. */
function durationFromS(seconds) {
    const whole = Math.floor(seconds);
    return { seconds: whole, nanos: Math.round((seconds - whole) * NS_PER_S) };
}
/** A Duration as seconds (undefined when unset). */
function durationToS(duration) {
    return duration === undefined ? undefined : duration.seconds + duration.nanos / NS_PER_S;
}
/** A non-negative number of milliseconds as a Duration. */
function durationFromMs(ms) {
    if (!Number.isFinite(ms) || ms < 0) {
        throw new RangeError(`a duration must be a finite number of milliseconds >= 0; got ${ms}`);
    }
    const whole = Math.floor(ms);
    return {
        seconds: Math.floor(whole / MS_PER_S),
        nanos: (whole % MS_PER_S) * NS_PER_MS + Math.round((ms - whole) * NS_PER_MS),
    };
}
/** A Duration as milliseconds (0 when unset). */
function durationToMs(duration) {
    return duration === undefined ? 0 : duration.seconds * MS_PER_S + duration.nanos / NS_PER_MS;
}
/** A delivery as a Message. */
function messageFromDelivery(delivery) {
    return {
        ackId: delivery.ackId,
        eventId: delivery.eventId,
        name: delivery.name,
        data: delivery.data,
        binaryData: delivery.binaryData,
        contentType: delivery.contentType,
        headers: delivery.headers,
        publishTime: delivery.publishTime,
        delayMs: durationToMs(delivery.delay),
        priority: delivery.priority,
        attempt: delivery.attempt,
        ackDeadline: delivery.ackDeadline,
        subscription: delivery.subscription,
        orderingKey: delivery.orderingKey,
        dedupId: delivery.dedupId,
    };
}
/** The broker's fixed rules for an event (SPEC section 3); its size limits are its own settings. */
exports.NAME_RE = /^[a-z0-9._\-/:]{1,255}$/i;
exports.NAME_RULE = "must be 1 to 255 characters of letters, digits and . _ - / :";
exports.PRIORITY_MIN = -50;
exports.PRIORITY_MAX = 50;
exports.ID_MAX_LENGTH = 255;
exports.ORDERING_KEY_MAX_LENGTH = 255;
exports.CONTENT_TYPE_MAX_LENGTH = 255;
exports.HEADERS_MAX_COUNT = 64;
/**
 * An event message from `publish`'s arguments, checked against the rules the
 * client knows for certain (name, priority, lengths, JSON data); its id is the
 * caller's or a new UUID. `path` is the request field it goes in (`event`,
 * `events[2]`), for the errors.
 *
 * @throws BrokerError `INVALID_ARGUMENT` naming the bad field; nothing was sent.
 */
function eventFromArgs(name, data, options, path = "event") {
    if (typeof name !== "string" || !exports.NAME_RE.test(name)) {
        throw (0, errors_1.invalidArgument)(`${path}.name`, exports.NAME_RULE + (name ? `; got ${JSON.stringify(name)}` : " (it is empty)"));
    }
    const priority = options.priority ?? 0;
    if (!Number.isInteger(priority) || priority < exports.PRIORITY_MIN || priority > exports.PRIORITY_MAX) {
        throw (0, errors_1.invalidArgument)(`${path}.priority`, `must be an integer between ${exports.PRIORITY_MIN} and ${exports.PRIORITY_MAX}; got ${priority}`);
    }
    checkLength(`${path}.id`, options.id ?? "", exports.ID_MAX_LENGTH);
    checkLength(`${path}.ordering_key`, options.orderingKey ?? "", exports.ORDERING_KEY_MAX_LENGTH);
    checkLength(`${path}.content_type`, options.contentType ?? "", exports.CONTENT_TYPE_MAX_LENGTH);
    const headers = { ...options.headers };
    const headerNames = Object.keys(headers);
    if (headerNames.length > exports.HEADERS_MAX_COUNT) {
        throw (0, errors_1.invalidArgument)(`${path}.headers`, `at most ${exports.HEADERS_MAX_COUNT} headers; got ${headerNames.length}`);
    }
    let sizeBytes = Buffer.byteLength(name);
    for (const [header, text] of Object.entries(headers)) {
        if (typeof text !== "string") {
            throw (0, errors_1.invalidArgument)(`${path}.headers[${JSON.stringify(header)}]`, `must be a string; got ${typeof text}`);
        }
        sizeBytes += Buffer.byteLength(header) + Buffer.byteLength(text);
    }
    const event = {
        name,
        contentType: options.contentType ?? "",
        headers,
        id: options.id || (0, node_crypto_1.randomUUID)(),
        priority,
        orderingKey: options.orderingKey ?? "",
    };
    if (data instanceof Uint8Array) {
        event.binaryData = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
        sizeBytes += data.byteLength;
    }
    else if (data !== undefined) {
        event.data = toJsonValue(data, `${path}.data`);
        sizeBytes += Buffer.byteLength(JSON.stringify(event.data));
    }
    if (options.delay !== undefined) {
        let delay;
        try {
            delay = (0, durations_1.parseDelay)(options.delay, `${path}.delay`);
        }
        catch (error) {
            throw (0, errors_1.invalidArgument)(`${path}.delay`, error instanceof Error ? error.message : String(error));
        }
        if (delay instanceof Date)
            event.deliverAt = delay;
        else
            event.delay = durationFromS(delay);
    }
    return { event, sizeBytes };
}
function checkLength(field, value, maximum) {
    if (typeof value !== "string" || value.length > maximum) {
        throw (0, errors_1.invalidArgument)(field, `at most ${maximum} characters; got ${typeof value === "string" ? value.length : typeof value}`);
    }
}
/** A publish result from the broker's answer. */
function publishResult(result) {
    return {
        eventId: result.eventId,
        status: result.status === pb.PublishStatus.PUBLISH_STATUS_DUPLICATE ? "DUPLICATE" : "CREATED",
        matchedSubscriptions: result.matchedSubscriptions,
    };
}
/** A subscription message as a plain object (never undefined: a missing message is an error). */
function subscriptionFromProto(subscription) {
    if (subscription === undefined)
        throw new Error("the broker answered without the subscription");
    return {
        name: subscription.name,
        filter: [...subscription.filter],
        ackDeadline: durationToS(subscription.ackDeadline) ?? 0,
        maxAttempts: subscription.maxAttempts,
        minBackoff: durationToS(subscription.retryPolicy?.minBackoff),
        maxBackoff: durationToS(subscription.retryPolicy?.maxBackoff),
        retryDelays: (subscription.retryPolicy?.delays ?? []).map((d) => durationToS(d) ?? 0),
        maxInFlight: subscription.maxInFlight,
        ordered: subscription.ordered,
        maxInFlightPerKey: subscription.maxInFlightPerKey,
        keyHeader: subscription.keyHeader,
        retention: durationToS(subscription.retention),
        maxAge: durationToS(subscription.maxAge),
        createTime: subscription.createTime,
    };
}
