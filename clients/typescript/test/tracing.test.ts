/**
 * Trace context from publish to handler, against a real broker, with the
 * OpenTelemetry SDK's in-memory exporter: a publisher in another process and
 * the handler here in one trace, through a retry and a redrive; the spans'
 * kinds, names, links and attributes; no provider, no header; the caller's
 * traceparent kept; a traceparent written by another client (the Python one
 * writes the same W3C header) continued; and, where the broker's Python has
 * the Python client's tracing (the OpenTelemetry SDK), a Python publisher and a
 * handler here in one trace, and the reverse (skipped where it has not).
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import { type SpanContext, SpanKind, SpanStatusCode, context, propagation, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";

import { Client, type Message, TerminalError, pb } from "../src/index";
import { eventFromArgs } from "../src/convert";
import { tracingEnabled } from "../src/tracing";
import { BROKER_BIN, type Broker, startBroker } from "./broker";
import { countingClient } from "./calls";
import { signal } from "./waiting";

const run = promisify(execFile);
/** The Python beside the broker (its .venv has the Python client); PYTHON names another. */
const PYTHON = process.env.PYTHON ?? path.join(path.dirname(BROKER_BIN), "python");
const TIMEOUT = { timeout: 60_000 };
const TRACEPARENT_RE = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/;

/** The in-memory exporter, telling waiters when the spans they wait for have ended. */
class WatchedExporter extends InMemorySpanExporter {
  private readonly waiters = new Set<() => void>();

  override export(...args: Parameters<InMemorySpanExporter["export"]>): void {
    super.export(...args);
    for (const check of this.waiters) check();
  }

  /** Resolves with the finished spans `select` picks once there are `count` of them. */
  until(count: number, select: (span: ReadableSpan) => boolean): Promise<ReadableSpan[]> {
    return new Promise((resolve) => {
      const check = (): void => {
        const found = this.getFinishedSpans().filter(select);
        if (found.length < count) return;
        this.waiters.delete(check);
        resolve(found);
      };
      this.waiters.add(check);
      check();
    });
  }
}

const exporter = new WatchedExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
let broker: Broker;
let client: Client;

before(async () => {
  // The context manager an application with the Node SDK has, so that spans
  // the handler makes find the process span as their parent.
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  broker = await startBroker();
  client = new Client(broker.target);
});

after(async () => {
  client?.close();
  await broker?.stop();
  await provider.shutdown();
});

function named(name: string): (span: ReadableSpan) => boolean {
  return (span) => span.name === name;
}

function ids(spanContext: SpanContext): { traceId: string; spanId: string } {
  return { traceId: spanContext.traceId, spanId: spanContext.spanId };
}

/** A consumer of `subscription` running `handler`; closed by the caller. */
async function consume(subscription: string, filter: string, handler: (message: Message) => unknown, retryDelays = [0]) {
  await client.createSubscription(subscription, filter, { retryDelays });
  const consumer = client.subscribe(subscription, handler, { handleSignals: false });
  consumer.on("warning", () => undefined); // the handlers' failures here are meant
  await consumer.ready;
  return consumer;
}

describe("without a tracer provider", () => {
  test("no span is made and no traceparent header is added", TIMEOUT, async () => {
    trace.disable();
    assert.equal(tracingEnabled(), false);
    const counting = countingClient(broker.target);
    const received = signal<Message>();
    const consumer = await consume("untraced", "untraced.*", (message) => received.resolve(message));
    try {
      await counting.client.publish("untraced.one", { n: 1 }, { headers: { origin: "test" } });
      const sent = (counting.requests.get("Publish") as pb.PublishRequest[])[0];
      assert.deepEqual(sent?.event?.headers, { origin: "test" });
      assert.deepEqual((await received.promise).headers, { origin: "test" });
    } finally {
      await consumer.close();
      counting.client.close();
    }
    assert.deepEqual(exporter.getFinishedSpans(), []);
  });
});

describe("with a tracer provider", () => {
  before(() => {
    trace.setGlobalTracerProvider(provider);
    // No global propagator: the client's own W3C Trace Context is used here;
    // the publisher process registers the SDK's.
    propagation.disable();
  });

  test("a publish in another process and the handler here are one trace", TIMEOUT, async () => {
    assert.equal(tracingEnabled(), true);
    const handled = signal<SpanContext | undefined>();
    const tracer = trace.getTracer("handler");
    const consumer = await consume("traced", "traced.*", () => {
      tracer.startActiveSpan("charge", (span) => span.end());
      handled.resolve(trace.getActiveSpan()?.spanContext());
    });
    let published: { spans: PublishedSpan[]; results: { eventId: string }[] };
    try {
      const fixture = path.join(__dirname, "fixtures", "traced-publisher.js");
      const { stdout } = await run(process.execPath, [fixture, "traced.order"], {
        env: { ...process.env, EVENTBROKER_TARGET: broker.target },
        timeout: 30_000,
      });
      published = JSON.parse(stdout);
      await handled.promise;
      await exporter.until(1, named("ack traced"));
    } finally {
      await consumer.close();
    }

    assert.equal(published.spans.length, 1, JSON.stringify(published.spans));
    const publish = published.spans[0] as PublishedSpan;
    assert.equal(publish.name, "publish traced.order");
    assert.equal(publish.kind, SpanKind.PRODUCER);
    assert.equal(publish.status, SpanStatusCode.UNSET);
    const [host, port] = broker.target.split(":");
    assert.deepEqual(publish.attributes, {
      "messaging.system": "eventbroker",
      "messaging.operation.type": "send",
      "messaging.operation.name": "publish",
      "messaging.destination.name": "traced.order",
      "messaging.message.id": published.results[0]?.eventId,
      "server.address": host,
      "server.port": Number(port),
    });

    const [process_] = exporter.getFinishedSpans().filter(named("process traced"));
    assert.ok(process_);
    assert.equal(process_.kind, SpanKind.CONSUMER);
    assert.equal(process_.spanContext().traceId, publish.traceId, "one trace from publish to handler");
    assert.equal(process_.parentSpanContext?.spanId, publish.spanId, "the publish span is the parent");
    assert.deepEqual(process_.links.map((link) => ids(link.context)), [
      { traceId: publish.traceId, spanId: publish.spanId },
    ]);
    assert.deepEqual(process_.attributes, {
      "messaging.system": "eventbroker",
      "messaging.operation.type": "process",
      "messaging.operation.name": "process",
      "messaging.destination.name": "traced.order",
      "messaging.destination.subscription.name": "traced",
      "messaging.consumer.group.name": "traced",
      "messaging.message.id": published.results[0]?.eventId,
      "messaging.eventbroker.message.ack_id": process_.attributes["messaging.eventbroker.message.ack_id"],
      "messaging.eventbroker.message.delivery_attempt": 1,
    });
    assert.match(String(process_.attributes["messaging.eventbroker.message.ack_id"]), /\S/);
    assert.equal(process_.status.code, SpanStatusCode.UNSET);

    const active = await handled.promise;
    assert.deepEqual(active && ids(active), ids(process_.spanContext()), "the handler runs in the process span");
    const [charge] = exporter.getFinishedSpans().filter(named("charge"));
    assert.equal(charge?.parentSpanContext?.spanId, process_.spanContext().spanId, "the handler's spans are its children");
    assert.equal(charge?.spanContext().traceId, publish.traceId);

    const [ack] = exporter.getFinishedSpans().filter(named("ack traced"));
    assert.equal(ack?.kind, SpanKind.CLIENT);
    assert.deepEqual(ack?.links.map((link) => link.context.spanId), [process_.spanContext().spanId]);
    assert.equal(ack?.attributes["messaging.operation.type"], "settle");
    assert.equal(ack?.attributes["messaging.batch.message_count"], 1);
  });

  test("a retry and a redrive are processed again in the publisher's trace", TIMEOUT, async () => {
    let attempts = 0;
    const consumer = await consume("redriven", "redriven.*", () => {
      attempts += 1;
      if (attempts === 1) throw new Error("flaky");
      if (attempts === 2) throw new TerminalError("bad order");
    });
    try {
      const { eventId } = await client.publish("redriven.order", { n: 1 });
      const [publish] = await exporter.until(1, named("publish redriven.order"));
      assert.ok(publish);
      // A nack span ends once the broker applied it: after the second (terminal) one the delivery is dead.
      const nacks = await exporter.until(2, named("nack redriven"));
      const firstTwo = exporter.getFinishedSpans().filter(named("process redriven"));
      assert.deepEqual(
        nacks.map((span) => span.links.map((link) => link.context.spanId)),
        firstTwo.map((span) => [span.spanContext().spanId]),
        "each nack links the delivery it settles",
      );
      await assertDead(eventId, "redriven");
      const redrive = await client.unary(client.stub.redriveDeadLetters, {
        subscription: "redriven",
        eventIds: [eventId],
        name: "",
        reason: pb.DeadReason.DEAD_REASON_UNSPECIFIED,
        all: false,
      });
      assert.equal(redrive.redrivenCount, 1);
      const processed = await exporter.until(3, named("process redriven"));
      await exporter.until(1, named("ack redriven"));

      const attemptsSeen = processed.map((span) => span.attributes["messaging.eventbroker.message.delivery_attempt"]);
      assert.equal(attemptsSeen.length, 3);
      for (const span of processed) {
        assert.equal(span.spanContext().traceId, publish.spanContext().traceId, "the same trace every time");
        assert.equal(span.parentSpanContext?.spanId, publish.spanContext().spanId);
      }
      assert.deepEqual(
        processed.map((span) => [span.status.code, span.status.message]),
        [
          [SpanStatusCode.ERROR, "Error: flaky"],
          [SpanStatusCode.ERROR, "TerminalError: bad order"],
          [SpanStatusCode.UNSET, undefined],
        ],
      );
      assert.equal(processed[0]?.events[0]?.name, "exception", "the handler's error is recorded");
      assert.equal(processed[0]?.attributes["error.type"], "Error");
      assert.deepEqual(
        nacks.map((span) => span.attributes["messaging.eventbroker.nack.terminal"]),
        [false, true],
      );
    } finally {
      await consumer.close();
    }
  });

  test("publishes joined in one BatchPublish get a span each, and each event its own traceparent", TIMEOUT, async () => {
    const counting = countingClient(broker.target);
    try {
      const results = await Promise.all(
        Array.from({ length: 6 }, (_, n) => counting.client.publish(`joined.n${n}`, { n })),
      );
      const batches = (counting.requests.get("BatchPublish") ?? []) as pb.BatchPublishRequest[];
      assert.ok(batches.length >= 1, "some publishes were joined");
      const sent = [
        ...((counting.requests.get("Publish") ?? []) as pb.PublishRequest[]).map((r) => r.event as pb.Event),
        ...batches.flatMap((b) => b.events),
      ];
      assert.equal(sent.length, 6);
      const spans = exporter.getFinishedSpans().filter((span) => span.name.startsWith("publish joined."));
      assert.equal(spans.length, 6);
      for (const event of sent) {
        const span = spans.find((s) => s.name === `publish ${event.name}`) as ReadableSpan;
        const [, traceId, spanId] = TRACEPARENT_RE.exec(event.headers.traceparent ?? "") ?? [];
        assert.deepEqual({ traceId, spanId }, ids(span.spanContext()), `${event.name} carries its own span`);
        const n = Number(event.name.slice("joined.n".length));
        assert.equal(span.attributes["messaging.message.id"], results[n]?.eventId);
      }
    } finally {
      counting.client.close();
    }
  });

  test("publishBatch: a span per event, and a CLIENT span for the call linking them", TIMEOUT, async () => {
    const counting = countingClient(broker.target);
    try {
      const results = await counting.client.publishBatch([
        { name: "batched.a", data: 1 },
        { name: "batched.b", data: 2, options: { id: "batched-b" } },
      ]);
      await counting.client.publishBatch([{ name: "batched.b", data: 2, options: { id: "batched-b" } }]);
      const events = (counting.requests.get("BatchPublish") as pb.BatchPublishRequest[])[0]?.events ?? [];
      const spans = exporter.getFinishedSpans();
      const a = spans.find(named("publish batched.a")) as ReadableSpan;
      const [b, again] = spans.filter(named("publish batched.b"));
      assert.equal(a.attributes["messaging.operation.type"], "create");
      assert.equal(a.attributes["messaging.message.id"], results[0]?.eventId);
      assert.equal(b?.attributes["messaging.eventbroker.duplicate"], undefined);
      assert.equal(again?.attributes["messaging.eventbroker.duplicate"], true, "the second publish of an id is a duplicate");
      assert.deepEqual(
        events.map((event) => TRACEPARENT_RE.exec(event.headers.traceparent ?? "")?.[2]),
        [a.spanContext().spanId, b?.spanContext().spanId],
      );
      const [send] = spans.filter(named("send"));
      assert.equal(send?.kind, SpanKind.CLIENT);
      assert.equal(send?.attributes["messaging.operation.name"], "batch_publish");
      assert.equal(send?.attributes["messaging.batch.message_count"], 2);
      assert.deepEqual(send?.links.map((link) => link.context.spanId), [a.spanContext().spanId, b?.spanContext().spanId]);
      assert.ok(spans.find(named("send batched.b")), "a batch of one name is named for it");
    } finally {
      counting.client.close();
    }
  });

  test("the caller's traceparent is kept, and its trace continued by the handler", TIMEOUT, async () => {
    const theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const counting = countingClient(broker.target);
    const received = signal<Message>();
    const consumer = await consume("kept", "kept.*", (message) => received.resolve(message));
    try {
      await counting.client.publish("kept.one", {}, { headers: { traceparent: theirs } });
      const sent = (counting.requests.get("Publish") as pb.PublishRequest[])[0];
      assert.deepEqual(sent?.event?.headers, { traceparent: theirs }, "nothing replaced, nothing added");
      assert.deepEqual((await received.promise).headers, { traceparent: theirs });
      const [processed] = await exporter.until(1, named("process kept"));
      assert.equal(processed?.spanContext().traceId, "0af7651916cd43dd8448eb211c80319c");
      assert.equal(processed?.parentSpanContext?.spanId, "b7ad6b7169203331");
      // Header names compared ignoring case, as the Python client compares them.
      await counting.client.publish("kept.two", {}, { headers: { TraceParent: theirs, TraceState: "a=b" } });
      const second = (counting.requests.get("Publish") as pb.PublishRequest[])[1];
      assert.deepEqual(second?.event?.headers, { TraceParent: theirs, TraceState: "a=b" });
    } finally {
      await consumer.close();
      counting.client.close();
    }
  });

  test("a traceparent written by another client, published raw, is continued", TIMEOUT, async () => {
    // As the Python client's W3C propagator writes them: lowercase hex, sampled, with a tracestate.
    const headers = { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", tracestate: "vendor=opaque,other=1" };
    const consumer = await consume("raw", "raw.*", () => undefined);
    try {
      const { event } = eventFromArgs("raw.one", { n: 1 }, { headers });
      await client.unary(client.stub.publish, { event });
      const [processed] = await exporter.until(1, named("process raw"));
      assert.equal(processed?.spanContext().traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
      assert.equal(processed?.parentSpanContext?.spanId, "00f067aa0ba902b7");
      const link = processed?.links[0]?.context;
      assert.equal(link?.isRemote, true);
      assert.equal(link?.traceState?.serialize(), "vendor=opaque,other=1");
      // What the client writes, the SDK's own W3C propagator reads back the same.
      const carrier: Record<string, string> = {};
      new W3CTraceContextPropagator().inject(
        trace.setSpanContext(context.active(), link as SpanContext),
        carrier,
        { set: (c: Record<string, string>, k, v) => (c[k] = v) },
      );
      assert.deepEqual(carrier, headers);
    } finally {
      await consumer.close();
    }
  });

  test("a publish by the Python client with the OpenTelemetry SDK and the handler here are one trace", TIMEOUT, async (t) => {
    try {
      await run(PYTHON, ["-c", "import opentelemetry.sdk.trace, eventbroker"]);
    } catch (error) {
      const why = `the Python client's tracing is not installed for ${PYTHON} (opentelemetry-sdk)`;
      // CI installs it (make install) and requires it: there a missing SDK fails.
      if (process.env.BROKER_REQUIRE_OTEL) throw new Error(why, { cause: error });
      t.skip(why);
      return;
    }
    const consumer = await consume("from-python", "python.*", () => undefined);
    let published: { eventId: string; spans: { name: string; traceId: string; spanId: string }[] };
    try {
      const { stdout } = await run(PYTHON, ["-c", PYTHON_PUBLISHER, broker.target, "python.order"], { timeout: 30_000 });
      published = JSON.parse(stdout);
      await exporter.until(1, named("process from-python"));
    } finally {
      await consumer.close();
    }
    const publish = published.spans.find((span) => span.name === "publish python.order");
    assert.ok(publish, `the Python client made no publish span: ${JSON.stringify(published.spans)}`);
    const [processed] = exporter.getFinishedSpans().filter(named("process from-python"));
    assert.equal(processed?.attributes["messaging.message.id"], published.eventId);
    assert.equal(processed?.spanContext().traceId, publish.traceId, "one trace across the two languages");
    assert.equal(processed?.parentSpanContext?.spanId, publish.spanId);
  });

  test("a publish here and a handler of the Python client with the OpenTelemetry SDK are one trace", TIMEOUT, async (t) => {
    try {
      await run(PYTHON, ["-c", "import opentelemetry.sdk.trace, eventbroker"]);
    } catch (error) {
      const why = `the Python client's tracing is not installed for ${PYTHON} (opentelemetry-sdk)`;
      // CI installs it (make install) and requires it: there a missing SDK fails.
      if (process.env.BROKER_REQUIRE_OTEL) throw new Error(why, { cause: error });
      t.skip(why);
      return;
    }
    await client.createSubscription("to-python", "typescript.order");
    const { eventId } = await client.publish("typescript.order", { from: "typescript" });
    const [publish] = await exporter.until(1, named("publish typescript.order"));
    const { stdout } = await run(PYTHON, ["-c", PYTHON_CONSUMER, broker.target, "to-python"], { timeout: 30_000 });
    const consumed: { traceparent: string; spans: { name: string; traceId: string; parentSpanId: string | null }[] } =
      JSON.parse(stdout);
    assert.equal(consumed.traceparent, `00-${publish?.spanContext().traceId}-${publish?.spanContext().spanId}-01`);
    const processed = consumed.spans.find((span) => span.name === "process to-python");
    assert.ok(processed, `the Python client made no process span: ${stdout}`);
    assert.equal(processed.traceId, publish?.spanContext().traceId, `one trace across the two languages (${eventId})`);
    assert.equal(processed.parentSpanId, publish?.spanContext().spanId);
  });

  test("a handler past its timeout ends its process span with an error", TIMEOUT, async () => {
    await client.createSubscription("timed", "timed.*", { retryDelays: ["1h"] });
    const consumer = client.subscribe(
      "timed",
      (_message, context) => new Promise((resolve) => context.signal.addEventListener("abort", resolve)),
      { handlerTimeout: 0.2, handleSignals: false },
    );
    consumer.on("warning", () => undefined);
    try {
      await consumer.ready;
      await client.publish("timed.one", {});
      const [processed] = await exporter.until(1, named("process timed"));
      assert.equal(processed?.status.code, SpanStatusCode.ERROR);
      assert.match(processed?.status.message ?? "", /^TimeoutError: handler did not finish within its timeout/);
      assert.equal(processed?.attributes["error.type"], "TimeoutError");
      const [nack] = await exporter.until(1, named("nack timed"));
      assert.deepEqual(nack?.links.map((link) => link.context.spanId), [processed?.spanContext().spanId]);
    } finally {
      await consumer.close();
    }
  });

  test("a refused publish ends its span with an error", TIMEOUT, async () => {
    const tooLarge = "x".repeat(300 * 1024);
    await assert.rejects(client.publish("refused.big", { tooLarge }));
    const [span] = await exporter.until(1, named("publish refused.big"));
    assert.equal(span?.status.code, SpanStatusCode.ERROR);
    assert.match(span?.status.message ?? "", /BrokerError/);
    assert.match(String(span?.attributes["error.type"]), /^(INVALID_ARGUMENT|RESOURCE_EXHAUSTED)$/);
    assert.equal(span?.attributes["messaging.message.id"], undefined);
  });
});

interface PublishedSpan {
  name: string;
  kind: SpanKind;
  traceId: string;
  spanId: string;
  parentSpanId: string | null;
  attributes: Record<string, unknown>;
  status: SpanStatusCode;
}

/** The event's delivery in `subscription` is dead. */
async function assertDead(eventId: string, subscription: string): Promise<void> {
  const response = await client.unary(client.stub.getEvent, { eventId });
  const state = response.deliveries.find((d) => d.subscription === subscription)?.state;
  assert.equal(state, pb.DeliveryState.DELIVERY_STATE_DEAD);
}

/** A publisher with the Python client and the OpenTelemetry SDK: prints the event id and its finished spans. */
const PYTHON_PUBLISHER = `
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from eventbroker import Client

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
with Client(sys.argv[1]) as client:
    result = client.publish(sys.argv[2], {"from": "python"})
provider.shutdown()
spans = [
    {"name": s.name, "traceId": format(s.context.trace_id, "032x"), "spanId": format(s.context.span_id, "016x")}
    for s in exporter.get_finished_spans()
]
print(json.dumps({"eventId": result.event_id, "spans": spans}))
`;

/** A consumer with the Python client and the OpenTelemetry SDK: handles one delivery, prints its header and spans. */
const PYTHON_CONSUMER = `
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from eventbroker import Consumer

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
consumer = Consumer(sys.argv[2], target=sys.argv[1])
seen = {}

@consumer.on(">")
async def handle(msg, ctx):
    seen["traceparent"] = msg.headers.get("traceparent")
    consumer.stop()

consumer.run()
provider.shutdown()
spans = [
    {
        "name": s.name,
        "traceId": format(s.context.trace_id, "032x"),
        "parentSpanId": format(s.parent.span_id, "016x") if s.parent else None,
    }
    for s in exporter.get_finished_spans()
]
print(json.dumps({"traceparent": seen.get("traceparent"), "spans": spans}))
`;
