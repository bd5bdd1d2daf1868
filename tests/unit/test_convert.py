from __future__ import annotations

import pytest
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2

from broker.api import convert
from broker.config import Settings
from broker.errors import BrokerError, FieldViolation, invalid_argument
from eventbroker.v1 import broker_pb2 as pb

NOW = 1_800_000_000_000_000
SETTINGS = Settings()


def test_value_to_python_keeps_whole_numbers_integers() -> None:
    value = struct_pb2.Value()
    value.struct_value.update({"n": 3, "f": 2.5, "l": [1, None, True], "s": "x"})
    assert convert.value_to_python(value) == {"n": 3, "f": 2.5, "l": [1, None, True], "s": "x"}


def test_unset_data_is_json_null() -> None:
    draft = convert.draft_from_publish(pb.PublishRequest(event=pb.Event(name="a")), SETTINGS, NOW)
    assert draft.payload == b"null" and draft.content_type == "application/json"


def test_delay_becomes_deliver_at() -> None:
    event = pb.Event(name="A.B", delay=duration_pb2.Duration(seconds=90), priority=-3)
    draft = convert.draft_from_publish(pb.PublishRequest(event=event), SETTINGS, NOW)
    assert draft.name == "a.b" and draft.priority == -3
    assert draft.deliver_at_us == NOW + 90_000_000 and draft.delay_us == 90_000_000


def test_json_binary_is_validated_and_kept_as_sent() -> None:
    raw = b'{"a": [1, 2]}'
    event = pb.Event(name="a", binary_data=raw, content_type="application/json; charset=utf-8")
    draft = convert.draft_from_publish(pb.PublishRequest(event=event), SETTINGS, NOW)
    assert draft.payload == raw and draft.content_type == "application/json"
    bad = pb.Event(name="a", binary_data=b"NaN", content_type="application/json")
    with pytest.raises(BrokerError) as caught:
        convert.draft_from_publish(pb.PublishRequest(event=bad), SETTINGS, NOW)
    assert caught.value.violations[0].field == "event.binary_data"


def test_missing_event_is_named() -> None:
    with pytest.raises(BrokerError) as caught:
        convert.draft_from_publish(pb.PublishRequest(), SETTINGS, NOW)
    assert [v.field for v in caught.value.violations] == ["event"]


def test_subscription_defaults() -> None:
    sub = convert.subscription_from_proto(pb.Subscription(name="s", filter=["A.*"]), NOW)
    assert sub.filters == ("a.*",)
    assert (sub.ack_deadline_us, sub.max_attempts, sub.max_in_flight) == (30_000_000, 20, 0)
    assert (sub.min_backoff_us, sub.max_backoff_us) == (1_000_000, 600_000_000)
    round_trip = convert.subscription_to_proto(sub)
    assert round_trip.ack_deadline.seconds == 30 and round_trip.retention.seconds == 604800


def test_start_time_is_required_with_start_position_time() -> None:
    message = pb.Subscription(name="s", filter=["a"], start_position=pb.START_POSITION_TIME)
    with pytest.raises(BrokerError) as caught:
        convert.subscription_from_proto(message, NOW)
    assert [v.field for v in caught.value.violations] == ["subscription.start_time"]


def test_retry_table_and_max_age_round_trip() -> None:
    message = pb.Subscription(
        name="s",
        filter=["a"],
        ordered=True,
        retry_policy=pb.RetryPolicy(delays=[duration_pb2.Duration(seconds=s) for s in (1, 5)]),
        max_age=duration_pb2.Duration(seconds=14 * 86400),
    )
    sub = convert.subscription_from_proto(message, NOW)
    assert sub.ordered and sub.retry_delays_us == (1_000_000, 5_000_000)
    assert sub.max_age_us == 14 * 86400 * 1_000_000
    back = convert.subscription_to_proto(sub)
    assert [d.seconds for d in back.retry_policy.delays] == [1, 5]
    assert back.max_age.seconds == 14 * 86400


def test_update_mask_rejects_unknown_fields() -> None:
    current = convert.subscription_from_proto(pb.Subscription(name="s", filter=["a"]), NOW)
    with pytest.raises(BrokerError) as caught:
        convert.merge_update(current, pb.Subscription(name="s"), ["name"])
    assert "update_mask" in caught.value.message


def test_status_details_carry_error_info_and_bad_request() -> None:
    error = invalid_argument([FieldViolation("event.name", "is required")])
    status = error.to_status_proto()
    assert status.code == 3 and status.message == "event.name: is required"
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info) and info.reason == "INVALID_ARGUMENT"
    assert status.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("event.name", "is required")
    ]
