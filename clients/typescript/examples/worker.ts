// A long-lived consumer service: run it under a process manager; SIGTERM
// drains it (running handlers finish and are acked), then the process exits.
import { Client, RetryError, TerminalError } from "eventbroker";

interface Order {
  id: string;
  total: number;
}

const client = new Client();
const consumer = client.subscribe(
  "billing",
  async (msg, ctx) => {
    const order = msg.data as unknown as Order;
    if (typeof order?.total !== "number") throw new TerminalError("not an order"); // dead-lettered at once
    if (ctx.attempt > 3 && ctx.stopping) throw new RetryError("shutting down", { delay: "1m" });
    await charge(order, ctx.signal); // may outlive the ack deadline: the lease is renewed meanwhile
  },
  { maxOutstanding: 20, handlerTimeout: "10m" },
);
consumer.on("attached", ({ consumerId }) => console.log("attached as", consumerId));
consumer.on("disconnected", ({ error, reconnectInS }) =>
  console.warn(`stream lost (${error.codeName}); reconnecting in ${reconnectInS.toFixed(1)} s`),
);
consumer.on("draining", ({ inFlight }) => console.log(`draining ${inFlight} deliveries`));
consumer.on("warning", (message) => console.warn(message));
consumer.closed.catch((error: unknown) => {
  console.error("consumer stopped:", error); // e.g. NOT_FOUND: the subscription does not exist
  process.exit(1);
});

async function charge(order: Order, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted();
  console.log("charged", order.id, order.total);
}
