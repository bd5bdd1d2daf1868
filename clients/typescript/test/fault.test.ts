/**
 * The consumer through a broker crash: the broker is killed (SIGKILL) under a
 * running consumer while events are being published, and started again on the
 * same port and database. Checked as the fault tests check the broker (SPEC
 * 5a): every acknowledged publish is handled at least once (lost = 0), nothing
 * is handled that was not published (unexpected = 0), duplicates are counted;
 * and handlers longer than the ack deadline, started once the consumer is back,
 * are not redelivered while they run.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, type Disconnection, type Message } from "../src/index";
import { type Broker, startBroker } from "./broker";
import { signal } from "./waiting";

const FAST_EVENTS = 300;
const SLOW_EVENTS = 6;
const ACK_DEADLINE_S = 2;
const SLOW_HANDLER_MS = 4_500;
const PUBLISH_LANES = 4;

let broker: Broker;

before(async () => {
  broker = await startBroker();
});

after(async () => {
  await broker?.stop();
});

test("SIGKILL and restart under a running consumer: nothing lost, long handlers keep their leases", { timeout: 120_000 }, async () => {
  const admin = new Client(broker.target);
  const publisher = new Client(broker.target);
  const consumerClient = new Client(broker.target);
  await admin.createSubscription("crash", "crash.*", { ackDeadline: ACK_DEADLINE_S, retryDelays: [0] });

  const published = new Set<string>();
  const handled = new Map<string, number>();
  const unexpected: string[] = [];
  const running = new Set<string>();
  const redeliveredWhileRunning: string[] = [];
  const expectedTotal = FAST_EVENTS + SLOW_EVENTS;
  const allHandled = signal();
  const checkAllHandled = (): void => {
    if (published.size === expectedTotal && [...published].every((id) => handled.has(id))) allHandled.resolve();
  };
  const onHandled = (id: string): void => {
    handled.set(id, (handled.get(id) ?? 0) + 1);
    checkAllHandled();
  };
  const consumer = consumerClient.subscribe(
    "crash",
    async (message: Message) => {
      const id = message.dedupId;
      if (!id.startsWith("crash-")) unexpected.push(id);
      if (running.has(id)) redeliveredWhileRunning.push(id);
      running.add(id);
      try {
        if (message.name === "crash.slow") await new Promise((resolve) => setTimeout(resolve, SLOW_HANDLER_MS));
      } finally {
        running.delete(id);
      }
      onHandled(id);
    },
    { maxOutstanding: 50, handlerTimeout: "1m", handleSignals: false },
  );
  const attachments: string[] = [];
  const disconnections: Disconnection[] = [];
  const reattached = signal();
  consumer.on("attached", (a) => {
    attachments.push(a.consumerId);
    if (attachments.length === 2) reattached.resolve();
  });
  consumer.on("disconnected", (d) => disconnections.push(d));
  consumer.on("warning", () => undefined); // settlements lost in the crash come again, as they should

  try {
    await consumer.ready;
    let acknowledged = 0;
    const third = signal();
    const lane = async (start: number): Promise<void> => {
      for (let i = start; i < FAST_EVENTS; i += PUBLISH_LANES) {
        const id = `crash-fast-${i}`;
        await publisher.publish("crash.fast", { i }, { id });
        published.add(id);
        acknowledged += 1;
        if (acknowledged === Math.floor(FAST_EVENTS / 3)) third.resolve();
      }
    };
    const publishing = Promise.all(Array.from({ length: PUBLISH_LANES }, (_, l) => lane(l)));
    await third.promise;
    await broker.kill();
    await broker.restart();
    await publishing;
    await reattached.promise;

    for (let i = 0; i < SLOW_EVENTS; i += 1) {
      const id = `crash-slow-${i}`;
      await publisher.publish("crash.slow", { i }, { id });
      published.add(id);
    }
    checkAllHandled();
    await allHandled.promise;
    await consumer.close();

    const lost = [...published].filter((id) => !handled.has(id));
    const duplicates = [...handled.values()].filter((n) => n > 1).length;
    assert.equal(published.size, expectedTotal);
    assert.deepEqual(lost, [], "lost");
    assert.deepEqual(unexpected, [], "unexpected");
    assert.deepEqual(redeliveredWhileRunning, [], "redelivered while a handler ran");
    const slowAttempts = [...handled].filter(([id]) => id.startsWith("crash-slow-")).map(([, n]) => n);
    assert.deepEqual(slowAttempts, Array(SLOW_EVENTS).fill(1), "each long handler ran once");
    assert.ok(disconnections.length >= 1 && attachments.length >= 2, "the consumer noticed the crash and came back");
    console.log(
      `published ${published.size}, handled ${handled.size}, duplicates ${duplicates}, ` +
        `reconnects ${attachments.length - 1}, disconnections ${disconnections.length}`,
    );
  } finally {
    await consumer.close().catch(() => undefined);
    admin.close();
    publisher.close();
    consumerClient.close();
  }
});
