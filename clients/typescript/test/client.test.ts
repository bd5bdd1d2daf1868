/**
 * The TypeScript client against a real broker: JSON data round trips, dedup,
 * ack, nack and retry, error details, and the attach signal.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { BrokerError, Client, type Message, TerminalError, pb, status } from "../src/index";
import { type Broker, startBroker } from "./broker";
import { signal } from "./waiting";

/** Per test: a lost event fails the test instead of hanging the run. */
const TIMEOUT = { timeout: 20_000 };

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

/** Where an event's delivery stands in one subscription. */
async function deliveryOf(eventId: string, subscription: string): Promise<pb.DeliveryStatus> {
  const response = await client.unary(client.stub.getEvent, { eventId });
  const found = response.deliveries.find((d) => d.subscription === subscription);
  assert.ok(found, `event ${eventId} has no delivery in ${subscription}`);
  return found;
}

describe("publish", () => {
  test("JSON data of every shape arrives as it was sent", TIMEOUT, async () => {
    const shapes: Record<string, unknown> = {
      object: { plan: "pro", seats: 3, trial: false },
      array: [1, "two", null, { three: 3 }],
      string: "hello",
      number: 42.5,
      zero: 0,
      boolean: true,
      null: null,
      nested: { a: { b: { c: [[], {}, [{ d: "deep" }]] } }, empty: "" },
    };
    await client.createSubscription("shapes", "shape.>");
    const received = new Map<string, Message>();
    const all = signal();
    const subscriber = client.subscribe("shapes", (message) => {
      received.set(message.eventId, message);
      if (received.size === Object.keys(shapes).length) all.resolve();
    });
    await subscriber.ready;
    const sent = new Map<string, unknown>();
    for (const [shape, data] of Object.entries(shapes)) {
      const result = await client.publish(`shape.${shape}`, data);
      assert.equal(result.status, "CREATED");
      sent.set(result.eventId, data);
    }
    await all.promise;
    await subscriber.close();
    for (const [eventId, data] of sent) {
      assert.deepEqual(received.get(eventId)?.data, data, `data of ${received.get(eventId)?.name}`);
    }
  });

  test("a Date in data goes as its ISO string, as JSON.stringify sends it", TIMEOUT, async () => {
    const when = new Date("2030-01-02T03:04:05.678Z");
    const { eventId } = await client.publish("dated.thing", { when, gone: undefined });
    const response = await client.unary(client.stub.getEvent, { eventId });
    assert.deepEqual(response.event?.event?.data, { when: "2030-01-02T03:04:05.678Z" });
  });

  test("a second publish with the same id is a DUPLICATE of the first", TIMEOUT, async () => {
    const first = await client.publish("order.paid", { order: 7 }, { id: "pay-7" });
    const second = await client.publish("order.paid", { order: 7 }, { id: "pay-7" });
    assert.equal(first.status, "CREATED");
    assert.equal(second.status, "DUPLICATE");
    assert.equal(second.eventId, first.eventId);
  });

  test("an invalid name is refused with its reason and the field, before sending", TIMEOUT, async () => {
    const error = await client.publish("no spaces allowed!", { x: 1 }).then(
      () => assert.fail("the broker accepted an invalid name"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof BrokerError, String(error));
    assert.equal(error.code, status.INVALID_ARGUMENT);
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.equal(error.reason, "INVALID_ARGUMENT");
    assert.equal(error.fieldViolations.length, 1);
    assert.equal(error.fieldViolations[0]?.field, "event.name");
    assert.match(error.fieldViolations[0]?.description ?? "", /letters|character/);
  });

  test("data over the size limit reaches the broker and is refused", TIMEOUT, async () => {
    const error = await client.publish("big.event", { blob: "x".repeat(300 * 1024) }).then(
      () => assert.fail("the broker accepted a 300 KiB event"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof BrokerError, String(error));
    assert.equal(error.code, status.RESOURCE_EXHAUSTED);
    assert.equal(error.reason, "SIZE_LIMIT_EXCEEDED");
    assert.ok(error.fieldViolations.some((v) => v.field.startsWith("event")), error.message);
  });

  test("a value JSON cannot hold is refused before sending, naming its path", TIMEOUT, async () => {
    const refusal = (field: string) => (e: unknown) => {
      assert.ok(e instanceof BrokerError, String(e));
      assert.equal(e.code, status.INVALID_ARGUMENT);
      assert.deepEqual(e.fieldViolations.map((v) => v.field), [field]);
      assert.match(e.message, new RegExp(field.replace(/[.[\]]/g, "\\$&")));
      return true;
    };
    await assert.rejects(client.publish("bad.data", () => 1), refusal("event.data"));
    await assert.rejects(client.publish("bad.data", { order: { total: 10n } }), refusal("event.data.order.total"));
    await assert.rejects(client.publish("bad.data", { items: [{ price: 1 }, { price: 2n }] }), refusal("event.data.items[1].price"));
    await assert.rejects(client.publish("bad.data", { ratio: NaN }), refusal("event.data.ratio"));
    await assert.rejects(client.publish("bad.data", { seen: new Set([1]) }), refusal("event.data.seen"));
    const loop: Record<string, unknown> = {};
    loop.self = loop;
    await assert.rejects(client.publish("bad.data", loop), refusal("event.data.self"));
    await assert.rejects(
      client.publishBatch([{ name: "ok.one", data: 1 }, { name: "ok.two", data: { n: 3n } }]),
      refusal("events[1].data.n"),
    );
  });
});

describe("subscribe", () => {
  test("ready resolves before publishing, then the event arrives and is acked", TIMEOUT, async () => {
    await client.createSubscription("mails", "user.*");
    const arrived = signal<Message>();
    const subscriber = client.subscribe("mails", (message) => arrived.resolve(message), {
      consumerName: "mailer",
    });
    const attachment = await subscriber.ready;
    assert.match(attachment.consumerId, /^mailer#\d+$/);
    const { eventId } = await client.publish("user.joined", { plan: "pro" });
    const message = await arrived.promise;
    assert.equal(message.eventId, eventId);
    assert.equal(message.attempt, 1);
    assert.deepEqual(message.data, { plan: "pro" });
    await subscriber.close(); // waits for the handler's ack
    const delivery = await deliveryOf(eventId, "mails");
    assert.equal(delivery.state, pb.DeliveryState.DELIVERY_STATE_ACKED);
  });

  test("a handler that throws is nacked and the retry is attempt 2", TIMEOUT, async () => {
    await client.createSubscription("flaky", "job.run", { retryDelays: [0] });
    const attempts: number[] = [];
    const retried = signal<Message>();
    const subscriber = client.subscribe("flaky", (message) => {
      attempts.push(message.attempt);
      if (message.attempt === 1) throw new Error("first try fails");
      retried.resolve(message);
    });
    await subscriber.ready;
    const { eventId } = await client.publish("job.run", [1, 2, 3]);
    const retry = await retried.promise;
    await subscriber.close();
    assert.equal(retry.eventId, eventId);
    assert.deepEqual(attempts, [1, 2]);
    assert.deepEqual(retry.data, [1, 2, 3]);
    const delivery = await deliveryOf(eventId, "flaky");
    assert.equal(delivery.state, pb.DeliveryState.DELIVERY_STATE_ACKED);
    assert.equal(delivery.history[0]?.outcome, pb.AttemptOutcome.ATTEMPT_OUTCOME_NACKED);
    assert.equal(delivery.history[0]?.error, "Error: first try fails");
  });

  test("a TerminalError dead-letters the delivery", TIMEOUT, async () => {
    await client.createSubscription("doomed", "bill.send");
    const handled = signal();
    const subscriber = client.subscribe("doomed", () => {
      handled.resolve();
      throw new TerminalError("no such customer");
    });
    await subscriber.ready;
    const { eventId } = await client.publish("bill.send", "c-1");
    await handled.promise;
    await subscriber.close();
    const delivery = await deliveryOf(eventId, "doomed");
    assert.equal(delivery.state, pb.DeliveryState.DELIVERY_STATE_DEAD);
    assert.equal(delivery.deadReason, pb.DeadReason.DEAD_REASON_NACKED_TERMINAL);
  });

  test("ready and closed reject with NOT_FOUND for an unknown subscription", TIMEOUT, async () => {
    const subscriber = client.subscribe("nobody-made-this", () => undefined, { handleSignals: false });
    await assert.rejects(subscriber.ready, (e: unknown) => {
      assert.ok(e instanceof BrokerError);
      assert.equal(e.code, status.NOT_FOUND);
      assert.equal(e.reason, "SUBSCRIPTION_NOT_FOUND");
      return true;
    });
    await assert.rejects(subscriber.closed, BrokerError);
  });
});

describe("counts", () => {
  test("int64 counts arrive as numbers", TIMEOUT, async () => {
    const stats = await client.unary(client.stub.getStats, { subscription: "" });
    assert.equal(typeof stats.events, "number");
    assert.ok(stats.events > 0);
  });
});
