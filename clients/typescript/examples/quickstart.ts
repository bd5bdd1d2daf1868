// Publish, consume and see a refusal, against a broker on EVENTBROKER_TARGET
// (default 127.0.0.1:50051). The README shows this file; the tests compile it
// against the packed package and run it.
import { BrokerError, Client, type Message } from "eventbroker";

async function main(): Promise<void> {
  const client = new Client(); // or new Client("127.0.0.1:50051", { apiKey: "..." })
  // Declared at every start: existOk returns the existing one (and warns if its settings differ).
  await client.createSubscription("mails", "user.*", { ackDeadline: "30s", existOk: true });

  let done!: (message: Message) => void;
  const received = new Promise<Message>((resolve) => (done = resolve));
  const consumer = client.subscribe("mails", async (msg, ctx) => {
    console.log("received", msg.name, JSON.stringify(msg.data), "attempt", ctx.attempt);
    done(msg); // resolving acks the delivery; throwing nacks it
  });
  console.log("attached as", (await consumer.ready).consumerId);

  const id = `signup-${Date.now()}`; // idempotency id: a repeat inside the dedup window is a DUPLICATE
  const first = await client.publish("user.joined", { plan: "pro", seats: [1, 2] }, { id });
  const again = await client.publish("user.joined", { plan: "pro", seats: [1, 2] }, { id });
  console.log("published", first.eventId, first.status, "to", first.matchedSubscriptions, "subscriptions;", "then", again.status);
  await received;
  await consumer.close(); // running handlers finish and are settled, then it detaches

  const later = await client.publish("user.reminder", { plan: "pro" }, { delay: "5m" }); // a bare 300 is 300 s too
  console.log("scheduled", later.eventId);
  try {
    await client.publish("user.paid", { order: { total: 10n } });
  } catch (e) {
    if (!(e instanceof BrokerError)) throw e;
    const fields = e.fieldViolations.map((v) => `${v.field}: ${v.description}`);
    console.log("refused:", e.codeName, fields.join("; ")); // event.data.order.total: a bigint ...
  }
  client.close();
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
