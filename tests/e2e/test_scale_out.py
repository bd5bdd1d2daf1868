"""Several brokers on one PostgreSQL database: they wake each other and share the limits.

Both brokers poll only every minute here, so anything that arrives in time
arrived because the other broker said so (`NOTIFY`), not by polling.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import grpc
import pytest

from broker.config import Settings
from eventbroker import Client
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.conftest import TEST_SETTINGS, BrokerThread
from tests.e2e.streams import StreamReader, subscribe

#: Long enough that no test here can pass by polling.
NO_POLLING = replace(TEST_SETTINGS, poll_interval_s=60.0)
WAKE_S = 5.0


class Pair:
    """Two brokers on one database, a client and a stub for each."""

    def __init__(self, settings: Settings) -> None:
        self.brokers = [BrokerThread(settings).start(), BrokerThread(settings).start()]
        self.channels = [grpc.insecure_channel(b.target) for b in self.brokers]
        self.stubs = [pb_grpc.EventBrokerServiceStub(c) for c in self.channels]
        self.clients = [Client(b.target) for b in self.brokers]

    def stop_second(self) -> None:
        """Stop the second broker for good (close() then skips it)."""
        self.clients.pop().close()
        self.channels.pop().close()
        self.brokers.pop().stop()

    def idle_consumer(self, readers: list[StreamReader]) -> StreamReader:
        """Subscription "billing" made on the first broker, consumed there, nothing yet."""
        self.clients[0].create_subscription("billing", "order.*")
        reader = subscribe(self.stubs[0], readers, "billing", max_outstanding=10)
        assert reader.nothing_within(0.3)  # attached and idle
        return reader

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for channel in self.channels:
            channel.close()
        for broker in self.brokers:
            broker.stop()


@pytest.fixture
def pair(postgres_url: str) -> Iterator[Pair]:
    brokers = Pair(replace(NO_POLLING, database_url=postgres_url))
    yield brokers
    brokers.close()


def test_a_publish_on_one_broker_wakes_a_consumer_on_the_other(
    pair: Pair, readers: list[StreamReader]
) -> None:
    reader = pair.idle_consumer(readers)
    published = pair.clients[1].publish("order.new", {"n": 1})
    (delivery,) = reader.take(1, timeout=WAKE_S)
    assert delivery.event_id == published.event_id


def test_a_delayed_event_comes_due_on_the_broker_with_the_consumer(
    pair: Pair, readers: list[StreamReader]
) -> None:
    reader = pair.idle_consumer(readers)
    # The publishing broker goes away before the event is due: the other one
    # must have scheduled its own timer from the wake-up message.
    published = pair.clients[1].publish("order.later", delay=timedelta(seconds=1))
    pair.stop_second()
    (delivery,) = reader.take(1, timeout=WAKE_S)
    assert delivery.event_id == published.event_id


def test_an_ack_on_one_broker_frees_the_concurrency_slot_on_the_other(
    pair: Pair, readers: list[StreamReader]
) -> None:
    first, second = pair.clients
    first.create_subscription("reports", "report.*", max_in_flight=1)
    reader = subscribe(pair.stubs[0], readers, "reports", max_outstanding=10)
    one = first.publish("report.run", {"n": 1})
    two = first.publish("report.run", {"n": 2})
    (held,) = reader.take(1)
    assert held.event_id == one.event_id
    assert reader.nothing_within(0.3)  # the limit holds the second back
    assert second.ack(held.ack_id).not_applied == ()
    (next_one,) = reader.take(1, timeout=WAKE_S)
    assert next_one.event_id == two.event_id


def test_a_subscription_deleted_on_one_broker_ends_streams_on_the_other(
    pair: Pair, readers: list[StreamReader]
) -> None:
    reader = pair.idle_consumer(readers)
    pair.clients[1].delete_subscription("billing")
    assert reader.ended.wait(WAKE_S)
    assert reader.error is not None and reader.error.code() == grpc.StatusCode.NOT_FOUND


def test_concurrency_limit_holds_across_brokers(pair: Pair, readers: list[StreamReader]) -> None:
    first, _ = pair.clients
    first.create_subscription("jobs", "job.*", max_in_flight=3)
    first.publish_batch([{"name": "job.run", "data": {"n": n}} for n in range(12)])
    streams = [
        subscribe(stub, readers, "jobs", max_outstanding=10) for stub in (*pair.stubs, *pair.stubs)
    ]
    held: list[tuple[StreamReader, pb.Delivery]] = []
    acked = 0
    while acked < 12:
        for stream in streams:
            held.extend((stream, d) for d in stream.take_available(0.05))
        assert len(held) <= 3, f"{len(held)} in flight with a limit of 3"
        if held:
            stream, delivery = held.pop(0)
            pair.clients[acked % 2].ack(delivery.ack_id)
            acked += 1
    for stream in streams:
        assert stream.nothing_within(0.1)
