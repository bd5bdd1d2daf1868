// Publish, consume and see a refusal, against a broker on EVENTBROKER_TARGET
// (default 127.0.0.1:50051): `node examples/quickstart.js`.
const { BrokerError, Client, status } = require("eventbroker");

async function main() {
  const client = new Client();
  await client.createSubscription("mails", "user.*").catch((e) => {
    if (!(e instanceof BrokerError && e.code === status.ALREADY_EXISTS)) throw e;
  });

  let done;
  const received = new Promise((resolve) => (done = resolve));
  const subscriber = client.subscribe("mails", async (msg) => {
    console.log("received", msg.name, JSON.stringify(msg.data), "attempt", msg.attempt);
    done(); // resolving acks the delivery; throwing would nack it
  });
  console.log("attached as", (await subscriber.ready).consumerId);

  const id = `signup-${Date.now()}`; // idempotency id: a repeat inside the dedup window is a DUPLICATE
  const first = await client.publish("user.joined", { plan: "pro", seats: [1, 2] }, { id });
  const again = await client.publish("user.joined", { plan: "pro", seats: [1, 2] }, { id });
  console.log("published", first.eventId, first.status, "then", again.status);
  await received;
  await subscriber.close();

  try {
    await client.publish("not a valid name!", { plan: "pro" });
  } catch (e) {
    if (!(e instanceof BrokerError)) throw e;
    console.log("refused:", e.codeName, e.reason, e.fieldViolations);
  }
  client.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
