"""The client's pure functions: requests built, responses read, errors typed, names routed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from pydantic import BaseModel

from eventbroker import (
    BrokerError,
    EventSpec,
    InvalidArgument,
    Message,
    NotFound,
    TLSConfig,
)
from eventbroker import _convert as convert
from eventbroker._config import API_KEY_ENV, DEFAULT_TARGET, TARGET_ENV, ConnectionConfig
from eventbroker._models import validate
from eventbroker._routes import Router, compile_pattern
from eventbroker.errors import STATUS_DETAILS_KEY, error_from_rpc, error_from_status
from eventbroker.v1 import broker_pb2 as pb

NOW = datetime(2026, 1, 14, 17, 46, 5, tzinfo=UTC)


@dataclass
class OrderNew:
    order_id: int
    placed: date
    tags: list[str] = field(default_factory=list)


class Signup(BaseModel):
    user_id: int
    plan: str


def event(name: str = "order.new", data: Any = None, **fields: Any) -> pb.Event:
    return convert.event_message(EventSpec(name, data, **fields))


# -- publishing ----------------------------------------------------------------


def test_json_data_travels_as_json_bytes() -> None:
    message = event(data={"plan": "pro", "seats": 5})
    assert message.WhichOneof("payload") == "binary_data"
    assert message.content_type == "application/json"
    assert json.loads(message.binary_data) == {"plan": "pro", "seats": 5}


def test_no_data_sends_no_payload() -> None:
    assert event().WhichOneof("payload") is None


def test_bytes_keep_their_content_type() -> None:
    assert event(data=b"\x00\x01").content_type == "application/octet-stream"
    png = event(data=b"\x89PNG", content_type="image/png")
    assert (png.binary_data, png.content_type) == (b"\x89PNG", "image/png")


def test_text_with_a_content_type_is_sent_as_text() -> None:
    message = event(data="héllo", content_type="text/plain")
    assert (message.binary_data, message.content_type) == ("héllo".encode(), "text/plain")


def test_structured_data_with_a_non_json_content_type_is_refused() -> None:
    with pytest.raises(ValueError, match="text/plain"):
        event(data={"a": 1}, content_type="text/plain")


def test_dataclass_and_pydantic_data_are_sent_as_their_json() -> None:
    order = event(data=OrderNew(7, date(2026, 1, 14), ["rush"]))
    assert json.loads(order.binary_data) == {
        "order_id": 7,
        "placed": "2026-01-14",
        "tags": ["rush"],
    }
    signup = event(data=Signup(user_id=1, plan="pro"))
    assert json.loads(signup.binary_data) == {"user_id": 1, "plan": "pro"}


def test_data_that_is_not_json_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        event(data={"x": float("nan")})
    with pytest.raises(ValueError, match="JSON"):
        event(data={"x": object()})


def test_relative_delay_is_a_duration_and_absolute_one_a_timestamp() -> None:
    relative = event(delay="5m")
    assert relative.WhichOneof("schedule") == "delay"
    assert relative.delay.ToTimedelta() == timedelta(minutes=5)
    absolute = event(delay=NOW)
    assert absolute.WhichOneof("schedule") == "deliver_at"
    assert absolute.deliver_at.ToDatetime(tzinfo=UTC) == NOW
    assert event().WhichOneof("schedule") is None


def test_event_fields_are_copied() -> None:
    message = event(id="dedup-1", priority=-3, ordering_key="user-9", headers={"src": "web"})
    assert (message.id, message.priority, message.ordering_key) == ("dedup-1", -3, "user-9")
    assert dict(message.headers) == {"src": "web"}


def test_batch_items_may_be_dicts_or_specs() -> None:
    request = convert.batch_publish_request(
        [{"name": "a.b", "data": [1], "delay": 1}, EventSpec("c.d", priority=5)]
    )
    assert [e.name for e in request.events] == ["a.b", "c.d"]
    assert request.events[0].delay.ToTimedelta() == timedelta(seconds=1)
    assert request.events[1].priority == 5


def test_bad_batch_item_is_named_by_its_index() -> None:
    with pytest.raises(TypeError, match=r"events\[1\]"):
        convert.batch_publish_request([{"name": "a.b"}, {"name": "c.d", "colour": "red"}])
    with pytest.raises(ValueError, match=r"events\[0\].*soonish"):
        convert.batch_publish_request([{"name": "a.b", "delay": "soonish"}])


def test_publish_results_say_whether_they_were_duplicates() -> None:
    response = pb.BatchPublishResponse(
        results=[
            pb.PublishResult(event_id="e1", status=pb.PUBLISH_STATUS_CREATED),
            pb.PublishResult(event_id="e0", status=pb.PUBLISH_STATUS_DUPLICATE),
        ]
    )
    results = convert.batch_publish_results(response)
    assert [(r.event_id, r.duplicate) for r in results] == [("e1", False), ("e0", True)]


# -- subscriptions -------------------------------------------------------------


def test_create_request_sets_only_the_settings_given() -> None:
    request = convert.create_subscription_request(
        "billing",
        "order.*",
        {"ack_deadline": "45s", "min_backoff": 0.5, "max_attempts": 5, "retention": None},
    )
    sub = request.subscription
    assert (sub.name, list(sub.filter), sub.max_attempts) == ("billing", ["order.*"], 5)
    assert sub.ack_deadline.ToTimedelta() == timedelta(seconds=45)
    assert sub.retry_policy.min_backoff.ToTimedelta() == timedelta(milliseconds=500)
    assert not sub.HasField("retention")
    assert not sub.retry_policy.HasField("max_backoff")
    assert sub.start_position == pb.START_POSITION_UNSPECIFIED


def test_create_request_start_positions() -> None:
    def start(value: str | datetime | None) -> pb.Subscription:
        return convert.create_subscription_request("s", ["a.>"], {}, start=value).subscription

    assert start("beginning").start_position == pb.START_POSITION_BEGINNING
    assert start("NEW").start_position == pb.START_POSITION_NEW
    at = start(NOW)
    assert at.start_position == pb.START_POSITION_TIME
    assert at.start_time.ToDatetime(tzinfo=UTC) == NOW
    with pytest.raises(ValueError, match="yesterday"):
        start("yesterday")


def test_bad_duration_setting_is_named() -> None:
    with pytest.raises(ValueError, match="ack_deadline"):
        convert.create_subscription_request("s", "a", {"ack_deadline": "a while"})


def test_update_mask_lists_exactly_the_keys_given() -> None:
    request = convert.update_subscription_request(
        "billing", {"max_backoff": "10m", "filter": ["a.*", "b.>"], "max_in_flight": None}
    )
    assert list(request.update_mask) == ["retry_policy.max_backoff", "filter", "max_in_flight"]
    assert request.subscription.retry_policy.max_backoff.ToTimedelta() == timedelta(minutes=10)
    assert list(request.subscription.filter) == ["a.*", "b.>"]
    assert request.subscription.max_in_flight == 0


def test_update_refuses_unknown_keys_and_empty_changes() -> None:
    with pytest.raises(TypeError, match="ordered"):
        convert.update_subscription_request("s", {"ordered": True})  # type: ignore[typeddict-unknown-key]
    with pytest.raises(ValueError, match="nothing to update"):
        convert.update_subscription_request("s", {})


def test_subscription_is_read_with_unlimited_in_flight_as_none() -> None:
    message = pb.Subscription(
        name="billing",
        filter=["order.*"],
        ack_deadline=convert.to_duration(timedelta(seconds=30)),
        max_attempts=20,
        retry_policy=pb.RetryPolicy(
            min_backoff=convert.to_duration(timedelta(seconds=1)),
            max_backoff=convert.to_duration(timedelta(minutes=10)),
        ),
        retention=convert.to_duration(timedelta(days=7)),
        create_time=convert.to_timestamp(NOW),
    )
    sub = convert.subscription_from_proto(message)
    assert sub.filter == ("order.*",)
    assert (sub.min_backoff, sub.max_backoff) == (timedelta(seconds=1), timedelta(minutes=10))
    assert sub.max_in_flight is None
    assert sub.create_time == NOW


# -- consuming -----------------------------------------------------------------


def delivery(**fields: Any) -> pb.Delivery:
    base: dict[str, Any] = {
        "ack_id": "a1",
        "event_id": "e1",
        "name": "order.new",
        "publish_time": convert.to_timestamp(NOW),
        "ack_deadline": convert.to_timestamp(NOW + timedelta(seconds=30)),
        "attempt": 2,
        "subscription": "billing",
    }
    return pb.Delivery(**(base | fields))


def test_json_delivery_is_decoded() -> None:
    message = convert.message_from_delivery(
        delivery(binary_data=b'{"n": 1, "x": [true, null]}', content_type="application/json")
    )
    assert message.data == {"n": 1, "x": [True, None]}
    assert message.attempt == 2
    assert message.ack_deadline == NOW + timedelta(seconds=30)
    assert message.publish_time == NOW
    assert message.ordering_key is None and message.dedup_id is None


def test_value_delivery_is_plain_python_with_whole_numbers_as_ints() -> None:
    value = struct_pb2.Value()
    value.struct_value.update({"n": 5, "f": 2.5, "s": "x", "l": [1, None]})
    message = convert.message_from_delivery(delivery(data=value, content_type="application/json"))
    assert message.data == {"n": 5, "f": 2.5, "s": "x", "l": [1, None]}
    assert isinstance(message.data["n"], int)


def test_binary_delivery_stays_bytes_and_tail_has_no_deadline() -> None:
    message = convert.message_from_delivery(
        pb.Delivery(name="a.b", binary_data=b"\x00", content_type="image/png", ordering_key="k")
    )
    assert (message.data, message.ack_id, message.ack_deadline) == (b"\x00", "", None)
    assert message.ordering_key == "k"


def test_subscribe_request_asks_for_json_as_binary() -> None:
    request = convert.subscribe_request(
        "billing", max_outstanding=10, max_batch_size=5, consumer_name="w1"
    )
    assert request.json_as_binary and request.max_outstanding == 10
    tail = convert.tail_request("user.*")
    assert list(tail.filter) == ["user.*"] and not tail.subscription and tail.json_as_binary


def test_ack_ids_come_from_strings_or_messages_in_chunks() -> None:
    message = convert.message_from_delivery(delivery(ack_id="m1"))
    assert convert.ack_id_chunks("x") == [["x"]]
    assert convert.ack_id_chunks([message, "y"]) == [["m1", "y"]]
    assert convert.ack_id_chunks([]) == []
    chunks = convert.ack_id_chunks([str(i) for i in range(10_001)])
    assert [len(c) for c in chunks] == [10_000, 1]


def test_nack_and_extend_requests() -> None:
    (nack,) = convert.nack_requests(["a"], delay="5s", terminal=True, error="boom")
    assert nack.delay.ToTimedelta() == timedelta(seconds=5) and nack.terminal
    assert nack.error == "boom"
    (plain,) = convert.nack_requests(["a"], delay=None, terminal=False, error="")
    assert not plain.HasField("delay")
    (extend,) = convert.extend_requests("a", timedelta(minutes=2))
    assert extend.extension.ToTimedelta() == timedelta(minutes=2)
    with pytest.raises(ValueError, match="extension: cannot read"):
        convert.extend_requests("a", NOW.isoformat())


def test_ack_results_of_chunks_are_merged() -> None:
    result = convert.ack_result(
        [pb.AckResponse(not_applied_ack_ids=["a"]), pb.AckResponse(not_applied_ack_ids=["b"])]
    )
    assert result.not_applied == ("a", "b")


# -- inspection ----------------------------------------------------------------


def test_event_info_names_states_and_reasons() -> None:
    response = pb.GetEventResponse(
        event=pb.StoredEvent(
            event_id="e1",
            event=pb.Event(
                name="order.new",
                binary_data=b"\x01",
                content_type="application/x-thing",
                id="d1",
                delay=convert.to_duration(timedelta(minutes=5)),
            ),
            publish_time=convert.to_timestamp(NOW),
        ),
        deliveries=[
            pb.DeliveryStatus(
                subscription="billing",
                state=pb.DELIVERY_STATE_DEAD,
                attempts=3,
                dead_reason=pb.DEAD_REASON_NACKED_TERMINAL,
                last_error="ValueError('x')",
                reason="dead because ...",
                history=[pb.Attempt(attempt=1, outcome=pb.ATTEMPT_OUTCOME_NACKED, error="e")],
            ),
            pb.DeliveryStatus(subscription="mail", state=pb.DELIVERY_STATE_IN_FLIGHT),
        ],
    )
    info = convert.event_info(response)
    assert (info.data, info.dedup_id, info.delay) == (b"\x01", "d1", timedelta(minutes=5))
    billing = info.delivery("billing")
    assert billing is not None
    assert (billing.state, billing.dead_reason) == ("dead", "nacked_terminal")
    assert billing.history[0].outcome == "nacked"
    mail = info.delivery("mail")
    assert mail is not None and (mail.state, mail.dead_reason) == ("in_flight", None)
    assert info.delivery("other") is None


def test_max_age_and_retry_table_are_sent_and_read() -> None:
    created = convert.create_subscription_request(
        "s", "a.*", {"max_age": "1h", "retry_delays": ["1s", 30], "max_attempts": None}
    ).subscription
    assert created.max_age.ToTimedelta() == timedelta(hours=1)
    assert [d.ToTimedelta() for d in created.retry_policy.delays] == [
        timedelta(seconds=1),
        timedelta(seconds=30),
    ]
    update = convert.update_subscription_request("s", {"retry_delays": "10s", "max_age": None})
    assert list(update.update_mask) == ["retry_policy.delays", "max_age"]
    assert [d.ToTimedelta() for d in update.subscription.retry_policy.delays] == [
        timedelta(seconds=10)
    ]
    assert not update.subscription.HasField("max_age")  # unset: no maximum age
    with pytest.raises(ValueError, match=r"retry_delays\[1\]"):
        convert.update_subscription_request("s", {"retry_delays": ["1s", "soon"]})
    sub = convert.subscription_from_proto(created)
    assert sub.max_age == timedelta(hours=1) and len(sub.retry_delays) == 2
    plain = convert.subscription_from_proto(pb.Subscription(name="p"))
    assert (plain.max_age, plain.retry_delays) == (None, ())


def test_blocked_state_reads_like_the_others() -> None:
    response = pb.GetEventResponse(
        deliveries=[pb.DeliveryStatus(subscription="fifo", state=pb.DELIVERY_STATE_BLOCKED)]
    )
    status = convert.event_info(response).delivery("fifo")
    assert status is not None and (status.state, status.dead_reason) == ("blocked", None)


def test_dead_letter_pages_are_read_with_reason_and_time_of_death() -> None:
    ended = NOW + timedelta(seconds=3)
    history = [
        pb.Attempt(attempt=1, end_time=convert.to_timestamp(NOW)),
        pb.Attempt(attempt=2, end_time=convert.to_timestamp(ended), error="boom"),
    ]
    stored = pb.StoredEvent(
        event_id="e1",
        event=pb.Event(name="order.new", binary_data=b"{}", content_type="application/json"),
        publish_time=convert.to_timestamp(NOW),
    )
    exhausted = pb.DeliveryStatus(
        subscription="billing",
        state=pb.DELIVERY_STATE_DEAD,
        attempts=2,
        dead_reason=pb.DEAD_REASON_ATTEMPTS_EXHAUSTED,
        last_error="boom",
        history=history,
        update_time=convert.to_timestamp(ended),
    )
    expired = pb.DeliveryStatus(
        subscription="billing", state=pb.DELIVERY_STATE_DEAD, dead_reason=pb.DEAD_REASON_EXPIRED
    )
    page = convert.dead_letter_page(
        pb.ListDeadLettersResponse(
            dead_letters=[
                pb.DeadLetter(event=stored, delivery=exhausted),
                pb.DeadLetter(event=stored, delivery=expired),
            ],
            next_page_token="t2",
        )
    )
    first, second = page.items
    assert (first.reason, first.attempts, first.data) == ("attempts_exhausted", 2, {})
    assert first.dead_time == ended and [a.attempt for a in first.history] == [1, 2]
    assert (second.reason, second.dead_time) == ("expired", None)
    assert page.next_page_token == "t2"
    last = convert.dead_letter_page(pb.ListDeadLettersResponse())
    assert (last.items, last.next_page_token) == ((), None)
    event = pb.GetEventResponse(event=stored, deliveries=[exhausted])
    assert convert.dead_letter_from_event(event, "billing") == first
    assert convert.dead_letter_from_event(event, "other") is None


def test_dead_letter_filters_take_reason_names() -> None:
    request = convert.list_dead_letters_request(
        "s", name="order.new", reason="Nacked_Terminal", page_size=5, page_token=None
    )
    assert (request.name, request.reason, request.page_size, request.page_token) == (
        "order.new",
        pb.DEAD_REASON_NACKED_TERMINAL,
        5,
        "",
    )
    assert convert.dead_reason(None) == pb.DEAD_REASON_UNSPECIFIED
    with pytest.raises(ValueError, match="attempts_exhausted, nacked_terminal, expired"):
        convert.dead_reason("tired")


def test_redrive_ids_go_in_chunks_and_all_in_one_request() -> None:
    ids = [f"e{i}" for i in range(2_500)]
    chunks = convert.redrive_requests("s", event_ids=ids, name=None, reason=None, all=False)
    assert [len(r.event_ids) for r in chunks] == [1_000, 1_000, 500]
    assert [i for r in chunks for i in r.event_ids] == ids
    assert not any(r.all for r in chunks)
    (everything,) = convert.redrive_requests(
        "s", event_ids=None, name="a.b", reason="expired", all=True
    )
    assert (everything.all, everything.name, everything.reason) == (
        True,
        "a.b",
        pb.DEAD_REASON_EXPIRED,
    )
    assert list(everything.event_ids) == []
    assert convert.redrive_requests("s", event_ids=[], name=None, reason=None, all=False) == []
    (one,) = convert.redrive_requests("s", event_ids="e1", name=None, reason=None, all=False)
    assert list(one.event_ids) == ["e1"]
    with pytest.raises(ValueError, match="all=True"):
        convert.redrive_requests("s", event_ids=None, name=None, reason=None, all=False)
    with pytest.raises(ValueError, match="not both"):
        convert.redrive_requests("s", event_ids=["e1"], name=None, reason=None, all=True)


def test_seek_takes_a_time_and_naive_means_utc() -> None:
    request = convert.seek_request("s", NOW.replace(tzinfo=None))
    assert request.time.ToDatetime(tzinfo=UTC) == NOW
    with pytest.raises(TypeError, match="datetime"):
        convert.seek_request("s", "yesterday")  # type: ignore[arg-type]


def test_stats_are_read_per_subscription() -> None:
    stats = convert.stats(
        pb.GetStatsResponse(
            subscriptions=[pb.SubscriptionStats(subscription="billing", ready=3, dead=1)],
            events=10,
            publish_rate=1.5,
        )
    )
    billing = stats.subscription("billing")
    assert billing is not None and (billing.ready, billing.dead) == (3, 1)
    assert billing.oldest_waiting_time is None
    assert (stats.events, stats.publish_rate) == (10, 1.5)


# -- errors --------------------------------------------------------------------


def rich_status(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason="SUBSCRIPTION_NOT_FOUND", domain="eventbroker.v1", metadata={"s": "x"}
        )
    )
    bad = any_pb2.Any()
    bad.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="event.name", description="bad")
            ]
        )
    )
    return status_pb2.Status(code=code.value[0], message=message, details=[info, bad])


def test_status_details_become_a_typed_error() -> None:
    status = rich_status(grpc.StatusCode.INVALID_ARGUMENT, "event.name: bad")
    error = error_from_status(grpc.StatusCode.INVALID_ARGUMENT, "event.name: bad", status)
    assert isinstance(error, InvalidArgument)
    assert error.reason == "SUBSCRIPTION_NOT_FOUND"
    assert error.metadata == {"s": "x"}
    assert error.field_violations == [("event.name", "bad")]
    assert "INVALID_ARGUMENT" in str(error) and "event.name: bad" in str(error)


def test_codes_without_a_class_are_plain_broker_errors() -> None:
    error = error_from_status(grpc.StatusCode.INTERNAL, "oops", None)
    assert type(error) is BrokerError
    assert error.reason is None and error.field_violations == []


def test_aio_error_details_come_from_trailing_metadata() -> None:
    status = rich_status(grpc.StatusCode.NOT_FOUND, "gone")
    rpc_error = aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND,
        aio.Metadata(),
        aio.Metadata((STATUS_DETAILS_KEY, status.SerializeToString())),
        details="gone",
    )
    error = error_from_rpc(rpc_error)
    assert isinstance(error, NotFound)
    assert (error.message, error.reason) == ("gone", "SUBSCRIPTION_NOT_FOUND")


# -- configuration -------------------------------------------------------------


def test_connection_comes_from_the_environment_unless_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TARGET_ENV, raising=False)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    default = ConnectionConfig.resolve(None, None, None)
    assert (default.target, default.metadata, default.tls) == (DEFAULT_TARGET, (), None)
    monkeypatch.setenv(TARGET_ENV, "broker:6000")
    monkeypatch.setenv(API_KEY_ENV, "k1")
    from_env = ConnectionConfig.resolve(None, None, True)
    assert from_env.target == "broker:6000"
    assert from_env.metadata == (("authorization", "Bearer k1"),)
    assert from_env.tls == TLSConfig()
    given = ConnectionConfig.resolve("other:1", "k2", None)
    assert (given.target, given.api_key) == ("other:1", "k2")


def test_channel_options_set_size_keepalive_and_tls_name() -> None:
    config = ConnectionConfig.resolve("h:1", None, TLSConfig(server_name="broker.internal"))
    options = dict(config.channel_options())
    assert options["grpc.max_receive_message_length"] == 16 * 1024 * 1024
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.ssl_target_name_override"] == "broker.internal"


def test_mutual_tls_needs_both_cert_and_key() -> None:
    with pytest.raises(ValueError, match="cert_file and key_file"):
        TLSConfig(cert_file="me.pem")


# -- typed events --------------------------------------------------------------


def test_json_validates_into_dataclasses_and_models() -> None:
    order = validate(OrderNew, {"order_id": 7, "placed": "2026-01-14"})
    assert order == OrderNew(7, date(2026, 1, 14))
    assert validate(Signup, {"user_id": "1", "plan": "pro"}) == Signup(user_id=1, plan="pro")
    with pytest.raises(ValueError, match="user_id"):
        validate(Signup, {"plan": "pro"})


# -- routing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("user.joined", "user.joined", True),
        ("User.Joined", "user.joined", True),
        ("user.joined", "user.joined.late", False),
        ("user.*", "user.left", True),
        ("user.*", "user", False),
        ("user.*", "user.a.b", False),
        ("*.joined", "team.joined", True),
        ("orders.>", "orders.eu.new", True),
        ("orders.>", "orders", False),
        (">", "anything.at.all", True),
        ("a-b/c:d", "a-b/c:d", True),
    ],
)
def test_patterns_match_like_broker_filters(pattern: str, name: str, matches: bool) -> None:
    assert (compile_pattern(pattern).fullmatch(name) is not None) is matches


@pytest.mark.parametrize("pattern", ["", "a..b", "orders.>.new", "."])
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        compile_pattern(pattern)


def test_router_returns_every_match_in_registration_order() -> None:
    router = Router()
    router.add("order.new", print, None)
    router.add("order.*", repr, None)
    router.add("refund.*", str, None)
    assert [r.handler for r in router.routes_for("Order.New")] == [print, repr]
    assert router.routes_for("user.joined") == ()
    router.add(">", len, None)
    assert [r.handler for r in router.routes_for("user.joined")] == [len]


def test_message_is_frozen() -> None:
    message = convert.message_from_delivery(delivery())
    assert isinstance(message, Message)
    with pytest.raises(AttributeError):
        message.attempt = 3  # type: ignore[misc]
