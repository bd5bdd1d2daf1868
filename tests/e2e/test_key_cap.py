"""The cap per key end to end: the real broker, real streams, SQLite and PostgreSQL.

Consumers have plenty of credit; what holds deliveries back is the cap. Tests
hold deliveries (no ack) and check what arrived, and ask GetEvent where the
rest stand: a delivery past its key's cap is BLOCKED in the database, not
merely late.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from eventbroker import Client, InvalidArgument, KeyWait
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.cli import BrokerCli
from tests.e2e.streams import StreamReader, subscribe
from tests.e2e.test_delivery import create, no_backoff, violations
from tests.e2e.test_scale_out import NO_POLLING, Pair

Stub = pb_grpc.EventBrokerServiceStub
#: How long a test waits for deliveries it expects before it fails.
DEADLINE_S = 20.0


def publish_keyed(stub: Stub, keys: list[str]) -> list[str]:
    """One event per key, in this order, in one batch; their ids."""
    events = [pb.Event(name="user.x", ordering_key=key) for key in keys]
    return [r.event_id for r in stub.BatchPublish(pb.BatchPublishRequest(events=events)).results]


def status(stub: Stub, event_id: str, subscription: str) -> pb.DeliveryStatus:
    response = stub.GetEvent(pb.GetEventRequest(event_id=event_id))
    (found,) = [d for d in response.deliveries if d.subscription == subscription]
    return found


def take_until(
    streams: list[StreamReader], done: Any, on_delivery: Any, timeout: float = DEADLINE_S
) -> None:
    """Feed deliveries from every stream to `on_delivery` until `done()` (or fail)."""
    end = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < end, "the expected deliveries did not come in time"
        for stream in streams:
            for delivery in stream.take_available(0.05):
                on_delivery(delivery)


def test_a_key_at_its_cap_waits_while_other_keys_flow(
    stub: Stub, readers: list[StreamReader]
) -> None:
    create(stub, "capped", max_in_flight_per_key=2, retry_policy=no_backoff())
    streams = [subscribe(stub, readers, "capped", max_outstanding=50) for _ in range(2)]
    ids = publish_keyed(stub, ["A", "B"] * 6)
    key_of = dict(zip(ids, ["A", "B"] * 6, strict=True))
    a_ids = [i for i in ids if key_of[i] == "A"]
    held_a: dict[str, str] = {}  # event id -> ack id
    b_done: list[str] = []

    def on_delivery(delivery: pb.Delivery) -> None:
        if key_of[delivery.event_id] == "B":
            stub.Ack(pb.AckRequest(ack_ids=[delivery.ack_id]))  # B keeps flowing
            b_done.append(delivery.event_id)
        else:
            held_a[delivery.event_id] = delivery.ack_id
            assert len(held_a) <= 2, f"{len(held_a)} of A in flight with a cap of 2"

    take_until(streams, lambda: len(b_done) == 6 and len(held_a) == 2, on_delivery)
    assert sorted(held_a) == sorted(a_ids[:2])
    states = Counter(status(stub, i, "capped").state for i in a_ids)
    assert states == {pb.DELIVERY_STATE_IN_FLIGHT: 2, pb.DELIVERY_STATE_BLOCKED: 4}
    waiting = status(stub, a_ids[2], "capped")
    assert waiting.key == "A"
    assert (waiting.key_wait.key, waiting.key_wait.in_flight, waiting.key_wait.limit) == (
        "A",
        2,
        2,
    )
    assert waiting.reason.startswith("waiting: 2 of 'A' in flight (max_in_flight_per_key 2)")
    assert status(stub, a_ids[0], "capped").key_wait.limit == 0  # in flight: nothing to wait for
    # Each ack of an A lets exactly the next A through, in publish order.
    for expected in a_ids[2:]:
        first = next(iter(held_a))
        stub.Ack(pb.AckRequest(ack_ids=[held_a.pop(first)]))
        take_until(streams, lambda: len(held_a) == 2, on_delivery)
        assert expected in held_a
    stub.Ack(pb.AckRequest(ack_ids=list(held_a.values())))
    assert {status(stub, i, "capped").state for i in ids} == {pb.DELIVERY_STATE_ACKED}


def test_nacks_dead_letters_and_expired_leases_give_the_slot_back(
    stub: Stub, readers: list[StreamReader]
) -> None:
    create(
        stub,
        "one-each",
        max_in_flight_per_key=1,
        retry_policy=no_backoff(),
        ack_deadline=duration_pb2.Duration(seconds=1),
    )
    reader = subscribe(stub, readers, "one-each", max_outstanding=10)
    k1, k2, k3, k4 = publish_keyed(stub, ["k", "k", "k", "k"])
    (first,) = reader.take(1)
    assert first.event_id == k1
    assert status(stub, k2, "one-each").state == pb.DELIVERY_STATE_BLOCKED
    # A nack without a delay: its retry is ready at once and keeps the key's one slot.
    stub.Nack(pb.NackRequest(ack_ids=[first.ack_id]))
    (retry,) = reader.take(1)
    assert (retry.event_id, retry.attempt) == (k1, 2)
    assert status(stub, k2, "one-each").state == pb.DELIVERY_STATE_BLOCKED
    # Dead, it frees the slot for the next one.
    stub.Nack(pb.NackRequest(ack_ids=[retry.ack_id], terminal=True))
    (second,) = reader.take(1)
    assert second.event_id == k2
    # Not acked in time: the lease expires and the delivery comes back at once, in the slot.
    (expired,) = reader.take(1, timeout=10)
    assert (expired.event_id, expired.attempt) == (k2, 2)
    assert status(stub, k3, "one-each").state == pb.DELIVERY_STATE_BLOCKED
    stub.Ack(pb.AckRequest(ack_ids=[expired.ack_id]))
    (third,) = reader.take(1)
    assert third.event_id == k3
    # Nacked with a delay, it backs off without the slot: the next one goes meanwhile.
    stub.Nack(pb.NackRequest(ack_ids=[third.ack_id], delay=duration_pb2.Duration(seconds=3600)))
    (fourth,) = reader.take(1)
    assert fourth.event_id == k4
    assert status(stub, k3, "one-each").state == pb.DELIVERY_STATE_SCHEDULED
    stub.Ack(pb.AckRequest(ack_ids=[fourth.ack_id]))


def test_the_key_can_come_from_a_header(stub: Stub, readers: list[StreamReader]) -> None:
    create(stub, "by-customer", max_in_flight_per_key=1, key_header="customer")
    reader = subscribe(stub, readers, "by-customer", max_outstanding=10)
    events = [
        pb.Event(name="user.x", headers={"customer": c}, ordering_key="same")
        for c in ("42", "42", "7")
    ]
    ids = [r.event_id for r in stub.BatchPublish(pb.BatchPublishRequest(events=events)).results]
    got = reader.take(2)
    assert sorted(d.event_id for d in got) == sorted([ids[0], ids[2]])
    waiting = status(stub, ids[1], "by-customer")
    assert waiting.state == pb.DELIVERY_STATE_BLOCKED and waiting.key == "42"
    assert waiting.key_wait.in_flight == 1 and waiting.key_wait.limit == 1
    stub.Ack(pb.AckRequest(ack_ids=[d.ack_id for d in got if d.event_id == ids[0]]))
    (last,) = reader.take(1)
    assert last.event_id == ids[1]


def test_settings_are_shown_updated_and_validated(stub: Stub) -> None:
    made = create(stub, "settings", max_in_flight_per_key=3, key_header="tenant")
    assert (made.max_in_flight_per_key, made.key_header) == (3, "tenant")
    update = pb.UpdateSubscriptionRequest(
        subscription=pb.Subscription(name="settings", max_in_flight_per_key=5, key_header=""),
        update_mask=["max_in_flight_per_key", "key_header"],
    )
    updated = stub.UpdateSubscription(update).subscription
    assert (updated.max_in_flight_per_key, updated.key_header) == (5, "")
    got = stub.GetSubscription(pb.GetSubscriptionRequest(name="settings")).subscription
    assert got.max_in_flight_per_key == 5

    def refused(**settings: Any) -> dict[str, str]:
        with pytest.raises(grpc.RpcError) as caught:
            create(stub, "bad", **settings)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return violations(caught.value)

    assert (
        "between 0 and 100000"
        in refused(max_in_flight_per_key=-1)["subscription.max_in_flight_per_key"]
    )
    assert (
        "between 0 and 100000"
        in refused(max_in_flight_per_key=100_001)["subscription.max_in_flight_per_key"]
    )
    both = refused(ordered=True, max_in_flight_per_key=2)
    assert set(both) == {"subscription.max_in_flight_per_key", "subscription.ordered"}
    assert "must be 0 or 1" in both["subscription.ordered"]
    assert (
        "at most 255"
        in refused(max_in_flight_per_key=1, key_header="h" * 256)["subscription.key_header"]
    )
    assert (
        "ordered or max_in_flight_per_key"
        in refused(key_header="tenant")["subscription.key_header"]
    )
    ordered_one = create(stub, "ordered-one", ordered=True, max_in_flight_per_key=1)
    assert ordered_one.ordered and ordered_one.max_in_flight_per_key == 1
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpdateSubscription(
            pb.UpdateSubscriptionRequest(
                subscription=pb.Subscription(name="ordered-one", max_in_flight_per_key=4),
                update_mask=["max_in_flight_per_key"],
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.ListSubscriptions(pb.ListSubscriptionsRequest()).subscriptions


# -- several brokers on one PostgreSQL database ---------------------------------------


@pytest.fixture
def pair(postgres_url: str) -> Iterator[Pair]:
    brokers = Pair(replace(NO_POLLING, database_url=postgres_url))
    yield brokers
    brokers.close()


def test_the_cap_holds_across_brokers(pair: Pair, readers: list[StreamReader]) -> None:
    """Consumers on two brokers, publishes and acks through both: never over the cap."""
    first, second = pair.stubs
    create(first, "shared-cap", max_in_flight_per_key=2)
    streams = [
        subscribe(stub, readers, "shared-cap", max_outstanding=20)
        for stub in (first, second, first, second)
    ]
    keys = ["A", "B", "C"] * 8
    ids = publish_keyed(first, keys[:12]) + publish_keyed(second, keys[12:])
    key_of = dict(zip(ids, keys, strict=True))
    held: dict[str, list[str]] = {"A": [], "B": [], "C": []}
    left = Counter(keys)  # not yet acked, per key

    def on_delivery(delivery: pb.Delivery) -> None:
        key = key_of[delivery.event_id]
        held[key].append(delivery.ack_id)
        assert len(held[key]) <= 2, f"{len(held[key])} of {key} in flight with a cap of 2"

    def every_key_full() -> bool:
        return all(len(held[key]) == min(2, left[key]) for key in held)

    turn = 0
    while sum(left.values()):
        take_until(streams, every_key_full, on_delivery)
        in_flight = Counter(
            key_of[i]
            for i in ids
            if status(pair.stubs[turn % 2], i, "shared-cap").state == pb.DELIVERY_STATE_IN_FLIGHT
        )
        assert all(n <= 2 for n in in_flight.values()), in_flight
        for key in held:  # the oldest of each key, acked through either broker
            if held[key]:
                pair.stubs[turn % 2].Ack(pb.AckRequest(ack_ids=[held[key].pop(0)]))
                left[key] -= 1
                turn += 1
    assert {status(first, i, "shared-cap").state for i in ids} == {pb.DELIVERY_STATE_ACKED}


def test_the_python_client_sets_and_reads_the_cap(
    broker_target: str, stub: Stub, readers: list[StreamReader]
) -> None:
    with Client(broker_target) as client:
        made = client.create_subscription(
            "py-capped", "user.*", max_in_flight_per_key=1, key_header="tenant"
        )
        assert (made.max_in_flight_per_key, made.key_header) == (1, "tenant")
        reader = subscribe(stub, readers, "py-capped", max_outstanding=10)
        first = client.publish("user.x", headers={"tenant": "t1"})
        second = client.publish("user.x", headers={"tenant": "t1"})
        (held,) = reader.take(1)
        assert held.event_id == first.event_id
        (status_,) = client.get_event(second.event_id).deliveries
        assert status_.state == "blocked" and status_.key == "t1"
        assert status_.key_wait == KeyWait("t1", 1, 1)
        updated = client.update_subscription(
            "py-capped", max_in_flight_per_key=None, key_header=None
        )
        assert (updated.max_in_flight_per_key, updated.key_header) == (None, None)
        (freed,) = reader.take(1)  # no cap any more: the blocked one goes at once
        assert freed.event_id == second.event_id
        with pytest.raises(InvalidArgument) as caught:
            client.create_subscription("py-bad", "user.*", ordered=True, max_in_flight_per_key=3)
        assert "max_in_flight_per_key" in str(caught.value)


def test_the_command_line_sets_shows_and_explains_the_cap(
    broker_target: str, stub: Stub, readers: list[StreamReader]
) -> None:
    cli = BrokerCli({"EVENTBROKER_TARGET": broker_target, "COLUMNS": "200"})
    created = cli.invoke(
        [
            *("subs", "create", "per-tenant", "-f", "user.*"),
            *("--max-in-flight-per-key", "1", "--key-header", "tenant"),
        ]
    )
    assert created.exit_code == 0, created.output
    assert "1 by tenant" in cli.invoke(["subs", "list"]).output
    shown = cli.invoke(["subs", "show", "per-tenant"]).output
    assert "max in flight per key" in shown and "header 'tenant'" in shown
    reader = subscribe(stub, readers, "per-tenant", max_outstanding=10)
    events = [pb.Event(name="user.x", headers={"tenant": "t9"}) for _ in range(2)]
    ids = [r.event_id for r in stub.BatchPublish(pb.BatchPublishRequest(events=events)).results]
    reader.take(1)
    explained = cli.invoke(["events", "show", ids[1]]).output
    assert "waiting: 1 of 't9' in flight (max_in_flight_per_key 1)" in explained
    raised = cli.invoke(["subs", "update", "per-tenant", "--max-in-flight-per-key", "3"])
    assert raised.exit_code == 0, raised.output
    reader.take(1)  # the raised cap lets the blocked one through
    cleared = cli.invoke(
        ["subs", "update", "per-tenant", "--max-in-flight-per-key", "0", "--key-header", ""]
    )
    assert cleared.exit_code == 0, cleared.output
    assert "no cap" in cli.invoke(["subs", "show", "per-tenant"]).output
    refused = cli.invoke(
        ["subs", "create", "x", "-f", "a.*", "--ordered", "--max-in-flight-per-key", "2"]
    )
    assert refused.exit_code != 0 and "max_in_flight_per_key" in refused.output


def test_keys_never_carry_a_nul_character(stub: Stub, readers: list[StreamReader]) -> None:
    """PostgreSQL's text cannot hold NUL: such a key is refused, or kept as its digest."""
    with pytest.raises(grpc.RpcError) as caught:
        publish_keyed(stub, ["a\x00b"])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NUL" in violations(caught.value)["events[0].ordering_key"]
    with pytest.raises(grpc.RpcError) as refused:
        create(stub, "nul-header", max_in_flight_per_key=1, key_header="a\x00b")
    assert "NUL" in violations(refused.value)["subscription.key_header"]
    create(stub, "nul-value", max_in_flight_per_key=1, key_header="tenant")
    reader = subscribe(stub, readers, "nul-value", max_outstanding=10)
    events = [pb.Event(name="user.x", headers={"tenant": "t\x00"}) for _ in range(2)]
    ids = [r.event_id for r in stub.BatchPublish(pb.BatchPublishRequest(events=events)).results]
    (first,) = reader.take(1)
    assert first.event_id == ids[0]
    waiting = status(stub, ids[1], "nul-value")
    assert waiting.state == pb.DELIVERY_STATE_BLOCKED and waiting.key.startswith("sha256:")
