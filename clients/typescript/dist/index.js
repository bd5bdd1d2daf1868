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
exports.status = exports.pb = exports.MAX_PENDING = exports.FLUSH_INTERVAL_MS = exports.TerminalError = exports.RetryError = exports.BrokerError = exports.parseDuration = exports.parseDelay = exports.MAX_DELAY_S = exports.ACK_DEADLINE_MIN_S = exports.ACK_DEADLINE_MAX_S = exports.DEFAULT_MAX_OUTSTANDING = exports.DEFAULT_HANDLER_TIMEOUT_S = exports.Context = exports.Consumer = exports.CONSUMER_HEADER = exports.ATTACHED_HEADER = exports.SUBSCRIPTION_DIFFERS_WARNING = exports.DEFAULT_TIMEOUT_S = exports.DEFAULT_TARGET = exports.Client = void 0;
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
var client_1 = require("./client");
Object.defineProperty(exports, "Client", { enumerable: true, get: function () { return client_1.Client; } });
Object.defineProperty(exports, "DEFAULT_TARGET", { enumerable: true, get: function () { return client_1.DEFAULT_TARGET; } });
Object.defineProperty(exports, "DEFAULT_TIMEOUT_S", { enumerable: true, get: function () { return client_1.DEFAULT_TIMEOUT_S; } });
Object.defineProperty(exports, "SUBSCRIPTION_DIFFERS_WARNING", { enumerable: true, get: function () { return client_1.SUBSCRIPTION_DIFFERS_WARNING; } });
var consumer_1 = require("./consumer");
Object.defineProperty(exports, "ATTACHED_HEADER", { enumerable: true, get: function () { return consumer_1.ATTACHED_HEADER; } });
Object.defineProperty(exports, "CONSUMER_HEADER", { enumerable: true, get: function () { return consumer_1.CONSUMER_HEADER; } });
Object.defineProperty(exports, "Consumer", { enumerable: true, get: function () { return consumer_1.Consumer; } });
Object.defineProperty(exports, "Context", { enumerable: true, get: function () { return consumer_1.Context; } });
Object.defineProperty(exports, "DEFAULT_HANDLER_TIMEOUT_S", { enumerable: true, get: function () { return consumer_1.DEFAULT_HANDLER_TIMEOUT_S; } });
Object.defineProperty(exports, "DEFAULT_MAX_OUTSTANDING", { enumerable: true, get: function () { return consumer_1.DEFAULT_MAX_OUTSTANDING; } });
var durations_1 = require("./durations");
Object.defineProperty(exports, "ACK_DEADLINE_MAX_S", { enumerable: true, get: function () { return durations_1.ACK_DEADLINE_MAX_S; } });
Object.defineProperty(exports, "ACK_DEADLINE_MIN_S", { enumerable: true, get: function () { return durations_1.ACK_DEADLINE_MIN_S; } });
Object.defineProperty(exports, "MAX_DELAY_S", { enumerable: true, get: function () { return durations_1.MAX_DELAY_S; } });
Object.defineProperty(exports, "parseDelay", { enumerable: true, get: function () { return durations_1.parseDelay; } });
Object.defineProperty(exports, "parseDuration", { enumerable: true, get: function () { return durations_1.parseDuration; } });
var errors_1 = require("./errors");
Object.defineProperty(exports, "BrokerError", { enumerable: true, get: function () { return errors_1.BrokerError; } });
Object.defineProperty(exports, "RetryError", { enumerable: true, get: function () { return errors_1.RetryError; } });
Object.defineProperty(exports, "TerminalError", { enumerable: true, get: function () { return errors_1.TerminalError; } });
var settler_1 = require("./settler");
Object.defineProperty(exports, "FLUSH_INTERVAL_MS", { enumerable: true, get: function () { return settler_1.FLUSH_INTERVAL_MS; } });
Object.defineProperty(exports, "MAX_PENDING", { enumerable: true, get: function () { return settler_1.MAX_PENDING; } });
exports.pb = __importStar(require("./gen/eventbroker/v1/broker"));
var grpc_js_1 = require("@grpc/grpc-js");
Object.defineProperty(exports, "status", { enumerable: true, get: function () { return grpc_js_1.status; } });
