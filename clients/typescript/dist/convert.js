"use strict";
Object.defineProperty(exports, "__esModule", { value: true });
exports.toJsonValue = toJsonValue;
exports.durationFromMs = durationFromMs;
exports.durationToMs = durationToMs;
exports.messageFromDelivery = messageFromDelivery;
exports.eventFromArgs = eventFromArgs;
const MS_PER_S = 1000;
const NS_PER_MS = 1_000_000;
/**
 * `data` as the JSON value the broker will store: exactly what
 * `JSON.stringify` would send (a Date becomes its ISO string, an `undefined`
 * property is left out), so no value is dropped or reshaped silently on the way.
 * A value JSON cannot hold (a function, a symbol, a bigint) is refused here.
 */
function toJsonValue(data) {
    const text = JSON.stringify(data);
    if (text === undefined) {
        throw new TypeError(`data must be a JSON value; got ${typeof data}`);
    }
    return JSON.parse(text);
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
/** An event message from `publish`'s arguments. */
function eventFromArgs(name, data, options) {
    const event = {
        name,
        contentType: options.contentType ?? "",
        headers: { ...options.headers },
        id: options.id ?? "",
        priority: options.priority ?? 0,
        orderingKey: options.orderingKey ?? "",
    };
    if (data instanceof Uint8Array) {
        event.binaryData = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    }
    else if (data !== undefined) {
        event.data = toJsonValue(data);
    }
    if (options.delay instanceof Date) {
        event.deliverAt = options.delay;
    }
    else if (options.delay !== undefined) {
        event.delay = durationFromMs(options.delay);
    }
    return event;
}
