/**
 * The consumer against a real broker: batched acks and nacks, lease renewal
 * of handlers that outlive the ack deadline, retry with a delay, handler
 * timeouts, existOk, and the drain on SIGTERM in a process of its own.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { BrokerError, Client, type Message, RetryError, SUBSCRIPTION_DIFFERS_WARNING, pb, status } from "../src/index";
import { type Broker, startBroker } from "./broker";
import { countingClient } from "./calls";
import { signal } from "./waiting";

const TIMEOUT = { timeout: 60_000 };

let broker: Broker;
let client: Client;

before(async () => {
  broker = await startBroker();
  client = new Client(broker.target);
});

after(async () => {
  client?.close();
  await broker?.stop();
});

async function deliveryOf(eventId: string, subscription: string): Promise<pb.DeliveryStatus> {
  const response = await client.unary(client.stub.getEvent, { eventId });
  const found = response.deliveries.find((d) => d.subscription === subscription);
  assert.ok(found, `event ${eventId} has no delivery in ${subscription}`);
  return found;
}

describe("settling", () => {
  test("acks go in batches of at most 100 ids, not one call per delivery", TIMEOUT, async () => {
    const total = 250;
    await client.createSubscription("batched-acks", "acked.*");
    const counting = countingClient(broker.target);
    const handled = new Set<string>();
    const all = signal();
    const consumer = counting.client.subscribe(
      "batched-acks",
      (message) => {
        handled.add(message.eventId);
        if (handled.size === total) all.resolve();
      },
      { maxOutstanding: 500, handleSignals: false },
    );
    try {
      await consumer.ready;
      const events = Array.from({ length: total }, (_, i) => ({ name: "acked.item", data: i }));
      const results = await client.publishBatch(events);
      await all.promise;
      await consumer.close();
      const acks = counting.requests.get("Ack") as { ackIds: string[] }[];
      assert.equal(acks.flatMap((a) => a.ackIds).length, total, "every delivery acked once");
      assert.ok(acks.every((a) => a.ackIds.length <= 100), `batch sizes ${acks.map((a) => a.ackIds.length)}`);
      assert.ok(acks.length <= 10, `${acks.length} Ack calls for ${total} deliveries`);
      const stats = await client.unary(client.stub.getStats, { subscription: "batched-acks" });
      assert.equal(stats.subscriptions[0]?.acked, total);
      assert.equal((await deliveryOf(results[0]?.eventId ?? "", "batched-acks")).state, pb.DeliveryState.DELIVERY_STATE_ACKED);
    } finally {
      counting.client.close();
    }
  });

  test("nacks with the same error go together in one call", TIMEOUT, async () => {
    const total = 40;
    await client.createSubscription("batched-nacks", "nacked.*", { retryDelays: ["1h"] });
    const counting = countingClient(broker.target);
    let seen = 0;
    const all = signal();
    const consumer = counting.client.subscribe(
      "batched-nacks",
      () => {
        seen += 1;
        if (seen === total) all.resolve();
        throw new Error("downstream is down");
      },
      { handleSignals: false },
    );
    consumer.on("warning", () => undefined);
    try {
      await consumer.ready;
      await client.publishBatch(Array.from({ length: total }, (_, i) => ({ name: "nacked.item", data: i })));
      await all.promise;
      await consumer.close();
      const nacks = counting.requests.get("Nack") as { ackIds: string[]; error: string }[];
      assert.equal(nacks.flatMap((n) => n.ackIds).length, total);
      assert.ok(nacks.length <= 4, `${nacks.length} Nack calls for ${total} deliveries`);
      assert.ok(nacks.every((n) => n.error === "Error: downstream is down"));
    } finally {
      counting.client.close();
    }
  });
});

describe("leases", () => {
  test("a handler longer than the ack deadline keeps its lease and is not redelivered", TIMEOUT, async () => {
    const ackDeadlineS = 2;
    const handlerMs = 5_500;
    await client.createSubscription("slow-work", "slow.*", { ackDeadline: ackDeadlineS, retryDelays: [0] });
    const counting = countingClient(broker.target);
    const starts: Message[] = [];
    const finished = signal();
    let running = 0;
    let concurrentRedelivery = false;
    const consumer = counting.client.subscribe(
      "slow-work",
      async (message) => {
        if (running > 0) concurrentRedelivery = true;
        running += 1;
        starts.push(message);
        await new Promise((resolve) => setTimeout(resolve, handlerMs));
        running -= 1;
        finished.resolve();
      },
      { handlerTimeout: "1m", handleSignals: false },
    );
    try {
      await consumer.ready;
      const { eventId } = await client.publish("slow.job", { n: 1 });
      await finished.promise;
      await consumer.close();
      assert.equal(concurrentRedelivery, false);
      assert.deepEqual(starts.map((m) => m.attempt), [1]);
      const renewals = counting.requests.get("ExtendAckDeadline") as { ackIds: string[] }[];
      assert.ok(renewals.length >= 2, `${renewals.length} renewals over ${handlerMs} ms with a ${ackDeadlineS} s deadline`);
      const delivery = await deliveryOf(eventId, "slow-work");
      assert.equal(delivery.state, pb.DeliveryState.DELIVERY_STATE_ACKED);
      assert.equal(delivery.attempts, 1);
    } finally {
      counting.client.close();
    }
  });
});

describe("handler outcomes", () => {
  test("a RetryError with a delay is retried after that delay, not the backoff", TIMEOUT, async () => {
    await client.createSubscription("retry-later", "later.job", { retryDelays: [0] });
    const times: number[] = [];
    const retried = signal<Message>();
    const consumer = client.subscribe(
      "retry-later",
      (message) => {
        times.push(performance.now());
        if (message.attempt === 1) throw new RetryError("rate limited", { delay: "1500ms" });
        retried.resolve(message);
      },
      { handleSignals: false },
    );
    await consumer.ready;
    const { eventId } = await client.publish("later.job", {});
    const retry = await retried.promise;
    await consumer.close();
    assert.equal(retry.attempt, 2);
    assert.ok((times[1] ?? 0) - (times[0] ?? 0) >= 1400, `retried after ${(times[1] ?? 0) - (times[0] ?? 0)} ms`);
    const delivery = await deliveryOf(eventId, "retry-later");
    assert.equal(delivery.history[0]?.error, "RetryError: rate limited");
  });

  test("a handler past its timeout is nacked and its signal aborts", TIMEOUT, async () => {
    await client.createSubscription("too-slow", "stuck.job", { retryDelays: ["1h"] });
    const aborted = signal<unknown>();
    const consumer = client.subscribe(
      "too-slow",
      (_message, context) =>
        new Promise<void>(() => context.signal.addEventListener("abort", () => aborted.resolve(context.signal.reason))),
      { handlerTimeout: 0.3, handleSignals: false },
    );
    consumer.on("warning", () => undefined);
    await consumer.ready;
    const { eventId } = await client.publish("stuck.job", {});
    const reason = await aborted.promise;
    await consumer.close();
    assert.ok(reason instanceof Error && reason.name === "TimeoutError", String(reason));
    const delivery = await deliveryOf(eventId, "too-slow");
    assert.match(delivery.history[0]?.error ?? "", /^TimeoutError: handler did not finish/);
  });

  test("attached is emitted with the consumer id", TIMEOUT, async () => {
    await client.createSubscription("announced", "announced.*");
    const consumer = client.subscribe("announced", () => undefined, { consumerName: "worker-7", handleSignals: false });
    const attachment = signal<string>();
    consumer.on("attached", (a) => attachment.resolve(a.consumerId));
    assert.match(await attachment.promise, /^worker-7#\d+$/);
    assert.equal(consumer.attached, true);
    await consumer.close();
    assert.equal(consumer.attached, false);
  });
});

describe("createSubscription", () => {
  async function warningsDuring(action: () => Promise<unknown>): Promise<Error[]> {
    const caught: Error[] = [];
    const listener = (warning: Error & { code?: string }): void => {
      if (warning.code === SUBSCRIPTION_DIFFERS_WARNING) caught.push(warning);
    };
    process.on("warning", listener);
    try {
      await action();
      await new Promise((resolve) => setImmediate(resolve)); // warnings are emitted on the next tick
    } finally {
      process.removeListener("warning", listener);
    }
    return caught;
  }

  test("returns a plain subscription with every setting, durations in seconds", TIMEOUT, async () => {
    const created = await client.createSubscription("declared", ["Orders.*", "refunds.>"], {
      ackDeadline: "10s",
      maxAttempts: 5,
      retryDelays: [1, "1m"],
      maxAge: "1 day",
    });
    assert.equal(created.name, "declared");
    assert.deepEqual(created.filter, ["orders.*", "refunds.>"]);
    assert.equal(created.ackDeadline, 10);
    assert.equal(created.maxAttempts, 5);
    assert.deepEqual(created.retryDelays, [1, 60]);
    assert.equal(created.maxAge, 86_400);
    assert.ok(created.createTime instanceof Date);
  });

  test("existOk returns the existing one, and warns naming each setting that differs", TIMEOUT, async () => {
    const same = await warningsDuring(() =>
      client.createSubscription("declared", ["orders.*", "refunds.>"], { ackDeadline: 10, existOk: true }),
    );
    assert.deepEqual(same, []);
    let existing: Awaited<ReturnType<Client["createSubscription"]>> | undefined;
    const differing = await warningsDuring(async () => {
      existing = await client.createSubscription("declared", "orders.*", {
        ackDeadline: "20s",
        maxAttempts: 5,
        existOk: true,
      });
    });
    assert.equal(existing?.ackDeadline, 10, "nothing was changed");
    assert.equal(differing.length, 1);
    const text = differing[0]?.message ?? "";
    assert.match(text, /subscription "declared" exists with other settings/);
    assert.match(text, /ackDeadline: has 10 s \(asked 20 s\)/);
    assert.match(text, /filter: has \["orders\.\*","refunds\.>"\] \(asked \["orders\.\*"\]\)/);
    assert.doesNotMatch(text, /maxAttempts/);
    await assert.rejects(client.createSubscription("declared", "orders.*"), (e: unknown) => {
      assert.ok(e instanceof BrokerError);
      assert.equal(e.code, status.ALREADY_EXISTS);
      return true;
    });
  });
});

describe("drain on SIGTERM", () => {
  test("running handlers finish and are acked, then the process ends by the signal", TIMEOUT, async () => {
    await client.createSubscription("drained", "drain.*");
    const child = spawn(process.execPath, [path.join(__dirname, "fixtures", "drain-child.js")], {
      env: { ...process.env, EVENTBROKER_TARGET: broker.target },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
      child.once("exit", (code, sig) => resolve([code, sig])),
    );
    const lines: string[] = [];
    const waiters: [RegExp, number, () => void][] = [];
    let buffered = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      buffered += chunk.toString();
      const parts = buffered.split("\n");
      buffered = parts.pop() ?? "";
      lines.push(...parts);
      for (const [pattern, count, resolve] of waiters) {
        if (lines.filter((l) => pattern.test(l)).length >= count) resolve();
      }
    });
    const seen = (pattern: RegExp, count = 1): Promise<void> =>
      new Promise((resolve) => {
        if (lines.filter((l) => pattern.test(l)).length >= count) resolve();
        else waiters.push([pattern, count, resolve]);
      });
    await seen(/^attached/);
    const published = await client.publishBatch([1, 2, 3].map((n) => ({ name: "drain.job", data: n })));
    await seen(/^started/, 3);
    child.kill("SIGTERM");
    const [code, sig] = await exited;
    assert.deepEqual([code, sig], [null, "SIGTERM"], lines.join("\n"));
    const draining = lines.findIndex((l) => l.startsWith("draining"));
    assert.ok(draining >= 0, lines.join("\n"));
    assert.equal(lines.filter((l) => l.startsWith("finished")).length, 3, lines.join("\n"));
    assert.ok(lines.findIndex((l) => l.startsWith("finished")) > draining, "handlers finished after the signal");
    for (const { eventId } of published) {
      assert.equal((await deliveryOf(eventId, "drained")).state, pb.DeliveryState.DELIVERY_STATE_ACKED);
    }
  });
});

describe("the cap per key", () => {
  test("createSubscription and updateSubscription set maxInFlightPerKey and keyHeader", TIMEOUT, async () => {
    const created = await client.createSubscription("per-tenant", "tenant.*", {
      maxInFlightPerKey: 1,
      keyHeader: "tenant",
    });
    assert.equal(created.maxInFlightPerKey, 1);
    assert.equal(created.keyHeader, "tenant");
    const first = await client.publish("tenant.job", { n: 1 }, { headers: { tenant: "t1" } });
    const second = await client.publish("tenant.job", { n: 2 }, { headers: { tenant: "t1" } });
    const received: string[] = [];
    const gotOne = signal();
    const release = signal();
    const consumer = client.subscribe(
      "per-tenant",
      async (message: Message) => {
        received.push(message.eventId);
        gotOne.resolve();
        await release.promise; // held while the test looks
      },
      { maxOutstanding: 10 },
    );
    try {
      await gotOne.promise;
      assert.deepEqual(received, [first.eventId]);
      const blocked = await deliveryOf(second.eventId, "per-tenant");
      assert.equal(blocked.state, pb.DeliveryState.DELIVERY_STATE_BLOCKED);
      assert.equal(blocked.key, "t1");
      assert.deepEqual(
        { key: blocked.keyWait?.key, inFlight: blocked.keyWait?.inFlight, limit: blocked.keyWait?.limit },
        { key: "t1", inFlight: 1, limit: 1 },
      );
      const updated = await client.updateSubscription("per-tenant", { maxInFlightPerKey: 2, keyHeader: null });
      assert.equal(updated.maxInFlightPerKey, 2);
      assert.equal(updated.keyHeader, "");
      await assert.rejects(client.updateSubscription("per-tenant", {}), RangeError);
      await assert.rejects(
        client.createSubscription("bad-cap", "x.*", { ordered: true, maxInFlightPerKey: 2 }),
        (e: unknown) => {
          assert.ok(e instanceof BrokerError);
          assert.equal(e.code, status.INVALID_ARGUMENT);
          assert.match(e.message, /max_in_flight_per_key/);
          return true;
        },
      );
    } finally {
      release.resolve();
      await consumer.close();
    }
  });
});
