"""The consumer runtime: handlers, acks and nacks, typed data, leases, drain and reconnect."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from broker.config import Settings
from eventbroker import (
    AsyncClient,
    Client,
    Consumer,
    Context,
    DeadLetter,
    Message,
    NotFound,
    Retry,
    Terminal,
)
from eventbroker.types import DeliveryStatus
from tests.conftest import BrokerThread

WAIT_S = 10.0
CONSUMER_LOGGER = "eventbroker.consumer"


@dataclass
class OrderNew:
    order_id: int
    amount: float


class Signup(BaseModel):
    user_id: int
    plan: str


@pytest.fixture
def client(broker_target: str) -> Iterator[Client]:
    with Client(broker_target) as opened:
        yield opened


class LogSignal(logging.Handler):
    """Sets an event when the consumer logs a message starting with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__(logging.DEBUG)
        self.prefix = prefix
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.seen.set()


@pytest.fixture
def log_signal() -> Iterator[Callable[[str], LogSignal]]:
    logger = logging.getLogger(CONSUMER_LOGGER)
    added: list[LogSignal] = []

    def make(prefix: str) -> LogSignal:
        signal = LogSignal(prefix)
        logger.addHandler(signal)
        added.append(signal)
        return signal

    yield make
    for added_signal in added:
        logger.removeHandler(added_signal)


def consume(consumer: Consumer, until: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run the consumer on a fresh event loop until `until` returns, then stop it (drain)."""

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


async def wait_for(event: asyncio.Event | threading.Event) -> None:
    if isinstance(event, asyncio.Event):
        await event.wait()
    else:
        assert await asyncio.to_thread(event.wait, WAIT_S)


def status_of(client: Client, event_id: str, subscription: str) -> DeliveryStatus:
    status = client.get_event(event_id).delivery(subscription)
    assert status is not None
    return status


# -- acking, nacking, dead-lettering -------------------------------------------


def test_returning_handler_acks(client: Client, broker_target: str) -> None:
    client.create_subscription("billing", "order.*")
    published = client.publish("order.new", {"order_id": 1}, headers={"src": "web"})
    consumer = Consumer("billing", target=broker_target, consumer_name="worker-1")
    handled = threading.Event()
    seen: list[tuple[Message, int, datetime | None]] = []

    @consumer.on("order.new")
    async def record(msg: Message, ctx: Context) -> None:
        seen.append((msg, ctx.attempt, ctx.deadline))
        handled.set()

    runner = threading.Thread(target=consumer.run)
    runner.start()
    try:
        assert handled.wait(WAIT_S)
    finally:
        consumer.stop()
        runner.join(WAIT_S)
    assert not runner.is_alive()
    ((message, attempt, deadline),) = seen
    assert (message.event_id, message.data, message.headers) == (
        published.event_id,
        {"order_id": 1},
        {"src": "web"},
    )
    assert attempt == 1 and deadline is not None
    assert timedelta(seconds=20) < deadline - datetime.now(UTC) <= timedelta(seconds=30)
    status = status_of(client, published.event_id, "billing")
    assert (status.state, status.attempts) == ("acked", 1)


def test_raising_handler_nacks_and_the_retry_is_attempt_2(
    client: Client, broker_target: str
) -> None:
    client.create_subscription("billing", "order.*", min_backoff=0, max_backoff=0)
    published = client.publish("order.new", {"order_id": 2})
    consumer = Consumer("billing", target=broker_target, consumer_name="worker-1")
    retried = asyncio.Event()
    attempts: list[int] = []

    @consumer.on("order.new")
    async def flaky(msg: Message, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ValueError("flaky downstream")
        retried.set()

    consume(consumer, lambda: wait_for(retried))
    assert attempts == [1, 2]
    status = status_of(client, published.event_id, "billing")
    assert (status.state, status.attempts) == ("acked", 2)
    assert status.history[0].outcome == "nacked"
    assert status.history[0].consumer.startswith("worker-1")
    assert status.history[0].error == "ValueError('flaky downstream')"


def test_terminal_dead_letters_at_once(client: Client, broker_target: str) -> None:
    client.create_subscription("billing", "order.*")
    terminal = client.publish("order.bad", {"order_id": 3})
    alias = client.publish("order.worse", {"order_id": 4})
    consumer = Consumer("billing", target=broker_target)
    raised: list[str] = []
    both = asyncio.Event()

    @consumer.on("order.*")
    async def reject(msg: Message, ctx: Context) -> None:
        raised.append(msg.name)
        if len(raised) == 2:
            both.set()
        if msg.name == "order.bad":
            raise Terminal("order 3 can never be billed")
        raise DeadLetter("order 4 neither")

    consume(consumer, lambda: wait_for(both))
    dead = status_of(client, terminal.event_id, "billing")
    assert (dead.state, dead.dead_reason, dead.attempts) == ("dead", "nacked_terminal", 1)
    assert dead.last_error == "Terminal('order 3 can never be billed')"
    assert status_of(client, alias.event_id, "billing").state == "dead"


def test_every_matching_handler_runs_sync_ones_in_a_thread(
    client: Client, broker_target: str
) -> None:
    client.create_subscription("billing", ["order.*", "refund.*"])
    published = client.publish("Order.New", {"order_id": 5})
    consumer = Consumer("billing", target=broker_target)
    ran: list[str] = []
    threads: list[int] = []
    extended: list[bool] = []
    all_ran = threading.Event()
    loop_thread = threading.get_ident()

    def note(name: str) -> None:
        ran.append(name)
        if len(ran) == 3:
            all_ran.set()

    @consumer.on("order.new")
    async def first(msg: Message, ctx: Context) -> None:
        note("first")

    @consumer.on("ORDER.NEW")
    def second(msg: Message, ctx: Context) -> None:
        threads.append(threading.get_ident())
        extended.append(ctx.extend_sync(timedelta(seconds=40)))
        note("second")

    @consumer.on("order.*")
    async def wildcard(msg: Message, ctx: Context) -> None:
        note("wildcard")

    @consumer.on("refund.*")
    async def other(msg: Message, ctx: Context) -> None:
        note("other")

    async def until() -> None:
        await wait_for(all_ran)

    consume(consumer, until)
    assert sorted(ran) == ["first", "second", "wildcard"]
    assert threads and threads[0] != loop_thread
    assert extended == [True]
    assert status_of(client, published.event_id, "billing").state == "acked"


def test_delivery_without_a_handler_is_nacked_not_dropped(
    client: Client, broker_target: str, log_signal: Callable[[str], LogSignal]
) -> None:
    client.create_subscription("billing", "order.*")
    published = client.publish("order.unknown")
    consumer = Consumer("billing", target=broker_target)
    nacked = log_signal("no handler for order.unknown")

    @consumer.on("order.new")
    async def unused(msg: Message, ctx: Context) -> None:
        raise AssertionError("must not run")

    consume(consumer, lambda: wait_for(nacked.seen))
    status = status_of(client, published.event_id, "billing")
    assert status.last_error == "no handler for order.unknown"
    assert status.attempts == 1 and status.state != "acked"


# -- typed data ----------------------------------------------------------------


def test_handlers_get_data_validated_into_their_model(client: Client, broker_target: str) -> None:
    client.create_subscription("shop", ">")
    order = client.publish("order.new", OrderNew(order_id=7, amount=9.5))
    signup = client.publish("user.signup", Signup(user_id=1, plan="pro"))
    consumer = Consumer("shop", target=broker_target)
    received: dict[str, Any] = {}
    both = threading.Event()

    def note(key: str, value: Any) -> None:
        received[key] = value
        if len(received) == 2:
            both.set()

    @consumer.on("order.new", model=OrderNew)
    async def on_order(msg: Message, ctx: Context) -> None:
        assert ctx.message.data == {"order_id": 7, "amount": 9.5}
        note("order", msg.data)

    @consumer.on("user.signup", model=Signup)
    def on_signup(msg: Message, ctx: Context) -> None:
        note("signup", msg.data)

    async def until() -> None:
        await wait_for(both)

    consume(consumer, until)
    assert received["order"] == OrderNew(order_id=7, amount=9.5)
    assert received["signup"] == Signup(user_id=1, plan="pro")
    assert status_of(client, order.event_id, "shop").state == "acked"
    assert status_of(client, signup.event_id, "shop").state == "acked"


def test_data_that_does_not_fit_the_model_is_dead_lettered_at_once(
    client: Client, broker_target: str, log_signal: Callable[[str], LogSignal]
) -> None:
    client.create_subscription("shop", "user.*")
    published = client.publish("user.signup", {"plan": "pro"})
    consumer = Consumer("shop", target=broker_target)
    failed = log_signal("test_data_that_does_not_fit")
    called: list[Message] = []

    @consumer.on("user.signup", model=Signup)
    async def on_signup(msg: Message[Signup], ctx: Context) -> None:
        called.append(msg)

    consume(consumer, lambda: wait_for(failed.seen))
    assert called == []
    status = status_of(client, published.event_id, "shop")
    assert (status.state, status.dead_reason, status.attempts) == ("dead", "nacked_terminal", 1)
    assert "data does not match Signup: 1 validation error for Signup" in status.last_error
    assert "user_id" in status.last_error


def test_retry_with_a_delay_nacks_for_that_long(client: Client, broker_target: str) -> None:
    client.create_subscription("billing", "order.*")
    published = client.publish("order.new", {"order_id": 5, "amount": 1.0})
    consumer = Consumer("billing", target=broker_target)
    raised = asyncio.Event()

    @consumer.on("order.new")
    async def later(msg: Message, ctx: Context) -> None:
        raised.set()
        raise Retry("downstream busy", delay="1h")

    consume(consumer, lambda: wait_for(raised))  # stopping drains: the nack is sent
    status = status_of(client, published.event_id, "billing")
    assert (status.state, status.attempts) == ("scheduled", 1)
    assert status.last_error == "Retry('downstream busy')"
    assert status.next_time is not None
    ahead = status.next_time - datetime.now(UTC)
    assert timedelta(minutes=59) < ahead <= timedelta(hours=1)


def test_consumer_logs_connected_draining_and_drained(
    client: Client, broker_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    client.create_subscription("billing", "order.*")
    client.publish("order.new", {"order_id": 6, "amount": 1.0})
    consumer = Consumer("billing", target=broker_target)
    started = asyncio.Event()
    release = asyncio.Event()

    @consumer.on("order.new")
    async def slow(msg: Message, ctx: Context) -> None:
        started.set()
        await release.wait()

    async def stop_while_in_flight() -> None:
        await started.wait()
        asyncio.get_running_loop().call_later(0.05, release.set)

    consume(consumer, stop_while_in_flight)
    lines = [r.getMessage() for r in caplog.records if r.name == CONSUMER_LOGGER]
    assert f"connected to {broker_target}, subscription billing" in lines
    assert lines.index("draining 1 deliveries") < lines.index("drained")
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == CONSUMER_LOGGER)


# -- leases --------------------------------------------------------------------


def test_extend_keeps_the_lease_longer(client: Client, broker_target: str) -> None:
    client.create_subscription("reports", "report.*", ack_deadline="5s")
    published = client.publish("report.run")
    consumer = Consumer("reports", target=broker_target)
    checked = asyncio.Event()
    seen: dict[str, Any] = {}

    @consumer.on("report.run")
    async def long_job(msg: Message, ctx: Context) -> None:
        seen["before"] = ctx.deadline
        seen["applied"] = await ctx.extend(120)
        seen["after"] = ctx.deadline
        async with AsyncClient(broker_target) as inspector:
            status = (await inspector.get_event(msg.event_id)).delivery("reports")
        seen["server"] = status.next_time if status else None
        checked.set()

    consume(consumer, lambda: wait_for(checked))
    assert seen["applied"] is True
    assert seen["after"] - seen["before"] > timedelta(seconds=100)
    assert seen["server"] - datetime.now(UTC) > timedelta(seconds=100)
    assert status_of(client, published.event_id, "reports").state == "acked"


def test_a_handler_slower_than_the_ack_deadline_keeps_its_lease(
    client: Client, broker_target: str
) -> None:
    """The consumer renews the 1 s lease while the handler runs: no redelivery, attempt 1."""
    client.create_subscription("reports", "report.*", ack_deadline="1s")
    published = client.publish("report.run")
    consumer = Consumer("reports", target=broker_target, max_outstanding=4)
    attempts: list[int] = []
    done = asyncio.Event()

    @consumer.on("report.run")
    async def long_job(msg: Message, ctx: Context) -> None:
        attempts.append(msg.attempt)
        assert msg.ack_deadline is not None
        outlived = msg.ack_deadline + timedelta(seconds=2)
        async with AsyncClient(broker_target) as inspector:
            # Run until twice the deadline has passed, watching the broker keep the lease.
            while datetime.now(UTC) < outlived:
                status = (await inspector.get_event(msg.event_id)).delivery("reports")
                assert status is not None and status.state == "in_flight", status
                await asyncio.sleep(0.1)
        done.set()

    consume(consumer, lambda: wait_for(done))
    status = status_of(client, published.event_id, "reports")
    assert attempts == [1]
    assert status.state == "acked" and status.attempts == 1


# -- lifecycle -----------------------------------------------------------------


def test_stop_drains_in_flight_handlers_and_settles_them(
    client: Client, broker_target: str
) -> None:
    client.create_subscription("billing", "order.*")
    first = client.publish("order.new", {"n": 1})
    second = client.publish("order.new", {"n": 2})
    consumer = Consumer("billing", target=broker_target, max_outstanding=1)
    started = asyncio.Event()
    release = asyncio.Event()
    order: list[str] = []

    @consumer.on("order.new")
    async def slow(msg: Message, ctx: Context) -> None:
        order.append(f"started {msg.data['n']}")
        started.set()
        await release.wait()
        order.append(f"finished {msg.data['n']}, stopping={ctx.stopping}")

    async def until() -> None:
        await started.wait()
        consumer.stop()
        assert consumer.stopping
        order.append("stop asked")
        release.set()

    consume(consumer, until)
    assert order == ["started 1", "stop asked", "finished 1, stopping=True"]
    assert status_of(client, first.event_id, "billing").state == "acked"
    assert status_of(client, second.event_id, "billing").state != "acked"
    assert not consumer.stopping


CONSUMER_SCRIPT = """
import asyncio, sys
from eventbroker import Consumer

consumer = Consumer("jobs", target=sys.argv[1], max_outstanding=1)

@consumer.on("job.run")
async def work(msg, ctx):
    print("started", msg.data["n"], flush=True)
    while not ctx.stopping:  # a long job that wraps up when asked to
        await asyncio.sleep(0.01)
    print("finished", msg.data["n"], flush=True)

consumer.run()
print("drained", flush=True)
"""


def test_sigterm_drains_the_consumer_process(
    client: Client, broker_target: str, tmp_path: Path
) -> None:
    client.create_subscription("jobs", "job.*")
    first = client.publish("job.run", {"n": 1})
    second = client.publish("job.run", {"n": 2})
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), broker_target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip()]
        assert lines == ["started 1"]
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines += [line for line in rest.splitlines() if not line.startswith(("INFO", "WARNING"))]
    assert proc.returncode == 0, rest
    assert lines == ["started 1", "finished 1", "drained"], rest
    assert status_of(client, first.event_id, "jobs").state == "acked"
    assert status_of(client, second.event_id, "jobs").state == "ready"


def test_stop_before_run_makes_run_return_at_once() -> None:
    consumer = Consumer("billing", target="127.0.0.1:9")

    @consumer.on("x")
    async def unused(msg: Message, ctx: Context) -> None:
        raise AssertionError("must not run")

    consumer.stop()
    consumer.run()
    assert not consumer.stopping


def test_unknown_subscription_ends_run_without_retrying(broker_target: str) -> None:
    consumer = Consumer("missing", target=broker_target)

    @consumer.on("x")
    async def unused(msg: Message, ctx: Context) -> None:
        raise AssertionError("must not run")

    with pytest.raises(NotFound) as caught:
        consumer.run()
    assert caught.value.reason == "SUBSCRIPTION_NOT_FOUND"


def test_run_needs_a_handler() -> None:
    with pytest.raises(RuntimeError, match="no handlers"):
        Consumer("billing", target="127.0.0.1:9").run()


def test_reconnects_when_the_broker_restarts(
    broker_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = replace(broker_settings, listen=f"127.0.0.1:{port}")
    broker = BrokerThread(settings).start()
    consumer = Consumer("billing", target=broker.target)
    handled: dict[str, threading.Event] = {"1": threading.Event(), "2": threading.Event()}

    @consumer.on("order.new")
    async def record(msg: Message, ctx: Context) -> None:
        handled[str(msg.data["n"])].set()

    runner = threading.Thread(target=consumer.run)
    try:
        with Client(broker.target) as client:
            client.create_subscription("billing", "order.*")
            client.publish("order.new", {"n": 1})
        runner.start()
        assert handled["1"].wait(WAIT_S)
        broker.stop()
        broker = BrokerThread(settings).start()
        with Client(broker.target) as client:
            second = client.publish("order.new", {"n": 2})
            assert handled["2"].wait(WAIT_S)
            consumer.stop()
            runner.join(WAIT_S)
            assert status_of(client, second.event_id, "billing").state == "acked"
    finally:
        consumer.stop()
        if runner.ident is not None:
            runner.join(WAIT_S)
        broker.stop()
    assert not runner.is_alive()
    lines = [r.getMessage() for r in caplog.records if r.name == CONSUMER_LOGGER]
    assert any(line.startswith("stream lost (") and "; reconnecting" in line for line in lines)
    assert sum(line.startswith("connected to ") for line in lines) >= 2
