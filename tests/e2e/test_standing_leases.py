"""A caught-up consumer's next event is leased by the publish's own transaction.

A dispatcher whose consumers have credit and nothing ready leaves a standing
request; the next publish it matches leases in its transaction, so the
delivery's lease begins at the event's publish time exactly (a lease taken by
a later transaction begins later). The dispatcher's polling fallback is set
far off here, so that only the publish can serve the request.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from google.protobuf import duration_pb2

from broker.config import Settings
from broker.engine.engine import DeliveryEngine
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.conftest import BrokerThread
from tests.e2e.faults import wait_for
from tests.e2e.streams import StreamReader, subscribe

Stub = pb_grpc.EventBrokerServiceStub
DEADLINE_S = 30


@pytest.fixture
def broker_settings(any_database_settings: Settings) -> Settings:
    """The broker of every test here, with the polling fallback out of the way."""
    return replace(any_database_settings, poll_interval_s=600.0)


def _engine(server: BrokerThread) -> DeliveryEngine:
    engine = server.app.engine
    assert engine is not None
    return engine


def _standing(server: BrokerThread, name: str) -> bool:
    """Whether the subscription's dispatcher here has a standing request posted."""
    engine = _engine(server)
    return any(d.name == name and d.has_standing for d in engine.dispatchers)


def _create(stub: Stub, name: str, **settings: object) -> None:
    stub.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(
                name=name,
                filter=["order.*"],
                ack_deadline=duration_pb2.Duration(seconds=DEADLINE_S),
                **settings,  # type: ignore[arg-type]
            )
        )
    )


def _leased_at_publish(delivery: pb.Delivery) -> bool:
    published_us = delivery.publish_time.ToMicroseconds()
    return delivery.ack_deadline.ToMicroseconds() == published_us + DEADLINE_S * 1_000_000


def test_a_caught_up_consumer_gets_each_new_event_leased_with_its_publish(
    broker_server: BrokerThread, stub: Stub, readers: list[StreamReader]
) -> None:
    _create(stub, "orders")
    consumer = subscribe(stub, readers, "orders", max_outstanding=10)
    for index in range(5):
        assert wait_for(lambda: _standing(broker_server, "orders"), 10)
        event_id = stub.Publish(pb.PublishRequest(event=pb.Event(name="order.placed"))).event_id
        (delivery,) = consumer.take(1)
        assert delivery.event_id == event_id
        assert delivery.attempt == 1
        assert _leased_at_publish(delivery), f"event {index} was leased after its publish"
        assert not stub.Ack(pb.AckRequest(ack_ids=[delivery.ack_id])).not_applied_ack_ids


def test_a_publish_leases_no_more_than_the_credit_and_the_rest_follows_acks(
    broker_server: BrokerThread, stub: Stub, readers: list[StreamReader]
) -> None:
    _create(stub, "orders")
    consumer = subscribe(stub, readers, "orders", max_outstanding=3)
    assert wait_for(lambda: _standing(broker_server, "orders"), 10)
    events = [pb.Event(name="order.placed", priority=i % 3) for i in range(10)]
    results = stub.BatchPublish(pb.BatchPublishRequest(events=events)).results
    ids = [r.event_id for r in results]
    first = consumer.take(3)
    # The highest priorities of the batch, leased with it; nothing beyond the credit.
    assert sorted(d.priority for d in first) == [2, 2, 2]
    assert all(_leased_at_publish(d) for d in first)
    assert consumer.nothing_within(0.3)
    received = list(first)
    holding = list(first)
    while len(received) < len(ids):
        stub.Ack(pb.AckRequest(ack_ids=[holding.pop(0).ack_id]))
        (delivery,) = consumer.take(1)
        received.append(delivery)
        holding.append(delivery)
        assert len(holding) <= 3
    assert sorted(d.event_id for d in received) == sorted(ids)
    assert all(d.attempt == 1 for d in received)
    assert consumer.nothing_within(0.2)


def test_a_standing_request_follows_the_consumers_that_come_and_go(
    broker_server: BrokerThread, stub: Stub, readers: list[StreamReader]
) -> None:
    _create(stub, "orders")
    leaving = subscribe(stub, readers, "orders", max_outstanding=5)
    assert wait_for(lambda: _standing(broker_server, "orders"), 10)
    leaving.close()
    assert wait_for(lambda: _engine(broker_server).consumer_count("orders") == 0, 10)
    assert not _standing(broker_server, "orders")
    staying = subscribe(stub, readers, "orders", max_outstanding=5)
    assert wait_for(lambda: _engine(broker_server).consumer_count("orders") == 1, 10)
    assert wait_for(lambda: _standing(broker_server, "orders"), 10)
    stub.BatchPublish(pb.BatchPublishRequest(events=[pb.Event(name="order.placed")] * 4))
    got = staying.take(4)
    # Nothing was leased to the consumer that left: every delivery is a first attempt.
    assert [d.attempt for d in got] == [1, 1, 1, 1]
    assert all(_leased_at_publish(d) for d in got)
