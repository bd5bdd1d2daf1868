"""Acked and dead deliveries, and then their events, go away after retention."""

from __future__ import annotations

import dataclasses
import time

import grpc
import pytest
from google.protobuf import duration_pb2

from broker.config import Settings
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.streams import StreamReader


@pytest.fixture
def broker_settings(any_database_settings: Settings) -> Settings:
    """Short event retention, so a test sees rows deleted within seconds."""
    return dataclasses.replace(any_database_settings, event_retention_s=0.5)


def gone(stub: pb_grpc.EventBrokerServiceStub, event_id: str) -> bool:
    try:
        stub.GetEvent(pb.GetEventRequest(event_id=event_id))
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return True
    return False


def test_rows_go_away_after_retention(stub: pb_grpc.EventBrokerServiceStub) -> None:
    sub = pb.Subscription(name="short", filter=["x.*"], retention=duration_pb2.Duration(seconds=1))
    stub.CreateSubscription(pb.CreateSubscriptionRequest(subscription=sub))
    kept = pb.Subscription(name="pending", filter=["y.*"])
    stub.CreateSubscription(pb.CreateSubscriptionRequest(subscription=kept))
    reader = StreamReader(stub, pb.SubscribeRequest(subscription="short", max_outstanding=100))
    try:
        results = stub.BatchPublish(
            pb.BatchPublishRequest(events=[pb.Event(name="x.done") for _ in range(50)])
        ).results
        waiting = stub.Publish(pb.PublishRequest(event=pb.Event(name="y.waiting"))).event_id
        unmatched = stub.Publish(pb.PublishRequest(event=pb.Event(name="z.nobody"))).event_id
        stub.Ack(pb.AckRequest(ack_ids=[d.ack_id for d in reader.take(50)]))
    finally:
        reader.close()
    (counts,) = stub.GetStats(pb.GetStatsRequest(subscription="short")).subscriptions
    assert counts.acked == 50
    deadline = time.monotonic() + 15
    while not (all(gone(stub, r.event_id) for r in results) and gone(stub, unmatched)):
        assert time.monotonic() < deadline, "acked rows were not deleted after retention"
        time.sleep(0.1)
    (counts,) = stub.GetStats(pb.GetStatsRequest(subscription="short")).subscriptions
    assert counts.acked == 0
    assert not gone(stub, waiting)  # a delivery still waiting keeps its event
