"""Limits a bad client meets on the gRPC server itself: message size and keepalive."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest

from broker.config import Settings
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.conftest import TEST_SETTINGS, sqlite_url
from tests.e2e.streams import StreamReader

WAIT_S = 15.0


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    """These limits are the gRPC server's, not the database's: SQLite only."""
    return dataclasses.replace(TEST_SETTINGS, database_url=sqlite_url(tmp_path))


def test_a_message_over_the_size_limit_is_refused_naming_it(
    stub: pb_grpc.EventBrokerServiceStub, broker_settings: Settings
) -> None:
    limit = broker_settings.grpc_max_message_bytes
    huge = pb.BatchPublishRequest(
        events=[pb.Event(name="big.x", binary_data=b"x" * (1024 * 1024)) for _ in range(6)]
    )
    assert huge.ByteSize() > limit
    with pytest.raises(grpc.RpcError) as refused:
        stub.BatchPublish(huge, timeout=WAIT_S)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(limit) in (refused.value.details() or "")
    assert stub.GetStats(pb.GetStatsRequest(), timeout=WAIT_S).events == 0


def test_a_client_pinging_too_often_is_sent_away(broker_target: str) -> None:
    options = [
        ("grpc.keepalive_time_ms", 200),
        ("grpc.keepalive_timeout_ms", 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    with grpc.insecure_channel(broker_target, options=options) as channel:
        stub = pb_grpc.EventBrokerServiceStub(channel)
        stub.CreateSubscription(
            pb.CreateSubscriptionRequest(subscription=pb.Subscription(name="idle", filter=["a.b"]))
        )
        reader = StreamReader(stub, pb.SubscribeRequest(subscription="idle"))
        try:
            assert reader.ended.wait(WAIT_S), "the broker let a client ping every 200 ms"
            assert reader.error is not None
            assert reader.error.code() == grpc.StatusCode.UNAVAILABLE
            assert "ping" in (reader.error.details() or "").lower()
        finally:
            reader.close()
