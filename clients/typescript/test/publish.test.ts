/**
 * Publishing against a real broker: matched subscriptions, the delay rule,
 * joined publishes (group commit at the client) and their failures, and
 * retries under each event's own id across a broker killed and restarted.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { BrokerError, Client, type Message, type PublishResult, status } from "../src/index";
import { type Broker, startBroker } from "./broker";
import { countingClient } from "./calls";
import { signal } from "./waiting";

const TIMEOUT = { timeout: 60_000 };
/** Over a year ahead: only the broker's clock can refuse it, so it reaches the broker. */
const TOO_LATE = (): Date => new Date(Date.now() + 2 * 366 * 86_400_000);

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

describe("publish results", () => {
  test("matchedSubscriptions counts the subscriptions that got a delivery", TIMEOUT, async () => {
    await client.createSubscription("matched-a", "match.*");
    await client.createSubscription("matched-b", "match.>");
    const both = await client.publish("match.one", { n: 1 }, { id: "m-1" });
    const none = await client.publish("unmatched.one", { n: 1 });
    const again = await client.publish("match.one", { n: 1 }, { id: "m-1" });
    assert.deepEqual([both.status, both.matchedSubscriptions], ["CREATED", 2]);
    assert.deepEqual([none.status, none.matchedSubscriptions], ["CREATED", 0]);
    assert.deepEqual([again.status, again.matchedSubscriptions, again.eventId], ["DUPLICATE", 0, both.eventId]);
  });

  test("a bare number delay is seconds, a string is read as words", TIMEOUT, async () => {
    const five = await client.publish("later.thing", null, { delay: 5 });
    const tenMinutes = await client.publish("later.thing", null, { delay: "10m" });
    const stored = async (eventId: string) => (await client.unary(client.stub.getEvent, { eventId })).event?.event;
    assert.deepEqual((await stored(five.eventId))?.delay, { seconds: 5, nanos: 0 });
    assert.deepEqual((await stored(tenMinutes.eventId))?.delay, { seconds: 600, nanos: 0 });
    await assert.rejects(client.publish("later.thing", null, { delay: "2 years" }), (e: unknown) => {
      assert.ok(e instanceof BrokerError);
      assert.equal(e.fieldViolations[0]?.field, "event.delay");
      assert.match(e.fieldViolations[0]?.description ?? "", /between 0 s and 366 days/);
      return true;
    });
  });
});

describe("joined publishes", () => {
  test("publishes made while one is in flight go as one BatchPublish, each with its own result", TIMEOUT, async () => {
    const counting = countingClient(broker.target);
    try {
      const first = counting.client.publish("joined.first", 0);
      const rest = Array.from({ length: 20 }, (_, i) => counting.client.publish("joined.rest", i + 1));
      const results = await Promise.all([first, ...rest]);
      assert.equal(new Set(results.map((r) => r.eventId)).size, 21);
      assert.equal(counting.calls.get("Publish"), 1, "the first went out at once, alone");
      assert.equal(counting.calls.get("BatchPublish"), 1, "the 20 that waited went together");
      const [batch] = counting.requests.get("BatchPublish") as { events: { id: string }[] }[];
      assert.equal(batch?.events.length, 20);
      assert.ok(batch?.events.every((e) => e.id.length > 0), "each event has its id before the first send");
    } finally {
      counting.client.close();
    }
  });

  test("with publishBatching off, every publish is its own call", TIMEOUT, async () => {
    const counting = countingClient(broker.target, { publishBatching: false });
    try {
      await Promise.all(Array.from({ length: 5 }, (_, i) => counting.client.publish("solo.each", i)));
      assert.equal(counting.calls.get("Publish"), 5);
      assert.equal(counting.calls.get("BatchPublish"), undefined);
    } finally {
      counting.client.close();
    }
  });

  test("maxEvents bounds a joined batch", TIMEOUT, async () => {
    const counting = countingClient(broker.target, { publishBatching: { maxEvents: 4 } });
    try {
      await Promise.all(Array.from({ length: 13 }, (_, i) => counting.client.publish("bounded.each", i)));
      const sizes = (counting.requests.get("BatchPublish") as { events: unknown[] }[]).map((r) => r.events.length);
      assert.deepEqual(sizes, [4, 4, 4]);
      assert.equal(counting.calls.get("Publish"), 1);
    } finally {
      counting.client.close();
    }
  });

  test("one bad event fails only its caller, and one caller's order is kept", TIMEOUT, async () => {
    const count = 12;
    const badIndex = 6;
    await client.createSubscription("orderly", "seq.*", { retryDelays: [0] });
    const received: number[] = [];
    const all = signal();
    const consumer = client.subscribe(
      "orderly",
      (message: Message) => {
        received.push(message.data as number);
        if (received.length === count - 1) all.resolve();
      },
      { maxOutstanding: 1, handleSignals: false },
    );
    await consumer.ready;
    const counting = countingClient(broker.target);
    try {
      const outcomes = await Promise.allSettled(
        Array.from({ length: count }, (_, i) =>
          counting.client.publish("seq.item", i, i === badIndex ? { delay: TOO_LATE() } : {}),
        ),
      );
      const refused = outcomes[badIndex];
      assert.equal(refused?.status, "rejected");
      assert.ok(refused.reason instanceof BrokerError, String(refused.reason));
      assert.equal(refused.reason.code, status.INVALID_ARGUMENT);
      assert.equal(refused.reason.fieldViolations[0]?.field, "event.deliver_at", refused.reason.message);
      const stored = outcomes.filter((o): o is PromiseFulfilledResult<PublishResult> => o.status === "fulfilled");
      assert.equal(stored.length, count - 1);
      assert.ok(stored.every((o) => o.value.status === "CREATED" && o.value.matchedSubscriptions === 1));
      assert.equal(counting.calls.get("BatchPublish"), 1, "the joined batch was tried once, then split");
      await all.promise;
      await consumer.close();
      assert.deepEqual(received, [...Array(count).keys()].filter((i) => i !== badIndex));
    } finally {
      counting.client.close();
    }
  });
});

describe("retries across a broker restart", () => {
  test("every publish resolves and each id is stored once when the broker is killed mid-way", TIMEOUT, async () => {
    const own = await startBroker();
    const publisher = new Client(own.target);
    try {
      const total = 300;
      const lanes = 6;
      const results = new Map<string, PublishResult>();
      let published = 0;
      const halfway = signal();
      const lane = async (start: number): Promise<void> => {
        for (let i = start; i < total; i += lanes) {
          const id = `restart-${i}`;
          results.set(id, await publisher.publish("restart.event", { i }, { id }));
          published += 1;
          if (published === total / 3) halfway.resolve();
        }
      };
      const publishing = Promise.all(Array.from({ length: lanes }, (_, l) => lane(l)));
      await halfway.promise;
      await own.kill();
      await own.restart();
      await publishing;
      assert.equal(results.size, total);
      const stats = await publisher.unary(publisher.stub.getStats, { subscription: "" });
      assert.equal(stats.events, total, "each id stored exactly once");
    } finally {
      publisher.close();
      await own.stop();
    }
  });
});
