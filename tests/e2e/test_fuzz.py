"""Random and hostile input to every RPC: a proper status each time, nothing half-written.

Hypothesis builds requests from the proto's fields with values chosen to hurt:
empty and huge names, control characters, deep and huge JSON, NaN and
infinite numbers, negative and enormous durations, priorities and enum values
out of range, thousands of ack ids, and bytes that are no protobuf at all. One
broker (SQLite) serves a whole module; after each call it must still answer,
and a refused publish must have stored nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.conftest import TEST_SETTINGS, BrokerThread, sqlite_url

EXAMPLES = 40
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SERVICE = "/eventbroker.v1.EventBrokerService/"
#: Codes a broker may answer bad input with; anything else (INTERNAL, UNKNOWN) is a defect.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@dataclasses.dataclass
class Fuzzed:
    stub: pb_grpc.EventBrokerServiceStub
    channel: grpc.Channel

    def events(self) -> int:
        return int(self.stub.GetStats(pb.GetStatsRequest(), timeout=10).events)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    directory = tmp_path_factory.mktemp("fuzz")
    broker = BrokerThread(
        dataclasses.replace(TEST_SETTINGS, database_url=sqlite_url(directory))
    ).start()
    channel = grpc.insecure_channel(broker.target)
    stub = pb_grpc.EventBrokerServiceStub(channel)
    stub.CreateSubscription(
        pb.CreateSubscriptionRequest(subscription=pb.Subscription(name="all", filter=[">"]))
    )
    try:
        yield Fuzzed(stub, channel)
    finally:
        channel.close()
        broker.stop()


def status(call: Any, request: Any, timeout: float = 10) -> tuple[grpc.StatusCode, str]:
    """The status code and message a call ended with."""
    try:
        call(request, timeout=timeout)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def answer(call: Any, request: Any) -> grpc.StatusCode:
    """The status of a unary call; fails the test on a code bad input must not cause."""
    code, message = status(call, request)
    if code != grpc.StatusCode.OK:
        assert code in REFUSALS, f"{code}: {message}"
        assert message, "a refusal says why"
    return code


# -- strategies ----------------------------------------------------------------

hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=600),
    st.sampled_from(["", " ", ".", "a..b", "*", ">", "a.>.b", "user.*", "x" * 256, "\x00", "é"]),
)
names = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_\-/:]{0,20}(\.[a-z0-9]{1,8}){0,3}", fullmatch=True), hostile_text
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


def to_value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if data is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        value.bool_value = data
    elif isinstance(data, float):
        value.number_value = data
    elif isinstance(data, str):
        value.string_value = data
    elif isinstance(data, list):
        value.list_value.values.extend(to_value(item) for item in data)
    else:
        for key, item in data.items():
            value.struct_value.fields[key].CopyFrom(to_value(item))
    return value


def deep_value(depth: int) -> struct_pb2.Value:
    value = struct_pb2.Value(string_value="bottom")
    for _ in range(depth):
        outer = struct_pb2.Value()
        outer.list_value.values.append(value)
        value = outer
    return value


int32s = st.integers(min_value=-(2**31), max_value=2**31 - 1)
durations = st.builds(
    duration_pb2.Duration,
    seconds=st.integers(min_value=-(10**11), max_value=10**11),
    nanos=st.integers(min_value=-999_999_999, max_value=999_999_999),
)
timestamps = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.integers(min_value=-62135596800, max_value=253402300799),
    nanos=st.integers(min_value=0, max_value=999_999_999),
)


@st.composite
def events(draw: st.DrawFn) -> pb.Event:
    event = pb.Event(
        name=draw(names),
        headers=draw(st.dictionaries(hostile_text, hostile_text, max_size=4)),
        priority=draw(int32s),
        id=draw(st.one_of(st.just(""), hostile_text)),
        ordering_key=draw(st.one_of(st.just(""), hostile_text)),
        content_type=draw(st.sampled_from(["", "application/json", "text/plain", "x" * 300])),
    )
    payload = draw(st.sampled_from(["json", "binary", "deep", "deep binary", "none"]))
    if payload == "json":
        event.data.CopyFrom(to_value(draw(json_values)))
    elif payload == "binary":
        event.binary_data = draw(st.binary(max_size=2048))
    elif payload == "deep":
        event.data.CopyFrom(deep_value(draw(st.integers(min_value=10, max_value=40))))
    elif payload == "deep binary":  # JSON nested far past any parser's recursion limit
        levels = draw(st.integers(min_value=10, max_value=20_000))
        event.content_type = "application/json"
        event.binary_data = b"[" * levels + b"]" * levels
    when = draw(st.sampled_from(["now", "delay", "deliver_at"]))
    if when == "delay":
        event.delay.CopyFrom(draw(durations))
    elif when == "deliver_at":
        event.deliver_at.CopyFrom(draw(timestamps))
    return event


# -- the RPCs ------------------------------------------------------------------


@FUZZ
@given(event=events())
def test_publish(fuzzed: Fuzzed, event: pb.Event) -> None:
    before = fuzzed.events()
    code = answer(fuzzed.stub.Publish, pb.PublishRequest(event=event))
    if code != grpc.StatusCode.OK:
        assert fuzzed.events() == before, "a refused publish stored something"


@FUZZ
@given(batch=st.lists(events(), max_size=12))
def test_batch_publish_is_all_or_none(fuzzed: Fuzzed, batch: list[pb.Event]) -> None:
    before = fuzzed.events()
    code = answer(fuzzed.stub.BatchPublish, pb.BatchPublishRequest(events=batch))
    if code != grpc.StatusCode.OK:
        assert fuzzed.events() == before, "a refused batch stored part of itself"


def test_ten_thousand_events_in_one_batch(fuzzed: Fuzzed) -> None:
    before = fuzzed.events()
    batch = pb.BatchPublishRequest(events=[pb.Event(name="bulk.x")] * 10_000)
    with pytest.raises(grpc.RpcError) as refused:
        fuzzed.stub.BatchPublish(batch, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1000" in (refused.value.details() or "")
    assert fuzzed.events() == before


@st.composite
def subscriptions(draw: st.DrawFn) -> pb.Subscription:
    subscription = pb.Subscription(
        name=draw(names),
        filter=draw(st.lists(names, max_size=4)),
        max_attempts=draw(int32s),
        max_in_flight=draw(int32s),
        ordered=draw(st.booleans()),
        max_in_flight_per_key=draw(int32s),
        key_header=draw(st.one_of(st.just(""), names, hostile_text)),
    )
    for field in ("ack_deadline", "max_age"):
        if draw(st.booleans()):
            getattr(subscription, field).CopyFrom(draw(durations))
    if draw(st.booleans()):
        subscription.retry_policy.min_backoff.CopyFrom(draw(durations))
        subscription.retry_policy.max_backoff.CopyFrom(draw(durations))
        subscription.retry_policy.delays.extend(draw(st.lists(durations, max_size=3)))
    subscription.start_position = draw(int32s)  # type: ignore[assignment]
    if draw(st.booleans()):
        subscription.start_time.CopyFrom(draw(timestamps))
    return subscription


@FUZZ
@given(subscription=subscriptions(), mask=st.lists(hostile_text, max_size=3))
def test_subscription_management(
    fuzzed: Fuzzed, subscription: pb.Subscription, mask: list[str]
) -> None:
    code = answer(
        fuzzed.stub.CreateSubscription, pb.CreateSubscriptionRequest(subscription=subscription)
    )
    update = pb.UpdateSubscriptionRequest(subscription=subscription)
    update.update_mask.extend(mask)
    answer(fuzzed.stub.UpdateSubscription, update)
    answer(fuzzed.stub.GetSubscription, pb.GetSubscriptionRequest(name=subscription.name))
    if code == grpc.StatusCode.OK:
        answer(fuzzed.stub.DeleteSubscription, pb.DeleteSubscriptionRequest(name=subscription.name))


@FUZZ
@given(
    ack_ids=st.lists(st.one_of(hostile_text, st.from_regex(r"-?\d{1,20}-\d{1,20}")), max_size=20),
    many=st.booleans(),
    delay=st.one_of(st.none(), durations),
    extension=durations,
    terminal=st.booleans(),
    error=hostile_text,
)
def test_ack_nack_extend(
    fuzzed: Fuzzed,
    ack_ids: list[str],
    many: bool,
    delay: duration_pb2.Duration | None,
    extension: duration_pb2.Duration,
    terminal: bool,
    error: str,
) -> None:
    if many:
        ack_ids = ack_ids + [f"{n}-1" for n in range(12_000)]
    answer(fuzzed.stub.Ack, pb.AckRequest(ack_ids=ack_ids))
    nack = pb.NackRequest(ack_ids=ack_ids, terminal=terminal, error=error)
    if delay is not None:
        nack.delay.CopyFrom(delay)
    answer(fuzzed.stub.Nack, nack)
    answer(
        fuzzed.stub.ExtendAckDeadline,
        pb.ExtendAckDeadlineRequest(ack_ids=ack_ids, extension=extension),
    )


@FUZZ
@given(
    subscription=st.one_of(st.just("all"), st.just(""), names),
    filters=st.lists(names, max_size=3),
    max_outstanding=int32s,
    max_batch_size=int32s,
    consumer_name=hostile_text,
)
def test_subscribe(
    fuzzed: Fuzzed,
    subscription: str,
    filters: list[str],
    max_outstanding: int,
    max_batch_size: int,
    consumer_name: str,
) -> None:
    request = pb.SubscribeRequest(
        subscription=subscription,
        filter=filters,
        max_outstanding=max_outstanding,
        max_batch_size=max_batch_size,
        consumer_name=consumer_name,
    )
    call = fuzzed.stub.Subscribe(request, timeout=0.3)
    code, message = status(lambda _request, timeout: next(call, None), request)
    call.cancel()
    # DEADLINE_EXCEEDED: the stream was accepted and waited for deliveries.
    assert code in REFUSALS | {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, message


@FUZZ
@given(
    text=hostile_text,
    token=hostile_text,
    size=int32s,
    reason=int32s,
    when=timestamps,
    ids=st.lists(hostile_text, max_size=5),
    everything=st.booleans(),
)
def test_inspection_and_dead_letters(
    fuzzed: Fuzzed,
    text: str,
    token: str,
    size: int,
    reason: int,
    when: timestamp_pb2.Timestamp,
    ids: list[str],
    everything: bool,
) -> None:
    stub = fuzzed.stub
    answer(stub.GetEvent, pb.GetEventRequest(event_id=text))
    answer(stub.ListSubscriptions, pb.ListSubscriptionsRequest(page_size=size, page_token=token))
    for subscription in ("all", text):
        listing = pb.ListDeadLettersRequest(
            subscription=subscription, page_size=size, page_token=token, name=text
        )
        listing.reason = reason  # type: ignore[assignment]
        answer(stub.ListDeadLetters, listing)
        redrive = pb.RedriveDeadLettersRequest(
            subscription=subscription, event_ids=ids, all=everything, name=text
        )
        redrive.reason = reason  # type: ignore[assignment]
        answer(stub.RedriveDeadLetters, redrive)
        answer(stub.Seek, pb.SeekRequest(subscription=subscription, time=when))
        answer(stub.GetStats, pb.GetStatsRequest(subscription=subscription))


METHODS = [method.name for method in pb.DESCRIPTOR.services_by_name["EventBrokerService"].methods]


@FUZZ
@given(method=st.sampled_from(METHODS), garbage=st.binary(max_size=512))
def test_garbage_bytes_on_the_wire(fuzzed: Fuzzed, method: str, garbage: bytes) -> None:
    raw: Any = fuzzed.channel.unary_unary(SERVICE + method)
    code, message = status(raw, garbage, timeout=2)
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE), message
    assert fuzzed.events() >= 0  # still serving
