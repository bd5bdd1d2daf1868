/** Counting the client's calls by method, through a grpc-js interceptor. */
import { InterceptingCall, type Interceptor } from "@grpc/grpc-js";

import { Client, type ClientConfig } from "../src/index";

export interface CountingClient {
  client: Client;
  /** Calls started, by method name (`Ack`, `Publish`, `BatchPublish`, ...). */
  calls: Map<string, number>;
  /** Requests sent, by method name, in order. */
  requests: Map<string, unknown[]>;
}

/** A client whose every call is counted and whose requests are kept. */
export function countingClient(target: string, config: ClientConfig = {}): CountingClient {
  const calls = new Map<string, number>();
  const requests = new Map<string, unknown[]>();
  const interceptor: Interceptor = (options, nextCall) => {
    const method = options.method_definition.path.split("/").pop() ?? "";
    calls.set(method, (calls.get(method) ?? 0) + 1);
    return new InterceptingCall(nextCall(options), {
      sendMessage(message, next) {
        const kept = requests.get(method) ?? [];
        kept.push(message);
        requests.set(method, kept);
        next(message);
      },
    });
  };
  const client = new Client(target, { ...config, channelOptions: { interceptors: [interceptor] } });
  return { client, calls, requests };
}
