"""Delivery semantics through the real server and the generated stubs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from broker.config import Settings
from broker.delivery.failure import Failure
from broker.domain import AttemptOutcome
from broker.engine.operations.settle import fail
from broker.storage import open_storage
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.streams import StreamReader, subscribe

Stub = pb_grpc.EventBrokerServiceStub


def create(stub: Stub, name: str, *filters: str, **settings: Any) -> pb.Subscription:
    response = stub.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(name=name, filter=list(filters) or ["user.*"], **settings)
        )
    )
    return response.subscription


def publish(stub: Stub, name: str = "user.joined", data: Any = None, **fields: Any) -> str:
    event = pb.Event(name=name, **fields)
    if data is not None:
        event.binary_data = json.dumps(data).encode()
        event.content_type = "application/json"
    return str(stub.Publish(pb.PublishRequest(event=event)).event_id)


def no_backoff() -> pb.RetryPolicy:
    return pb.RetryPolicy(
        min_backoff=duration_pb2.Duration(seconds=0), max_backoff=duration_pb2.Duration(seconds=0)
    )


def violations(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None
    found: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found |= {v.field: v.description for v in bad.field_violations}
    return found


def reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def test_publish_then_consume_json_data(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "mails")
    reader = subscribe(stub, readers, "mails")
    struct_event = pb.Event(name="User.Joined", headers={"source": "signup"}, priority=3)
    struct_event.data.struct_value.update({"plan": "pro", "seats": 5})
    published = stub.Publish(pb.PublishRequest(event=struct_event))
    assert published.status == pb.PUBLISH_STATUS_CREATED
    (delivery,) = reader.take(1)
    assert delivery.event_id == published.event_id
    assert delivery.name == "user.joined"
    assert dict(delivery.data.struct_value) == {"plan": "pro", "seats": 5}
    assert delivery.headers == {"source": "signup"}
    assert delivery.attempt == 1 and delivery.priority == 3
    assert delivery.subscription == "mails"
    deadline = delivery.ack_deadline.ToDatetime(tzinfo=UTC)
    assert timedelta(seconds=25) < deadline - datetime.now(UTC) <= timedelta(seconds=30)
    assert stub.Ack(pb.AckRequest(ack_ids=[delivery.ack_id])).not_applied_ack_ids == []


def test_json_as_binary_returns_the_same_json(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "raw")
    reader = subscribe(stub, readers, "raw", json_as_binary=True)
    payload = {"nested": {"list": [1, 2.5, "x", None, True]}, "big": 2**40}
    publish(stub, data=payload)
    (delivery,) = reader.take(1)
    assert delivery.content_type == "application/json"
    assert json.loads(delivery.binary_data) == payload


def test_binary_payload_keeps_its_content_type(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "bin")
    reader = subscribe(stub, readers, "bin")
    stub.Publish(
        pb.PublishRequest(
            event=pb.Event(name="user.avatar", binary_data=b"\x89PNG\x00", content_type="image/png")
        )
    )
    (delivery,) = reader.take(1)
    assert delivery.binary_data == b"\x89PNG\x00" and delivery.content_type == "image/png"


def test_fan_out_to_every_matching_subscription(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "one", "user.*")
    create(stub, "all", ">")
    create(stub, "orders", "orders.>")
    create(stub, "exact", "user.joined")
    streams = {n: subscribe(stub, readers, n) for n in ("one", "all", "orders", "exact")}
    user_event = publish(stub, "user.joined")
    order_event = publish(stub, "orders.eu.created")
    assert [d.event_id for d in streams["one"].take(1)] == [user_event]
    assert sorted(d.event_id for d in streams["all"].take(2)) == sorted([user_event, order_event])
    assert [d.event_id for d in streams["orders"].take(1)] == [order_event]
    assert [d.event_id for d in streams["exact"].take(1)] == [user_event]
    assert streams["one"].nothing_within(0.3)


def test_event_published_before_any_consumer_waits(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "later")
    event_id = publish(stub)
    reader = subscribe(stub, readers, "later")
    assert reader.take(1)[0].event_id == event_id


def test_competing_consumers_share_without_overlap(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "work")
    consumers = [subscribe(stub, readers, "work", max_outstanding=5) for _ in range(3)]
    events = pb.BatchPublishRequest(events=[pb.Event(name="user.n") for _ in range(60)])
    published = {r.event_id for r in stub.BatchPublish(events).results}
    seen: list[str] = []
    remaining = 60
    while remaining:
        batch: list[pb.Delivery] = []
        for consumer in consumers:
            while True:
                try:
                    batch.extend(consumer.take(1, timeout=0.2))
                except AssertionError:
                    break
        assert batch, "no consumer received anything"
        stub.Ack(pb.AckRequest(ack_ids=[d.ack_id for d in batch]))
        seen.extend(d.event_id for d in batch)
        remaining = 60 - len(set(seen))
    assert set(seen) == published
    assert len(seen) == len(set(seen))


def test_credit_is_respected(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "slow")
    reader = subscribe(stub, readers, "slow", max_outstanding=3, max_batch_size=2)
    stub.BatchPublish(pb.BatchPublishRequest(events=[pb.Event(name="user.x") for _ in range(10)]))
    first = reader.take(3)
    assert reader.nothing_within(0.5)  # credit of 3 used up
    stub.Ack(pb.AckRequest(ack_ids=[first[0].ack_id]))
    assert len(reader.take(1)) == 1
    assert reader.nothing_within(0.3)
    assert reader.messages >= 2  # 3 deliveries never fit one message of at most 2


def test_many_deliveries_per_stream_message(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "bulk")
    stub.BatchPublish(pb.BatchPublishRequest(events=[pb.Event(name="user.x") for _ in range(200)]))
    reader = subscribe(stub, readers, "bulk", max_outstanding=200, max_batch_size=100)
    assert len(reader.take(200)) == 200
    assert reader.messages == 2


def test_unacked_delivery_comes_back_after_the_deadline(
    stub: Stub, readers: list[StreamReader]
) -> None:
    create(
        stub, "deadline", ack_deadline=duration_pb2.Duration(seconds=1), retry_policy=no_backoff()
    )
    reader = subscribe(stub, readers, "deadline")
    event_id = publish(stub)
    first = reader.take(1)[0]
    second = reader.take(1, timeout=5)[0]
    assert second.event_id == event_id and second.attempt == 2
    late = stub.Ack(pb.AckRequest(ack_ids=[first.ack_id]))
    assert list(late.not_applied_ack_ids) == [first.ack_id]
    assert stub.Ack(pb.AckRequest(ack_ids=[second.ack_id])).not_applied_ack_ids == []


def test_credit_of_a_lease_another_broker_expired_comes_back(
    stub: Stub, readers: list[StreamReader], broker_settings: Settings
) -> None:
    """Another broker's reaper expires a lease held here: the consumer's slot frees."""
    create(stub, "shared", ack_deadline=duration_pb2.Duration(seconds=1), retry_policy=no_backoff())
    reader = subscribe(stub, readers, "shared", max_outstanding=1)
    first_id, second_id = publish(stub), publish(stub)
    (first,) = reader.take(1)
    assert first.event_id == first_id
    # The other broker's clock runs a minute ahead: it expires the lease at once.
    other = open_storage(broker_settings.database_url)
    ahead_us = (int(datetime.now(UTC).timestamp()) + 60) * 1_000_000
    try:
        with other.write() as tx:
            expired = tx.delivery_expired_list(ahead_us, 10)
            assert [str(a) for a in expired] == [first.ack_id]
            expiry = Failure(AttemptOutcome.EXPIRED, immediate=True)
            fail(tx, ahead_us, [first.ack_id], expiry, lambda low, high: low)
    finally:
        other.close()
    # Once the deadline passes here, this broker sees the lease gone and frees the slot.
    (after,) = reader.take(1, timeout=5)
    assert after.ack_id != first.ack_id
    assert after.event_id in (first_id, second_id)


def test_nack_retries_with_attempt_counter_then_dead(
    stub: Stub, readers: list[StreamReader]
) -> None:
    create(stub, "retry", max_attempts=3, retry_policy=no_backoff())
    reader = subscribe(stub, readers, "retry")
    event_id = publish(stub)
    attempts = []
    for _ in range(3):
        delivery = reader.take(1)[0]
        attempts.append(delivery.attempt)
        stub.Nack(pb.NackRequest(ack_ids=[delivery.ack_id], error=f"fail {delivery.attempt}"))
    assert attempts == [1, 2, 3]
    assert reader.nothing_within(0.5)
    info = stub.GetEvent(pb.GetEventRequest(event_id=event_id))
    (status,) = info.deliveries
    assert status.state == pb.DELIVERY_STATE_DEAD
    assert status.dead_reason == pb.DEAD_REASON_ATTEMPTS_EXHAUSTED
    assert status.last_error == "fail 3"
    assert [h.error for h in status.history] == ["fail 1", "fail 2", "fail 3"]
    assert "dead because all 3 attempts failed" in status.reason
    letters = stub.ListDeadLetters(pb.ListDeadLettersRequest(subscription="retry"))
    assert [d.event.event_id for d in letters.dead_letters] == [event_id]


def test_nack_with_delay_and_terminal(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "nacks")
    reader = subscribe(stub, readers, "nacks")
    delayed_id = publish(stub, "user.a")
    dead_id = publish(stub, "user.b")
    by_id = {d.event_id: d for d in reader.take(2)}
    stub.Nack(
        pb.NackRequest(ack_ids=[by_id[delayed_id].ack_id], delay=duration_pb2.Duration(seconds=600))
    )
    stub.Nack(pb.NackRequest(ack_ids=[by_id[dead_id].ack_id], terminal=True, error="bad input"))
    delayed = stub.GetEvent(pb.GetEventRequest(event_id=delayed_id)).deliveries[0]
    assert delayed.state == pb.DELIVERY_STATE_SCHEDULED
    retry_at = delayed.next_time.ToDatetime(tzinfo=UTC)
    assert timedelta(seconds=590) < retry_at - datetime.now(UTC) <= timedelta(seconds=600)
    assert "backing off after attempt 1" in delayed.reason
    dead = stub.GetEvent(pb.GetEventRequest(event_id=dead_id)).deliveries[0]
    assert dead.dead_reason == pb.DEAD_REASON_NACKED_TERMINAL
    assert reader.nothing_within(0.3)


def test_backoff_delays_the_retry(stub: Stub, readers: list[StreamReader]) -> None:
    policy = pb.RetryPolicy(
        min_backoff=duration_pb2.Duration(seconds=1), max_backoff=duration_pb2.Duration(seconds=1)
    )
    create(stub, "backoff", retry_policy=policy)
    reader = subscribe(stub, readers, "backoff")
    publish(stub)
    first = reader.take(1)[0]
    nacked_at = datetime.now(UTC)
    stub.Nack(pb.NackRequest(ack_ids=[first.ack_id]))
    second = reader.take(1, timeout=5)[0]
    assert second.attempt == 2
    assert datetime.now(UTC) - nacked_at >= timedelta(seconds=0.9)


def test_unknown_ack_ids_are_reported_not_failed(stub: Stub) -> None:
    for call, request in [
        (stub.Ack, pb.AckRequest(ack_ids=["nope", "12-3"])),
        (stub.Nack, pb.NackRequest(ack_ids=["nope", "12-3"])),
        (
            stub.ExtendAckDeadline,
            pb.ExtendAckDeadlineRequest(
                ack_ids=["nope", "12-3"], extension=duration_pb2.Duration(seconds=60)
            ),
        ),
    ]:
        assert list(call(request).not_applied_ack_ids) == ["nope", "12-3"]  # type: ignore[operator]


def test_extend_keeps_the_lease(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "extend", ack_deadline=duration_pb2.Duration(seconds=1), retry_policy=no_backoff())
    reader = subscribe(stub, readers, "extend")
    publish(stub)
    (delivery,) = reader.take(1)
    extended = stub.ExtendAckDeadline(
        pb.ExtendAckDeadlineRequest(
            ack_ids=[delivery.ack_id], extension=duration_pb2.Duration(seconds=60)
        )
    )
    assert list(extended.not_applied_ack_ids) == []
    assert reader.nothing_within(2.0)  # would have come back after 1 s without the extension
    assert stub.Ack(pb.AckRequest(ack_ids=[delivery.ack_id])).not_applied_ack_ids == []


def test_disconnect_gives_deliveries_back_at_once(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "leave", retry_policy=no_backoff())
    first_consumer = subscribe(stub, readers, "leave", max_outstanding=5)
    stub.BatchPublish(pb.BatchPublishRequest(events=[pb.Event(name="user.x") for _ in range(3)]))
    held = first_consumer.take(3)
    first_consumer.close()
    second_consumer = subscribe(stub, readers, "leave", max_outstanding=5)
    again = second_consumer.take(3, timeout=10)  # far sooner than the 30 s deadline
    assert {d.event_id for d in again} == {d.event_id for d in held}
    assert {d.attempt for d in again} == {2}


def test_delay_and_deliver_at(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "later")
    reader = subscribe(stub, readers, "later")
    delayed = pb.Event(name="user.later", delay=duration_pb2.Duration(seconds=1))
    delayed_id = stub.Publish(pb.PublishRequest(event=delayed)).event_id
    far = pb.Event(name="user.far")
    far.deliver_at.FromDatetime(datetime.now(UTC) + timedelta(days=300))
    far_id = stub.Publish(pb.PublishRequest(event=far)).event_id
    past = pb.Event(name="user.past")
    past.deliver_at.FromDatetime(datetime.now(UTC) - timedelta(days=3))
    past_id = stub.Publish(pb.PublishRequest(event=past)).event_id
    assert reader.take(1)[0].event_id == past_id  # a time in the past means now
    status = stub.GetEvent(pb.GetEventRequest(event_id=delayed_id)).deliveries[0]
    assert status.state in (pb.DELIVERY_STATE_SCHEDULED, pb.DELIVERY_STATE_READY)
    arrived = reader.take(1, timeout=5)[0]
    assert arrived.event_id == delayed_id and arrived.delay.seconds == 1
    far_status = stub.GetEvent(pb.GetEventRequest(event_id=far_id)).deliveries[0]
    assert far_status.state == pb.DELIVERY_STATE_SCHEDULED
    assert far_status.reason.startswith("scheduled until")


def test_priority_orders_ready_deliveries(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "prio")
    events = [pb.Event(name="user.p", priority=p) for p in (0, 50, -50, 10, 50)]
    ids = [r.event_id for r in stub.BatchPublish(pb.BatchPublishRequest(events=events)).results]
    reader = subscribe(stub, readers, "prio", max_outstanding=10)
    order = [d.event_id for d in reader.take(5)]
    assert order == [ids[1], ids[4], ids[3], ids[0], ids[2]]


def test_dedup_returns_the_first_event(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "dedup")
    reader = subscribe(stub, readers, "dedup")
    first = stub.Publish(pb.PublishRequest(event=pb.Event(name="user.x", id="order-7")))
    second = stub.Publish(pb.PublishRequest(event=pb.Event(name="user.x", id="order-7")))
    assert first.status == pb.PUBLISH_STATUS_CREATED
    assert second.status == pb.PUBLISH_STATUS_DUPLICATE
    assert second.event_id == first.event_id
    batch = stub.BatchPublish(
        pb.BatchPublishRequest(
            events=[pb.Event(name="user.x", id="order-7"), pb.Event(name="user.x", id="order-8")]
        )
    )
    assert [r.status for r in batch.results] == [
        pb.PUBLISH_STATUS_DUPLICATE,
        pb.PUBLISH_STATUS_CREATED,
    ]
    delivered = [d.event_id for d in reader.take(2)]
    assert delivered == [first.event_id, batch.results[1].event_id]
    assert reader.nothing_within(0.3)


def test_unmatched_event_is_stored(stub: Stub) -> None:
    event_id = publish(stub, "nobody.listens")
    info = stub.GetEvent(pb.GetEventRequest(event_id=event_id))
    assert info.event.event.name == "nobody.listens" and list(info.deliveries) == []


def _bad(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return caught.value


@pytest.mark.parametrize(
    ("event", "field", "words"),
    [
        (pb.Event(name=""), "event.name", "1 to 255"),
        (pb.Event(name="x" * 256), "event.name", "1 to 255"),
        (pb.Event(name="bad name!"), "event.name", "letters, digits"),
        (pb.Event(name="a", priority=51), "event.priority", "between -50 and 50"),
        (pb.Event(name="a", priority=-51), "event.priority", "between -50 and 50"),
        (pb.Event(name="a", id="i" * 256), "event.id", "at most 255"),
        (pb.Event(name="a", ordering_key="k" * 256), "event.ordering_key", "at most 255"),
        (pb.Event(name="a", delay=duration_pb2.Duration(seconds=-1)), "event.delay", "negative"),
        (
            pb.Event(name="a", delay=duration_pb2.Duration(seconds=367 * 86400)),
            "event.delay",
            "one year",
        ),
        (
            pb.Event(name="a", binary_data=b"{not json", content_type="application/json"),
            "event.binary_data",
            "not JSON",
        ),
        (pb.Event(name="a", headers={f"h{i}": "v" for i in range(65)}), "event.headers", "64"),
        (
            pb.Event(name="a", binary_data=b"x", content_type="t/" + "x" * 300),
            "event.content_type",
            "at most 255",
        ),
    ],
)
def test_bad_events_are_invalid_argument_naming_the_field(
    stub: Stub, event: pb.Event, field: str, words: str
) -> None:
    error = _bad(stub.Publish, pb.PublishRequest(event=event))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in violations(error)[field]
    assert field in (error.details() or "")
    assert stub.GetStats(pb.GetStatsRequest()).events == 0


def test_deliver_at_more_than_a_year_ahead_is_rejected(stub: Stub) -> None:
    event = pb.Event(name="a")
    event.deliver_at.FromDatetime(datetime.now(UTC) + timedelta(days=400))
    error = _bad(stub.Publish, pb.PublishRequest(event=event))
    assert "one year" in violations(error)["event.deliver_at"]


def test_nan_in_data_is_rejected(stub: Stub) -> None:
    event = pb.Event(name="a")
    event.data.number_value = float("nan")
    error = _bad(stub.Publish, pb.PublishRequest(event=event))
    assert "NaN" in violations(error)["event.data"]


def test_event_over_the_size_limit_is_resource_exhausted(stub: Stub) -> None:
    event = pb.Event(name="big", binary_data=b"x" * (256 * 1024))
    error = _bad(stub.Publish, pb.PublishRequest(event=event))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "262144" in violations(error)["event"]
    assert reason(error) == "SIZE_LIMIT_EXCEEDED"


def test_batch_limits(stub: Stub) -> None:
    too_many = pb.BatchPublishRequest(events=[pb.Event(name="a") for _ in range(1001)])
    error = _bad(stub.BatchPublish, too_many)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit is 1000" in violations(error)["events"]
    too_big = pb.BatchPublishRequest(
        events=[pb.Event(name="a", binary_data=b"x" * 200_000) for _ in range(21)]
    )
    error = _bad(stub.BatchPublish, too_big)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "4194304" in violations(error)["events"]
    empty = _bad(stub.BatchPublish, pb.BatchPublishRequest())
    assert "at least one" in violations(empty)["events"]


def test_a_bad_event_fails_the_whole_batch(stub: Stub) -> None:
    request = pb.BatchPublishRequest(
        events=[pb.Event(name="good"), pb.Event(name="bad name"), pb.Event(name="a", priority=99)]
    )
    error = _bad(stub.BatchPublish, request)
    assert set(violations(error)) == {"events[1].name", "events[2].priority"}
    assert stub.GetStats(pb.GetStatsRequest()).events == 0


def test_bad_subscriptions(stub: Stub) -> None:
    cases = [
        (pb.Subscription(name="s", filter=[]), "subscription.filter"),
        (pb.Subscription(name="s", filter=["a.>.b"]), "subscription.filter[0]"),
        (pb.Subscription(name="", filter=["a"]), "subscription.name"),
        (
            pb.Subscription(name="s", filter=["a"], ack_deadline=duration_pb2.Duration(seconds=0)),
            "subscription.ack_deadline",
        ),
        (pb.Subscription(name="s", filter=["a"], max_attempts=1001), "subscription.max_attempts"),
    ]
    for subscription, field in cases:
        request = pb.CreateSubscriptionRequest(subscription=subscription)
        error = _bad(stub.CreateSubscription, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violations(error)
    create(stub, "dup")
    error = _bad(
        stub.CreateSubscription,
        pb.CreateSubscriptionRequest(subscription=pb.Subscription(name="dup", filter=["a"])),
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(error) == "SUBSCRIPTION_ALREADY_EXISTS"


def test_subscription_management(stub: Stub, readers: list[StreamReader]) -> None:
    for index in range(5):
        create(stub, f"sub-{index}")
    first = stub.ListSubscriptions(pb.ListSubscriptionsRequest(page_size=3))
    second = stub.ListSubscriptions(
        pb.ListSubscriptionsRequest(page_size=3, page_token=first.next_page_token)
    )
    names = [s.name for s in [*first.subscriptions, *second.subscriptions]]
    assert names == [f"sub-{i}" for i in range(5)] and second.next_page_token == ""
    got = stub.GetSubscription(pb.GetSubscriptionRequest(name="sub-1")).subscription
    assert got.max_attempts == 20 and got.ack_deadline.seconds == 30
    updated = stub.UpdateSubscription(
        pb.UpdateSubscriptionRequest(
            subscription=pb.Subscription(name="sub-1", filter=["orders.>"], max_attempts=5),
            update_mask=["filter", "max_attempts"],
        )
    ).subscription
    assert list(updated.filter) == ["orders.>"] and updated.max_attempts == 5
    assert updated.ack_deadline.seconds == 30
    reader = subscribe(stub, readers, "sub-1")
    publish(stub, "orders.new")
    assert reader.take(1)[0].name == "orders.new"
    stub.DeleteSubscription(pb.DeleteSubscriptionRequest(name="sub-1"))
    assert reader.ended.wait(5)
    assert reader.error is not None and reader.error.code() == grpc.StatusCode.NOT_FOUND
    missing = _bad(stub.GetSubscription, pb.GetSubscriptionRequest(name="sub-1"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert reason(missing) == "SUBSCRIPTION_NOT_FOUND"


def test_bad_subscribe_requests(stub: Stub) -> None:
    create(stub, "s")
    for request, field in [
        (pb.SubscribeRequest(subscription="s", consumer_name="c" * 201), "consumer_name"),
        (pb.SubscribeRequest(subscription="s", max_outstanding=10_001), "max_outstanding"),
        (pb.SubscribeRequest(subscription="s", max_batch_size=1001), "max_batch_size"),
        (pb.SubscribeRequest(subscription="s", filter=["a"]), "filter"),
        (pb.SubscribeRequest(filter=["a.>.b"]), "filter[0]"),
        (pb.SubscribeRequest(), "subscription"),
    ]:
        reader = StreamReader(stub, request)
        assert reader.ended.wait(5)
        assert reader.error is not None
        assert reader.error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violations(reader.error)


def test_subscribe_to_unknown_subscription_is_not_found(stub: Stub) -> None:
    reader = StreamReader(stub, pb.SubscribeRequest(subscription="ghost"))
    assert reader.ended.wait(5)
    assert reader.error is not None and reader.error.code() == grpc.StatusCode.NOT_FOUND


def test_ephemeral_tail_sees_new_events_and_leaves_nothing(
    stub: Stub, readers: list[StreamReader]
) -> None:
    tail = StreamReader(stub, pb.SubscribeRequest(filter=["user.>"]))
    readers.append(tail)
    deadline_ids: list[str] = []
    received: list[pb.Delivery] = []
    for _ in range(50):  # the tail attaches asynchronously: publish until it sees one
        deadline_ids.append(publish(stub, "user.signed.up", {"n": 1}))
        if not tail.nothing_within(0.1):
            received.append(pb.Delivery())
            break
    assert received, "the tail saw nothing"
    assert publish(stub, "other.thing")
    later = publish(stub, "user.x")
    seen: list[str] = []
    while later not in seen:
        seen.extend(d.event_id for d in tail.take(1))
    assert all(eid in deadline_ids or eid == later for eid in seen)
    stats = stub.GetStats(pb.GetStatsRequest())
    assert list(stats.subscriptions) == []


def test_stats_count_each_state(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "stats", retry_policy=no_backoff())
    stub.BatchPublish(pb.BatchPublishRequest(events=[pb.Event(name="user.x") for _ in range(4)]))
    later = pb.Event(name="user.x", delay=duration_pb2.Duration(seconds=3600))
    stub.Publish(pb.PublishRequest(event=later))
    reader = subscribe(stub, readers, "stats", max_outstanding=3)
    a, b, _c = reader.take(3)
    stub.Ack(pb.AckRequest(ack_ids=[a.ack_id]))
    stub.Nack(pb.NackRequest(ack_ids=[b.ack_id], terminal=True))
    reader.take(1)  # the fourth, once the ack and the nack returned credit
    (stats,) = stub.GetStats(pb.GetStatsRequest(subscription="stats")).subscriptions
    assert (stats.scheduled, stats.ready, stats.in_flight, stats.acked, stats.dead) == (
        1,
        0,
        2,
        1,
        1,
    )
    assert stats.consumers == 1 and stats.delivery_rate > 0 and stats.ack_rate > 0
