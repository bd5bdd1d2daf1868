"""Trace context from publish to handler: one trace across processes, retries and redrives.

The publisher runs in a process of its own with its own tracer provider
(`tests.e2e.trace_publisher`); the consumer runs here, with the SDK recording
spans in memory. The broker in between only keeps the headers, and shows the
trace id in GetEvent and the `broker` command (and, asked to, on its latency
histogram as an exemplar).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider

from broker.config import Settings
from eventbroker import AsyncClient, Client, Consumer, Context, Message, Terminal
from eventbroker.outbox import publish_in
from tests.conftest import TEST_SETTINGS, BrokerThread
from tests.e2e.cli import BrokerCli
from tests.e2e.processes import BrokerProcess
from tests.e2e.spans import WAIT_S, RecordedSpans, SpanRecord, global_tracer_provider

_REPO = Path(__file__).resolve().parents[2]
#: A traceparent a caller sets itself (W3C Trace Context's own example).
CALLERS_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
#: What Prometheus sends in `Accept` when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.fixture
def spans() -> Iterator[RecordedSpans]:
    """Tracing on in this process, spans kept in memory, for the length of the test."""
    recorded = RecordedSpans()
    with global_tracer_provider(recorded.provider):
        yield recorded
    recorded.provider.shutdown()


@pytest.fixture
def client(broker_target: str) -> Iterator[Client]:
    with Client(broker_target) as opened:
        yield opened


def publish_elsewhere(target: str, name: str, data: Any = None) -> tuple[str, list[SpanRecord]]:
    """Publish from another process that traces on its own; its event id and finished spans."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.e2e.trace_publisher", target, name, json.dumps(data)],
        capture_output=True,
        text=True,
        cwd=_REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    return printed["event_id"], printed["spans"]


def only(spans: list[SpanRecord], name: str) -> SpanRecord:
    (span,) = [s for s in spans if s["name"] == name]
    return span


def consume(consumer: Consumer, until: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """Run the consumer until `until` returns, then stop it (which settles what it handled)."""

    async def main() -> None:
        running = asyncio.create_task(consumer.run_async())
        waiting = asyncio.create_task(until())
        done, _ = await asyncio.wait(
            {running, waiting}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED
        )
        consumer.stop()
        await running
        assert waiting in done, "the consumer did not get there in time"
        await waiting

    asyncio.run(main())


def test_a_publish_elsewhere_and_its_handler_are_one_trace(
    spans: RecordedSpans, client: Client, broker_target: str
) -> None:
    client.create_subscription("billing", "order.*")
    event_id, published = publish_elsewhere(broker_target, "Order.New", {"order_id": 1})
    publish = only(published, "publish order.new")
    checkout = only(published, "checkout")
    assert publish["kind"] == "PRODUCER"
    assert publish["parent_id"] == checkout["span_id"]
    assert publish["attributes"] == {
        "messaging.system": "eventbroker",
        "messaging.destination.name": "order.new",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.message.id": event_id,
        "server.address": "127.0.0.1",
        "server.port": int(broker_target.rsplit(":", 1)[1]),
    }

    consumer = Consumer("billing", target=broker_target)
    handled = threading.Event()
    inside: list[trace.SpanContext] = []

    @consumer.on("order.new")
    def charge(msg: Message, ctx: Context) -> None:  # a sync handler: in a worker thread
        inside.append(trace.get_current_span().get_span_context())
        with trace.get_tracer("billing").start_as_current_span("charge card"):
            handled.set()

    async def settled() -> None:
        await asyncio.to_thread(spans.wait_for, "ack billing")

    consume(consumer, settled)
    process = only(spans.all(), "process billing")
    assert process["kind"] == "CONSUMER"
    assert process["trace_id"] == publish["trace_id"] == checkout["trace_id"]
    assert process["parent_id"] == publish["span_id"]
    assert process["links"] == [{"trace_id": publish["trace_id"], "span_id": publish["span_id"]}]
    assert process["status"] == "UNSET"
    attributes = process["attributes"]
    assert attributes["messaging.system"] == "eventbroker"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == "order.new"
    assert attributes["messaging.destination.subscription.name"] == "billing"
    assert attributes["messaging.message.id"] == event_id
    assert attributes["messaging.eventbroker.message.delivery_attempt"] == 1
    assert attributes["messaging.eventbroker.message.ack_id"]
    # The handler ran in the process span, so its own span is a child of it.
    assert [f"{c.span_id:016x}" for c in inside] == [process["span_id"]]
    assert only(spans.all(), "charge card")["parent_id"] == process["span_id"]
    # The ack is a span of its own, linking the deliveries it settled.
    ack = only(spans.all(), "ack billing")
    assert ack["kind"] == "CLIENT" and ack["parent_id"] is None
    assert {"trace_id": process["trace_id"], "span_id": process["span_id"]} in ack["links"]
    assert ack["attributes"]["messaging.operation.type"] == "settle"

    # GetEvent and the command line show the trace the event belongs to.
    assert client.get_event(event_id).trace_id == publish["trace_id"]
    shown = BrokerCli({"EVENTBROKER_TARGET": broker_target}).invoke(["events", "show", event_id])
    assert shown.exit_code == 0, shown.output
    assert f"trace: {publish['trace_id']}" in shown.stdout
    as_json = BrokerCli({"EVENTBROKER_TARGET": broker_target}).invoke(
        ["events", "show", event_id, "--json"]
    )
    assert json.loads(as_json.stdout)["trace_id"] == publish["trace_id"]


def test_a_retry_is_a_second_process_span_in_the_same_trace(
    spans: RecordedSpans, client: Client, broker_target: str
) -> None:
    client.create_subscription("billing", "order.*", min_backoff=0, max_backoff=0)
    event_id, published = publish_elsewhere(broker_target, "order.new")
    publish = only(published, "publish order.new")
    consumer = Consumer("billing", target=broker_target)

    @consumer.on("order.new")
    async def flaky(msg: Message, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise ValueError("flaky downstream")

    async def acked() -> None:
        await asyncio.to_thread(spans.wait_for, "ack billing")

    consume(consumer, acked)
    first, second = spans.named("process billing")
    for span in (first, second):
        assert span["trace_id"] == publish["trace_id"]
        assert span["parent_id"] == publish["span_id"]
        assert span["attributes"]["messaging.message.id"] == event_id
    assert [first["attributes"]["messaging.eventbroker.message.delivery_attempt"], 2] == [
        1,
        second["attributes"]["messaging.eventbroker.message.delivery_attempt"],
    ]
    assert first["status"] == "ERROR"
    assert first["status_description"] == "ValueError('flaky downstream')"
    assert first["attributes"]["error.type"] == "ValueError"
    assert first["events"] == ["exception"]
    assert second["status"] == "UNSET"
    nack = only(spans.all(), "nack billing")
    assert nack["links"] == [{"trace_id": first["trace_id"], "span_id": first["span_id"]}]
    assert nack["attributes"]["messaging.eventbroker.nack.terminal"] is False
    ack = only(spans.all(), "ack billing")
    assert {"trace_id": second["trace_id"], "span_id": second["span_id"]} in ack["links"]


def test_a_redriven_dead_letter_is_processed_again_in_the_same_trace(
    spans: RecordedSpans, client: Client, broker_target: str
) -> None:
    client.create_subscription("billing", "order.*")
    event_id, published = publish_elsewhere(broker_target, "order.new")
    publish = only(published, "publish order.new")
    consumer = Consumer("billing", target=broker_target)
    attempts: list[int] = []

    @consumer.on("order.new")
    async def strict(msg: Message, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            raise Terminal("card declined")

    async def dead_then_redriven() -> None:
        # The nack's span ends once the broker has dead-lettered the delivery.
        await asyncio.to_thread(spans.wait_for, "nack billing")
        async with AsyncClient(broker_target) as admin:
            letter = await admin.get_dead_letter("billing", event_id)
            assert letter is not None and letter.trace_id == publish["trace_id"]
            assert await admin.redrive_dead_letters("billing", event_ids=[event_id]) == 1
        await asyncio.to_thread(spans.wait_for, "ack billing")

    consume(consumer, dead_then_redriven)
    died, redriven = spans.named("process billing")
    assert died["status"] == "ERROR" and died["attributes"]["error.type"] == "Terminal"
    assert only(spans.all(), "nack billing")["attributes"]["messaging.eventbroker.nack.terminal"]
    for span in (died, redriven):
        assert span["trace_id"] == publish["trace_id"]
        assert span["parent_id"] == publish["span_id"]
    assert attempts == [1, 1]  # a redrive counts attempts afresh
    assert redriven["status"] == "UNSET"
    assert client.get_event(event_id).delivery("billing").state == "acked"  # type: ignore[union-attr]


def test_every_event_gets_its_own_publish_span_and_headers(
    spans: RecordedSpans, client: Client, broker_target: str
) -> None:
    client.create_subscription("all", ">")
    results = client.publish_batch(
        [{"name": "order.new"}, {"name": "order.paid", "headers": {"src": "web"}}]
    )
    new, paid = spans.named("publish order.new") + spans.named("publish order.paid")
    send = only(spans.all(), "send")
    assert send["kind"] == "CLIENT"
    assert send["attributes"]["messaging.batch.message_count"] == 2
    assert send["links"] == [
        {"trace_id": new["trace_id"], "span_id": new["span_id"]},
        {"trace_id": paid["trace_id"], "span_id": paid["span_id"]},
    ]
    for span, result in zip((new, paid), results, strict=True):
        assert span["attributes"]["messaging.operation.type"] == "create"
        assert span["attributes"]["messaging.message.id"] == result.event_id
        stored = client.get_event(result.event_id)
        # Version 00, the event's own span as parent; the flags say sampled (and random ids).
        assert stored.headers["traceparent"].startswith(f"00-{span['trace_id']}-{span['span_id']}-")
        assert stored.trace_id == span["trace_id"]
    assert client.get_event(results[1].event_id).headers["src"] == "web"  # the caller's stay

    # Publishes joined into one call by the asyncio client: a span and headers each.
    async def joined() -> list[str]:
        async with AsyncClient(broker_target) as aio:
            done = await asyncio.gather(*(aio.publish("order.shipped", i) for i in range(5)))
        return [result.event_id for result in done]

    shipped = asyncio.run(joined())
    spans_by_id = {
        s["attributes"]["messaging.message.id"]: s for s in spans.named("publish order.shipped")
    }
    assert sorted(spans_by_id) == sorted(shipped)
    for event_id in shipped:
        span = spans_by_id[event_id]
        assert span["attributes"]["messaging.operation.type"] == "send"
        assert client.get_event(event_id).trace_id == span["trace_id"]
    assert len({s["trace_id"] for s in spans_by_id.values()}) == 5  # no parent: a trace each


def test_a_failed_publish_ends_its_span_with_an_error(spans: RecordedSpans, client: Client) -> None:
    with pytest.raises(Exception, match="name"):
        client.publish("no spaces allowed")
    (span,) = spans.named("publish no spaces allowed")
    assert span["status"] == "ERROR"
    assert span["attributes"]["error.type"] == "INVALID_ARGUMENT"
    assert "messaging.message.id" not in span["attributes"]


def test_a_traceparent_the_caller_set_is_kept(
    spans: RecordedSpans, client: Client, broker_target: str
) -> None:
    client.create_subscription("billing", "order.*")
    headers = {"traceparent": CALLERS_TRACEPARENT, "tracestate": "vendor=1"}
    published = client.publish("order.new", headers=headers)
    stored = client.get_event(published.event_id)
    assert stored.headers == headers
    assert stored.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert len(spans.named("publish order.new")) == 1  # the publish is still traced
    # Whatever case the caller wrote it in.
    upper = client.publish("order.new", headers={"TraceParent": CALLERS_TRACEPARENT})
    assert client.get_event(upper.event_id).headers == {"TraceParent": CALLERS_TRACEPARENT}

    # The consumer continues the caller's trace, under the caller's span.
    consumer = Consumer("billing", target=broker_target)

    @consumer.on("order.new")
    async def record(msg: Message, ctx: Context) -> None:
        pass

    async def both_processed() -> None:
        await asyncio.to_thread(spans.wait_for, "process billing", 2)

    consume(consumer, both_processed)
    for span in spans.named("process billing"):
        assert span["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        assert span["parent_id"] == "b7ad6b7169203331"


@pytest.mark.parametrize("provider", [None, NoOpTracerProvider()], ids=["none", "no-op"])
def test_without_a_tracer_provider_no_header_is_added(
    provider: trace.TracerProvider | None, client: Client, broker_target: str
) -> None:
    client.create_subscription("billing", "order.*")
    with global_tracer_provider(provider):
        alone = client.publish("order.new", headers={"src": "web"})
        (batched,) = client.publish_batch([{"name": "order.new"}])

        async def publish_async() -> str:
            async with AsyncClient(broker_target) as aio:
                return (await aio.publish("order.new")).event_id

        async_id = asyncio.run(publish_async())
        consumer = Consumer("billing", target=broker_target)
        seen: list[dict[str, str]] = []
        all_three = asyncio.Event()

        @consumer.on("order.new")
        async def record(msg: Message, ctx: Context) -> None:
            seen.append(dict(msg.headers))
            if len(seen) == 3:
                all_three.set()

        consume(consumer, all_three.wait)
    assert client.get_event(alone.event_id).headers == {"src": "web"}
    assert client.get_event(alone.event_id).trace_id == ""
    assert client.get_event(batched.event_id).headers == {}
    assert client.get_event(async_id).headers == {}
    assert sorted(seen, key=len) == [{}, {}, {"src": "web"}]


def test_a_malformed_traceparent_has_no_trace_id(client: Client) -> None:
    published = client.publish("order.new", headers={"traceparent": "00-not-a-trace-01"})
    stored = client.get_event(published.event_id)
    assert stored.headers == {"traceparent": "00-not-a-trace-01"}  # kept verbatim all the same
    assert stored.trace_id == ""


def test_without_the_api_installed_the_client_publishes_as_ever(
    client: Client, broker_target: str
) -> None:
    # `import opentelemetry` fails in the child, as where the extra is not installed.
    script = """
import json, sys
sys.modules["opentelemetry"] = None
from eventbroker import Client
with Client(sys.argv[1]) as client:
    published = client.publish("order.new", headers={"src": "web"})
    (batched,) = client.publish_batch([{"name": "order.new"}])
print(json.dumps([published.event_id, batched.event_id]))
"""
    done = subprocess.run(
        [sys.executable, "-c", script, broker_target],
        capture_output=True,
        text=True,
        cwd=_REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    alone, batched = json.loads(done.stdout)
    assert client.get_event(alone).headers == {"src": "web"}
    assert client.get_event(batched).headers == {}


def scrape(http_port: int) -> tuple[str, str]:
    """The content type and text of `/metrics`, asked for as Prometheus asks."""
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/metrics")
    request.add_header("Accept", PROMETHEUS_ACCEPT)
    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
        return response.headers["Content-Type"], response.read().decode()


@pytest.mark.parametrize("exemplars", [True, False], ids=["exemplars", "default"])
def test_the_delivery_latency_has_trace_ids_as_exemplars_when_asked(
    exemplars: bool, broker_settings: Settings, tmp_path: Path
) -> None:
    flags = ("--metrics-exemplars",) if exemplars else ()
    broker = BrokerProcess(broker_settings.database_url, tmp_path / "broker.log", flags).start()
    try:
        with Client(broker.target) as client:
            client.create_subscription("billing", "order.*")
            client.publish("order.new", headers={"traceparent": CALLERS_TRACEPARENT})
            for batch in client.subscribe("billing", max_outstanding=1):
                client.ack(batch)
                break
        http_port = re.search(r"\(http port (\d+)\)", broker.log_text())
        assert http_port is not None
        content_type, text = scrape(int(http_port.group(1)))
    finally:
        broker.terminate()
    buckets = [
        line
        for line in text.splitlines()
        if line.startswith("eventbroker_delivery_latency_seconds_bucket{")
    ]
    with_exemplar = [line for line in buckets if " # {" in line]
    if exemplars:  # on the bucket the latency fell in
        assert content_type.startswith("application/openmetrics-text")
        (line,) = with_exemplar
        assert '# {trace_id="0af7651916cd43dd8448eb211c80319c"}' in line
    else:  # the Prometheus text format, as ever
        assert content_type.startswith("text/plain")
        assert buckets and not with_exemplar


def psycopg_dsn(url: str) -> str:
    """A SQLAlchemy URL as psycopg takes it."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_a_publish_in_a_transaction_carries_its_trace_too(
    spans: RecordedSpans, postgres_url: str
) -> None:
    broker = BrokerThread(dataclasses.replace(TEST_SETTINGS, database_url=postgres_url)).start()
    try:
        with Client(broker.target) as client:
            client.create_subscription("billing", "order.*")
            with psycopg.connect(psycopg_dsn(postgres_url)) as conn:  # commits on leaving
                published = publish_in(conn, "order.new", {"order_id": 1}, headers={"src": "db"})
            stored = client.get_event(published.event_id)
    finally:
        broker.stop()
    span = only(spans.all(), "publish order.new")
    assert span["kind"] == "PRODUCER"
    assert span["attributes"]["messaging.operation.name"] == "publish_in"
    assert span["attributes"]["messaging.message.id"] == published.event_id
    assert stored.trace_id == span["trace_id"]
    assert stored.headers["traceparent"].startswith(f"00-{span['trace_id']}-{span['span_id']}-")
    assert stored.headers["src"] == "db"
