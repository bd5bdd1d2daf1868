"""The HTTP side with a plain HTTP client: JSON ingest, metrics, health."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2

from broker.config import JSON_BODY_DEPTH_MAX, JSON_DEPTH_MAX, Settings
from broker.domain import Scope
from eventbroker import Client
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.conftest import BrokerThread
from tests.e2e.keys import make_key

WAIT_S = 10.0


def http(
    broker: BrokerThread,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    token: str | None = None,
    request_id: str | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """Status, decoded body (JSON or text) and headers of one request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(
        f"http://127.0.0.1:{broker.app.http_port}{path}", data=data, method=method
    )
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if request_id:
        request.add_header("X-Request-Id", request_id)
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            status, payload, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        status, payload, headers = error.code, error.read(), dict(error.headers)
    kind = headers.get("Content-Type", "")
    return status, json.loads(payload) if "json" in kind else payload.decode(), headers


def test_ingest_one_event_or_many_like_batch_publish(broker_server: BrokerThread) -> None:
    status, body, _ = http(
        broker_server, "POST", "/v1/events", {"name": "user.joined", "data": {"plan": "pro"}}
    )
    assert status == 200
    ((result),) = body["results"]
    assert result["status"] == "PUBLISH_STATUS_CREATED"
    with Client(broker_server.target) as client:
        assert client.get_event(result["event_id"]).data == {"plan": "pro"}
    events = [{"name": "order.new", "id": "o-1"}, {"name": "order.new", "id": "o-1"}]
    status, body, _ = http(broker_server, "POST", "/v1/events", events)
    assert status == 200
    first, second = body["results"]
    assert first["status"] == "PUBLISH_STATUS_CREATED"
    assert second == {"event_id": first["event_id"], "status": "PUBLISH_STATUS_DUPLICATE"}


def test_bad_input_gets_the_same_errors_and_stores_nothing(broker_server: BrokerThread) -> None:
    def events_stored() -> int:
        with Client(broker_server.target) as client:
            return client.get_stats().events

    status, body, _ = http(
        broker_server, "POST", "/v1/events", [{"name": "ok.one"}, {"name": "bad name"}]
    )
    assert status == 400
    assert body["error"]["code"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in body["error"]["field_violations"]] == ["events[1].name"]
    status, body, _ = http(broker_server, "POST", "/v1/events", raw=b'{"name": "a", "data": NaN}')
    assert status == 400 and "NaN" in body["error"]["field_violations"][0]["description"]
    status, body, _ = http(broker_server, "POST", "/v1/events", raw=b"not json")
    assert status == 400 and body["error"]["field_violations"][0]["field"] == "body"
    status, body, _ = http(broker_server, "POST", "/v1/events", {"name": "a", "nope": 1})
    assert status == 400 and "nope" in body["error"]["field_violations"][0]["description"]
    status, body, _ = http(broker_server, "POST", "/v1/events", [{"name": "a"}] * 1001)
    assert status == 400 and "limit is 1000" in json.dumps(body)
    big = {"name": "big.one", "data": {"pad": "x" * (300 * 1024)}}
    status, body, _ = http(broker_server, "POST", "/v1/events", big)
    assert status == 413 and body["error"]["reason"] == "SIZE_LIMIT_EXCEEDED"
    assert events_stored() == 0


def test_metrics_in_prometheus_format(broker_server: BrokerThread) -> None:
    with Client(broker_server.target) as client:
        client.create_subscription("billing", "order.*")
        client.publish_batch([{"name": "order.new"}] * 3)
        for batch in client.subscribe("billing", max_outstanding=10):
            client.ack(batch[:2])
            break
    status, text, headers = http(broker_server, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "eventbroker_events_published_total 3.0" in text
    assert 'eventbroker_deliveries_total{subscription="billing"} 3.0' in text
    assert 'eventbroker_acks_total{subscription="billing"} 2.0' in text
    assert 'eventbroker_deliveries_by_state{state="in_flight",subscription="billing"}' in text
    assert 'eventbroker_delivery_latency_seconds_count{subscription="billing"} 3.0' in text
    assert "eventbroker_stored_events 3.0" in text


def test_health(broker_server: BrokerThread) -> None:
    status, text, _ = http(broker_server, "GET", "/healthz")
    assert (status, text) == (200, "ok\n")


@pytest.fixture
def broker_settings(any_database_settings: Settings) -> Settings:
    """Keys are read on every call here, so a key made by a test counts at once."""
    return dataclasses.replace(any_database_settings, api_key_cache_s=0.0)


def test_the_same_bearer_keys(broker_server: BrokerThread, broker_settings: Settings) -> None:
    url = broker_settings.database_url
    keys = {scope: make_key(url, scope) for scope in (Scope.PUBLISH, Scope.SUBSCRIBE, Scope.ADMIN)}
    event = {"name": "order.new"}
    status, body, headers = http(broker_server, "POST", "/v1/events", event)
    assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED"
    assert headers["WWW-Authenticate"] == "Bearer"
    status, body, _ = http(broker_server, "POST", "/v1/events", event, token=keys[Scope.SUBSCRIBE])
    assert status == 403 and body["error"]["reason"] == "SCOPE_MISSING"
    status, _, _ = http(broker_server, "POST", "/v1/events", event, token=keys[Scope.PUBLISH])
    assert status == 200
    assert http(broker_server, "GET", "/metrics")[0] == 401
    assert http(broker_server, "GET", "/metrics", token=keys[Scope.ADMIN])[0] == 200
    assert http(broker_server, "GET", "/healthz")[0] == 200


def test_every_unary_rpc_in_json(broker_server: BrokerThread) -> None:
    status, body, _ = http(
        broker_server,
        "POST",
        "/v1/rpc/CreateSubscription",
        {"subscription": {"name": "mails", "filter": ["user.*"], "ack_deadline": "45s"}},
    )
    assert status == 200 and body["subscription"]["ack_deadline"] == "45s"
    status, body, _ = http(broker_server, "POST", "/v1/rpc/GetStats", {})
    assert status == 200 and body["subscriptions"][0]["subscription"] == "mails"
    status, body, _ = http(broker_server, "POST", "/v1/rpc/GetSubscription", {"name": "nope"})
    assert status == 404 and body["error"]["reason"] == "SUBSCRIPTION_NOT_FOUND"
    status, body, _ = http(broker_server, "POST", "/v1/rpc/Ack", {"ack_ids": []})
    assert status == 400 and body["error"]["field_violations"][0]["field"] == "ack_ids"
    assert http(broker_server, "POST", "/v1/rpc/Subscribe", {})[0] == 404  # a stream: gRPC only
    status, body, _ = http(broker_server, "GET", "/")
    assert status == 200 and "<title>eventbroker</title>" in body


# -- JSON nested too deep: one limit on every path ------------------------------------


def nested_json(levels: int) -> str:
    """JSON text of arrays and objects nested `levels` deep."""
    return (
        '{"a":[' * (levels // 2)
        + "[" * (levels % 2)
        + "1"
        + "]" * (levels % 2)
        + "]}" * (levels // 2)
    )


def encoded_list_value(levels: int) -> bytes:
    """A google.protobuf.Value of lists nested `levels` deep, encoded by hand.

    Built from the inside out on the wire, as no protobuf library encodes what
    it could not decode.
    """

    def field(number: int, payload: bytes) -> bytes:
        return bytes([(number << 3) | 2]) + _varint(len(payload)) + payload

    value = field(3, b"bottom")  # Value.string_value
    for _ in range(levels):
        value = field(6, field(1, value))  # Value.list_value { values: value }
    return value


def publish_raw(broker: BrokerThread, request: bytes) -> tuple[grpc.StatusCode, str, Any]:
    """Publish bytes as they are: status code, message and the BadRequest details."""
    from grpc_status import rpc_status

    with grpc.insecure_channel(broker.target) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/eventbroker.v1.EventBrokerService/Publish",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            call(request, timeout=WAIT_S)
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)
            fields = []
            for detail in status.details if status else ():
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    fields = [v.field for v in bad.field_violations]
            return error.code(), error.details() or "", fields
    return grpc.StatusCode.OK, "", []


DEEP_PATHS = [
    "grpc data",
    "grpc binary_data",
    "/v1/events",
    "/v1/events[]",
    "Publish",
    "BatchPublish",
]


def refusal_of_deep_json(
    broker: BrokerThread, path: str, levels: int
) -> tuple[str, str, list[str]]:
    """Publish data nested `levels` deep by one path: code name, message and fields refused."""
    deep = nested_json(levels)
    if path == "grpc data":
        event = pb.Event(name="deep.one").SerializeToString()
        value = encoded_list_value(levels)
        event += b"\x12" + _varint(len(value)) + value  # Event.data
        code, message, fields = publish_raw(broker, b"\x0a" + _varint(len(event)) + event)
        return code.name, message, fields
    if path == "grpc binary_data":
        binary = pb.Event(
            name="deep.one", content_type="application/json", binary_data=deep.encode()
        )
        request = pb.PublishRequest(event=binary).SerializeToString()
        code, message, fields = publish_raw(broker, request)
        return code.name, message, fields
    url, body = {
        "/v1/events": ("/v1/events", f'{{"name": "deep.one", "data": {deep}}}'),
        "/v1/events[]": ("/v1/events", f'[{{"name": "deep.one", "data": {deep}}}]'),
        "Publish": ("/v1/rpc/Publish", f'{{"event": {{"name": "deep.one", "data": {deep}}}}}'),
        "BatchPublish": (
            "/v1/rpc/BatchPublish",
            f'{{"events": [{{"name": "deep.one", "data": {deep}}}]}}',
        ),
    }[path]
    status, answer, _ = http(broker, "POST", url, raw=body.encode())
    assert status in (200, 400), (status, answer)
    if status == 200:
        return "OK", "", []
    error = answer["error"]
    return error["code"], error["message"], [v["field"] for v in error["field_violations"]]


@pytest.mark.parametrize("levels", [JSON_DEPTH_MAX + 1, 10_000])
@pytest.mark.parametrize("path", DEEP_PATHS)
def test_json_nested_too_deep_is_refused_on_every_path_naming_field_and_limit(
    broker_server: BrokerThread, path: str, levels: int, caplog: pytest.LogCaptureFixture
) -> None:
    """INVALID_ARGUMENT (HTTP 400) naming the field and the limit; nothing stored or raised."""
    code, message, fields = refusal_of_deep_json(broker_server, path, levels)
    assert code == "INVALID_ARGUMENT", message
    assert f"at most {JSON_DEPTH_MAX} levels deep" in message
    if path == "grpc binary_data":
        assert fields == ["event.binary_data"]
    elif levels > JSON_BODY_DEPTH_MAX and path not in ("grpc data", "grpc binary_data"):
        assert fields == ["body"]  # refused whole before it is parsed
    else:
        assert fields == ["event.data" if path in ("grpc data", "Publish") else "events[0].data"]
    with Client(broker_server.target) as client:
        assert client.get_stats().events == 0
    assert "RecursionError" not in caplog.text


def test_json_at_the_depth_limit_is_taken_on_every_path(broker_server: BrokerThread) -> None:
    """The deepest data allowed passes everywhere, and comes back as it was sent."""
    deep = nested_json(JSON_DEPTH_MAX)
    value = json_format.Parse(deep, struct_pb2.Value())
    ids = []
    with grpc.insecure_channel(broker_server.target) as channel:
        stub = pb_grpc.EventBrokerServiceStub(channel)
        for event in [
            pb.Event(name="deep.data", data=value),
            pb.Event(
                name="deep.binary", content_type="application/json", binary_data=deep.encode()
            ),
        ]:
            ids.append(stub.Publish(pb.PublishRequest(event=event), timeout=WAIT_S).event_id)
    for path, body in [
        ("/v1/events", f'[{{"name": "deep.http", "data": {deep}}}]'),
        ("/v1/rpc/Publish", f'{{"event": {{"name": "deep.rpc", "data": {deep}}}}}'),
        ("/v1/rpc/BatchPublish", f'{{"events": [{{"name": "deep.rpcs", "data": {deep}}}]}}'),
    ]:
        status, answer, _ = http(broker_server, "POST", path, raw=body.encode())
        assert status == 200, (path, answer)
        ids.append(answer.get("event_id") or answer["results"][0]["event_id"])
    with Client(broker_server.target) as client:
        assert [client.get_event(i).data for i in ids] == [json.loads(deep)] * 5


def _varint(number: int) -> bytes:
    """A protobuf varint."""
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)
