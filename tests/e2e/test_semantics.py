"""Ordered keys, concurrency limits, start positions, seek, dead letters, timing, reasons."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.streams import StreamReader, subscribe

Stub = pb_grpc.EventBrokerServiceStub
ZERO = duration_pb2.Duration(seconds=0)


def create(stub: Stub, name: str, *filters: str, **settings: Any) -> pb.Subscription:
    subscription = pb.Subscription(name=name, filter=list(filters) or ["task.>"], **settings)
    return stub.CreateSubscription(
        pb.CreateSubscriptionRequest(subscription=subscription)
    ).subscription


def publish_many(stub: Stub, events: list[pb.Event]) -> list[str]:
    results = stub.BatchPublish(pb.BatchPublishRequest(events=events)).results
    return [r.event_id for r in results]


def status(stub: Stub, event_id: str) -> pb.DeliveryStatus:
    (delivery,) = stub.GetEvent(pb.GetEventRequest(event_id=event_id)).deliveries
    return delivery


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    """Poll a condition of the broker's state (bounded); fail if it never holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def take_any(readers: list[StreamReader], timeout: float = 10.0) -> list[pb.Delivery]:
    """Whatever any of the readers has, waiting up to `timeout` for the first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [d for r in readers for d in r.take_available(0.02)]
        if got:
            return got
    raise AssertionError("no reader received anything")


def test_burst_of_30_at_most_6_at_once_fifo_all_completed(
    stub: Stub, readers: list[StreamReader]
) -> None:
    """The seed demo: a burst of 30 tasks, at most 6 processing at once, FIFO, all done."""
    create(stub, "images", max_in_flight=6)
    consumers = [subscribe(stub, readers, "images", max_outstanding=10) for _ in range(3)]
    ids = publish_many(stub, [pb.Event(name="task.image", data=None) for _ in range(30)])
    order = {event_id: index for index, event_id in enumerate(ids)}
    processing: list[pb.Delivery] = []
    started: list[pb.Delivery] = []
    completed: list[str] = []
    checked_full = False
    while len(completed) < 30:
        if len(started) < 30:
            arrived = take_any(consumers)
            processing += arrived
            started += arrived
        assert len(processing) <= 6, f"{len(processing)} processing at once"
        if len(processing) == 6 and not checked_full:
            assert all(c.nothing_within(0.2) for c in consumers)  # the limit holds
            checked_full = True
        done, processing = processing[:2], processing[2:]
        stub.Ack(pb.AckRequest(ack_ids=[d.ack_id for d in done]))
        completed += [d.event_id for d in done]
    assert checked_full
    assert sorted(completed, key=order.__getitem__) == ids
    # FIFO start: a task's lease never began after a later task's lease.
    lease_times = [
        d.ack_deadline.ToDatetime() for d in sorted(started, key=lambda d: order[d.event_id])
    ]
    assert lease_times == sorted(lease_times)


def test_a_concurrency_limit_is_shared_fairly_between_consumers(
    stub: Stub, readers: list[StreamReader]
) -> None:
    """Two consumers with credit to spare share a limit of 6 instead of one taking all."""
    create(stub, "shared", max_in_flight=6)
    consumers = [subscribe(stub, readers, "shared", max_outstanding=10) for _ in range(2)]
    wait_for(lambda: _consumers(stub, "shared") == 2)
    publish_many(stub, [pb.Event(name="task.share") for _ in range(30)])
    received = [0, 0]
    holding: list[pb.Delivery] = []
    while sum(received) < 30:
        for index, consumer in enumerate(consumers):
            got = consumer.take_available(0.02)
            received[index] += len(got)
            holding += got
        assert len(holding) <= 6, f"{len(holding)} in flight at once"
        if holding:  # one at a time: each ack frees one slot to be shared
            stub.Ack(pb.AckRequest(ack_ids=[holding.pop(0).ack_id]))
    assert min(received) >= 9, f"deliveries per consumer: {received}"


def _consumers(stub: Stub, subscription: str) -> int:
    stats = stub.GetStats(pb.GetStatsRequest(subscription=subscription)).subscriptions
    return stats[0].consumers if stats else 0


def test_ordered_key_waits_for_its_predecessor(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "orders", ordered=True)
    reader = subscribe(stub, readers, "orders", max_outstanding=10)
    k1, k2, j1, k3 = publish_many(
        stub,
        [
            pb.Event(name="task.a", ordering_key="k"),
            pb.Event(name="task.a", ordering_key="k", priority=50),
            pb.Event(name="task.a", ordering_key="j"),
            pb.Event(name="task.a", ordering_key="k"),
        ],
    )
    first = {d.event_id: d for d in reader.take(2)}
    assert set(first) == {k1, j1}  # other keys keep flowing, k waits
    assert reader.nothing_within(0.3)
    blocked = status(stub, k2)
    assert blocked.state == pb.DELIVERY_STATE_BLOCKED
    assert "ordering key 'k'" in blocked.reason
    stub.Ack(pb.AckRequest(ack_ids=[first[k1].ack_id]))
    (second,) = reader.take(1)
    assert second.event_id == k2
    stub.Nack(pb.NackRequest(ack_ids=[second.ack_id], terminal=True))  # dead frees the key too
    assert reader.take(1)[0].event_id == k3


def test_concurrency_limit_reason_and_live_update(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "limited", max_in_flight=1)
    reader = subscribe(stub, readers, "limited", max_outstanding=10)
    first_id, second_id = publish_many(stub, [pb.Event(name="task.x"), pb.Event(name="task.x")])
    (first,) = reader.take(1)
    assert reader.nothing_within(0.3)
    waiting = status(stub, second_id if first.event_id == first_id else first_id)
    assert "concurrency limit (1 of 1 in flight)" in waiting.reason
    stub.UpdateSubscription(
        pb.UpdateSubscriptionRequest(
            subscription=pb.Subscription(name="limited", max_in_flight=0),
            update_mask=["max_in_flight"],
        )
    )
    assert len(reader.take(1)) == 1  # the new limit applies without a restart


def test_start_from_the_beginning_and_from_a_time(stub: Stub, readers: list[StreamReader]) -> None:
    early = publish_many(stub, [pb.Event(name="task.old")])[0]
    wait_for(lambda: datetime.now(UTC) > _publish_time(stub, early) + timedelta(milliseconds=50))
    cut = timestamp_pb2.Timestamp()
    cut.FromDatetime(datetime.now(UTC))
    late = publish_many(stub, [pb.Event(name="task.new")])[0]
    create(stub, "all", start_position=pb.START_POSITION_BEGINNING)
    create(stub, "since", start_position=pb.START_POSITION_TIME, start_time=cut)
    create(stub, "fresh")
    everything = subscribe(stub, readers, "all", max_outstanding=10)
    since = subscribe(stub, readers, "since", max_outstanding=10)
    fresh = subscribe(stub, readers, "fresh", max_outstanding=10)
    assert sorted(d.event_id for d in everything.take(2)) == sorted([early, late])
    assert [d.event_id for d in since.take(1)] == [late]
    assert fresh.nothing_within(0.3)


def _publish_time(stub: Stub, event_id: str) -> datetime:
    event = stub.GetEvent(pb.GetEventRequest(event_id=event_id)).event
    return event.publish_time.ToDatetime(tzinfo=UTC)


def test_seek_back_replays_and_forward_skips(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "replay")
    start = timestamp_pb2.Timestamp()
    start.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
    reader = subscribe(stub, readers, "replay", max_outstanding=10)
    ids = publish_many(stub, [pb.Event(name="task.r") for _ in range(3)])
    stub.Ack(pb.AckRequest(ack_ids=[d.ack_id for d in reader.take(3)]))
    stub.Seek(pb.SeekRequest(subscription="replay", time=start))
    again = reader.take(3)
    assert sorted(d.event_id for d in again) == sorted(ids)
    assert {d.attempt for d in again} == {1}
    reader.close()
    backlog = publish_many(stub, [pb.Event(name="task.r") for _ in range(2)])
    future = timestamp_pb2.Timestamp()
    future.FromDatetime(datetime.now(UTC) + timedelta(seconds=1))
    stub.Seek(pb.SeekRequest(subscription="replay", time=future))
    assert all(status(stub, e).state == pb.DELIVERY_STATE_ACKED for e in backlog)


def test_dead_letters_list_filter_page_and_redrive(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "dlq", max_attempts=1)
    reader = subscribe(stub, readers, "dlq", max_outstanding=20)
    a_ids = publish_many(stub, [pb.Event(name="task.a") for _ in range(3)])
    b_ids = publish_many(stub, [pb.Event(name="task.b") for _ in range(2)])
    deliveries = reader.take(5)
    terminal = [d.ack_id for d in deliveries if d.event_id == b_ids[0]]
    failed = [d.ack_id for d in deliveries if d.event_id != b_ids[0]]
    stub.Nack(pb.NackRequest(ack_ids=terminal, terminal=True, error="poison"))
    stub.Nack(pb.NackRequest(ack_ids=failed, error="downstream down"))
    page = stub.ListDeadLetters(pb.ListDeadLettersRequest(subscription="dlq", page_size=3))
    rest = stub.ListDeadLetters(
        pb.ListDeadLettersRequest(subscription="dlq", page_token=page.next_page_token)
    )
    listed = [d.event.event_id for d in [*page.dead_letters, *rest.dead_letters]]
    assert sorted(listed) == sorted(a_ids + b_ids) and rest.next_page_token == ""
    named = stub.ListDeadLetters(pb.ListDeadLettersRequest(subscription="dlq", name="task.b"))
    assert sorted(d.event.event_id for d in named.dead_letters) == sorted(b_ids)
    poisoned = stub.ListDeadLetters(
        pb.ListDeadLettersRequest(subscription="dlq", reason=pb.DEAD_REASON_NACKED_TERMINAL)
    )
    (poison,) = poisoned.dead_letters
    assert poison.delivery.last_error == "poison"
    assert [h.error for h in poison.delivery.history] == ["poison"]
    one = stub.RedriveDeadLetters(
        pb.RedriveDeadLettersRequest(subscription="dlq", event_ids=[b_ids[0]])
    )
    assert one.redriven_count == 1
    (back,) = reader.take(1)
    assert back.event_id == b_ids[0] and back.attempt == 1
    stub.Ack(pb.AckRequest(ack_ids=[back.ack_id]))
    everything = stub.RedriveDeadLetters(pb.RedriveDeadLettersRequest(subscription="dlq", all=True))
    assert everything.redriven_count == 4
    assert sorted(d.event_id for d in reader.take(4)) == sorted(a_ids + b_ids[1:])
    with pytest.raises(grpc.RpcError) as caught:
        stub.RedriveDeadLetters(pb.RedriveDeadLettersRequest(subscription="dlq"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_retry_table_sets_the_delay(stub: Stub, readers: list[StreamReader]) -> None:
    table = pb.RetryPolicy(delays=[duration_pb2.Duration(seconds=100)])
    create(stub, "table", retry_policy=table)
    reader = subscribe(stub, readers, "table")
    (event_id,) = publish_many(stub, [pb.Event(name="task.t")])
    (delivery,) = reader.take(1)
    stub.Nack(pb.NackRequest(ack_ids=[delivery.ack_id]))
    retry = status(stub, event_id).next_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(seconds=95) < retry <= timedelta(seconds=100)


def test_expired_lease_uses_the_same_retry_policy(stub: Stub, readers: list[StreamReader]) -> None:
    table = pb.RetryPolicy(delays=[duration_pb2.Duration(seconds=100)])
    create(stub, "expiry", retry_policy=table, ack_deadline=duration_pb2.Duration(seconds=1))
    reader = subscribe(stub, readers, "expiry")
    (event_id,) = publish_many(stub, [pb.Event(name="task.t")])
    reader.take(1)
    wait_for(lambda: status(stub, event_id).state == pb.DELIVERY_STATE_SCHEDULED)
    retry = status(stub, event_id).next_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(seconds=90) < retry <= timedelta(seconds=100)


def test_events_older_than_the_maximum_age_are_dead_lettered(stub: Stub) -> None:
    create(stub, "aging", max_age=duration_pb2.Duration(seconds=1))
    (event_id,) = publish_many(
        stub, [pb.Event(name="task.late", delay=duration_pb2.Duration(seconds=60))]
    )
    wait_for(lambda: status(stub, event_id).state == pb.DELIVERY_STATE_DEAD)
    dead = status(stub, event_id)
    assert dead.dead_reason == pb.DEAD_REASON_EXPIRED
    assert "older than the maximum age" in dead.reason
