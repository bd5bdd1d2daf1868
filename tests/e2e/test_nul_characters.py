"""A NUL character in any string of a request is refused naming the field, on both databases.

PostgreSQL's text cannot hold a NUL: a name, id or filter carrying one used to
reach the database and fail there (INTERNAL). Each call here must be refused
with INVALID_ARGUMENT naming the field, store nothing, and leave the broker
serving; a nack's error text, which is only shown to people, is kept with the
NUL replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from broker.config import Settings
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.streams import StreamReader, subscribe

Stub = pb_grpc.EventBrokerServiceStub
NUL = "x\x00y"


@pytest.fixture
def broker_settings(any_database_settings: Settings) -> Settings:
    return any_database_settings


CALLS: list[tuple[str, Callable[[Stub], Any]]] = [
    ("event.id", lambda s: s.Publish(pb.PublishRequest(event=pb.Event(name="a.b", id=NUL)))),
    (
        "event.content_type",
        lambda s: s.Publish(
            pb.PublishRequest(event=pb.Event(name="a.b", content_type=NUL, binary_data=b"1"))
        ),
    ),
    (
        "events[1].id",
        lambda s: s.BatchPublish(
            pb.BatchPublishRequest(events=[pb.Event(name="a.b"), pb.Event(name="a.b", id=NUL)])
        ),
    ),
    ("name", lambda s: s.GetSubscription(pb.GetSubscriptionRequest(name=NUL))),
    ("name", lambda s: s.DeleteSubscription(pb.DeleteSubscriptionRequest(name=NUL))),
    ("event_id", lambda s: s.GetEvent(pb.GetEventRequest(event_id=NUL))),
    ("subscription", lambda s: s.ListDeadLetters(pb.ListDeadLettersRequest(subscription=NUL))),
    (
        "name",
        lambda s: s.ListDeadLetters(pb.ListDeadLettersRequest(subscription="held", name=NUL)),
    ),
    (
        "event_ids[0]",
        lambda s: s.RedriveDeadLetters(
            pb.RedriveDeadLettersRequest(subscription="held", event_ids=[NUL])
        ),
    ),
    ("subscription", lambda s: s.Seek(pb.SeekRequest(subscription=NUL))),
    ("subscription", lambda s: s.GetStats(pb.GetStatsRequest(subscription=NUL))),
    (
        "subscription.filter[1]",
        lambda s: s.UpdateSubscription(
            pb.UpdateSubscriptionRequest(
                subscription=pb.Subscription(name="held", filter=["a.*", NUL])
            )
        ),
    ),
]


@pytest.mark.parametrize(
    ("field", "call"), CALLS, ids=[f"{i}-{f}" for i, (f, _) in enumerate(CALLS)]
)
def test_a_nul_in_a_string_is_refused_naming_its_field(
    stub: Stub, field: str, call: Callable[[Stub], Any]
) -> None:
    stub.CreateSubscription(
        pb.CreateSubscriptionRequest(subscription=pb.Subscription(name="held", filter=["a.*"]))
    )
    with pytest.raises(grpc.RpcError) as refused:
        call(stub)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refused.value.details() or "")
    assert "NUL" in (refused.value.details() or "")
    # Nothing stored, and the broker still serves.
    (stats,) = stub.GetStats(pb.GetStatsRequest(subscription="held")).subscriptions
    assert stats.ready == 0
    assert stub.GetSubscription(pb.GetSubscriptionRequest(name="held")).subscription.filter


def test_a_subscribe_with_a_nul_is_refused_naming_its_field(stub: Stub) -> None:
    stream = stub.Subscribe(pb.SubscribeRequest(subscription=NUL, max_outstanding=1))
    with pytest.raises(grpc.RpcError) as refused:
        next(iter(stream))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "subscription" in (refused.value.details() or "")


def test_a_nack_error_with_a_nul_is_kept_readable(stub: Stub, readers: list[StreamReader]) -> None:
    stub.CreateSubscription(
        pb.CreateSubscriptionRequest(subscription=pb.Subscription(name="held", filter=["a.*"]))
    )
    event_id = stub.Publish(pb.PublishRequest(event=pb.Event(name="a.b"))).event_id
    reader = subscribe(stub, readers, "held", max_outstanding=1)
    (delivery,) = reader.take(1)
    nacked = stub.Nack(pb.NackRequest(ack_ids=[delivery.ack_id], error=NUL, terminal=True))
    assert not nacked.not_applied_ack_ids
    (status,) = stub.GetEvent(pb.GetEventRequest(event_id=event_id)).deliveries
    assert status.last_error == "x\ufffdy"
