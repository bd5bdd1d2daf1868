"""API keys: every RPC needs a valid key with its scope once a key exists."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from broker.app import BrokerApp
from broker.config import Settings, SettingsError
from broker.domain import Scope
from broker.storage import open_storage
from eventbroker import Client, PermissionDenied, ResourceExhausted, Unauthenticated
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.conftest import TEST_SETTINGS, BrokerThread
from tests.e2e.keys import make_key
from tests.e2e.streams import StreamReader, subscribe

WAIT_S = 10.0
Stub = pb_grpc.EventBrokerServiceStub


@pytest.fixture
def broker_settings(any_database_settings: Settings) -> Settings:
    """Keys are read on every call, so a key made by a test counts at once."""
    return dataclasses.replace(any_database_settings, api_key_cache_s=0.0)


@pytest.fixture
def keys(broker_settings: Settings, broker_target: str) -> dict[str, str]:
    """One key per scope, one with all of them, made after the broker started."""
    url = broker_settings.database_url
    return {
        "publish": make_key(url, Scope.PUBLISH),
        "subscribe": make_key(url, Scope.SUBSCRIBE),
        "admin": make_key(url, Scope.ADMIN),
        "all": make_key(url, Scope.PUBLISH, Scope.SUBSCRIBE, Scope.ADMIN),
    }


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        result = call()
        if hasattr(result, "__next__"):  # a stream: its status comes with the first read
            try:
                next(result)
            finally:
                result.cancel()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


NOW = timestamp_pb2.Timestamp(seconds=int(time.time()))

#: Every RPC of the service, a request for it, and the scope it needs.
RPCS: list[tuple[str, Any, Scope]] = [
    ("Publish", pb.PublishRequest(event=pb.Event(name="order.new")), Scope.PUBLISH),
    (
        "BatchPublish",
        pb.BatchPublishRequest(events=[pb.Event(name="order.new")]),
        Scope.PUBLISH,
    ),
    ("Subscribe", pb.SubscribeRequest(subscription="billing"), Scope.SUBSCRIBE),
    ("Ack", pb.AckRequest(ack_ids=["1-1"]), Scope.SUBSCRIBE),
    ("Nack", pb.NackRequest(ack_ids=["1-1"]), Scope.SUBSCRIBE),
    (
        "ExtendAckDeadline",
        pb.ExtendAckDeadlineRequest(ack_ids=["1-1"], extension=duration_pb2.Duration(seconds=30)),
        Scope.SUBSCRIBE,
    ),
    (
        "CreateSubscription",
        pb.CreateSubscriptionRequest(subscription=pb.Subscription(name="new", filter=["a.b"])),
        Scope.ADMIN,
    ),
    ("GetSubscription", pb.GetSubscriptionRequest(name="billing"), Scope.ADMIN),
    ("ListSubscriptions", pb.ListSubscriptionsRequest(), Scope.ADMIN),
    (
        "UpdateSubscription",
        pb.UpdateSubscriptionRequest(
            subscription=pb.Subscription(name="billing", max_attempts=3),
            update_mask=["max_attempts"],
        ),
        Scope.ADMIN,
    ),
    ("DeleteSubscription", pb.DeleteSubscriptionRequest(name="gone"), Scope.ADMIN),
    ("GetEvent", pb.GetEventRequest(event_id="01ARZ3NDEKTSV4RRFFQ69G5FAV"), Scope.ADMIN),
    ("ListDeadLetters", pb.ListDeadLettersRequest(subscription="billing"), Scope.ADMIN),
    (
        "RedriveDeadLetters",
        pb.RedriveDeadLettersRequest(subscription="billing", all=True),
        Scope.ADMIN,
    ),
    ("Seek", pb.SeekRequest(subscription="billing", time=NOW), Scope.ADMIN),
    ("GetStats", pb.GetStatsRequest(), Scope.ADMIN),
]


@pytest.fixture
def stub_with_subscription(stub: Stub) -> Stub:
    """The subscription the requests above name, made while the broker is still open."""
    stub.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(name="billing", filter=["order.*"])
        )
    )
    stub.CreateSubscription(
        pb.CreateSubscriptionRequest(subscription=pb.Subscription(name="gone", filter=["x.y"]))
    )
    # Something to deliver, so that an allowed Subscribe answers with a message at once.
    stub.Publish(pb.PublishRequest(event=pb.Event(name="order.placed")))
    return stub


@pytest.mark.parametrize(("rpc", "request_message", "scope"), RPCS, ids=[r[0] for r in RPCS])
def test_every_rpc_needs_a_valid_key_with_its_scope(
    stub_with_subscription: Stub,
    keys: dict[str, str],
    rpc: str,
    request_message: Any,
    scope: Scope,
) -> None:
    method = getattr(stub_with_subscription, rpc)

    def call(metadata: Any = None) -> Callable[[], Any]:
        return lambda: method(request_message, metadata=metadata, timeout=WAIT_S)

    assert code_of(call()) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(call(bearer("ebk_nope_nope"))) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(call((("authorization", "Basic abc"),))) == grpc.StatusCode.UNAUTHENTICATED
    wrong = next(name for name in ("publish", "subscribe", "admin") if name != scope.value)
    assert code_of(call(bearer(keys[wrong]))) == grpc.StatusCode.PERMISSION_DENIED
    tampered = keys[scope.value][:-2] + ("AA" if not keys[scope.value].endswith("AA") else "BB")
    assert code_of(call(bearer(tampered))) == grpc.StatusCode.UNAUTHENTICATED
    allowed = code_of(call(bearer(keys[scope.value])))
    assert allowed not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    everything = code_of(call(bearer(keys["all"])))  # may differ: e.g. ALREADY_EXISTS now
    assert everything not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def test_name_patterns_limit_what_a_key_publishes_and_uses(
    broker_settings: Settings, stub: Stub, broker_target: str
) -> None:
    stub.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(name="orders-billing", filter=["orders.>"])
        )
    )
    url = broker_settings.database_url
    orders = make_key(url, Scope.PUBLISH, Scope.ADMIN, names=("orders.>", "orders-billing"))
    with Client(broker_target, api_key=orders) as client:
        assert client.publish("orders.created", {"n": 1}).event_id
        with pytest.raises(PermissionDenied) as denied:
            client.publish("users.created")
        assert denied.value.reason == "NAME_NOT_ALLOWED"
        assert "users.created" in denied.value.message
        with pytest.raises(PermissionDenied):
            client.publish_batch([{"name": "orders.paid"}, {"name": "users.paid"}])
        assert [s.name for s in client.list_subscriptions()] == ["orders-billing"]
        with pytest.raises(PermissionDenied):
            client.create_subscription("mails", "users.*")
        stats = client.get_stats()
    orders_stats = stats.subscription("orders-billing")
    # One event stored: the refused batch left nothing behind.
    assert orders_stats is not None and orders_stats.ready == 1


def test_a_revoked_key_stops_working(
    broker_settings: Settings, keys: dict[str, str], broker_target: str
) -> None:
    token = keys["publish"]
    with Client(broker_target, api_key=token) as client:
        assert client.publish("order.new").event_id
        storage = open_storage(broker_settings.database_url)
        try:
            with storage.write() as tx:
                assert tx.api_key_revoke(token.split("_")[1], time.time_ns() // 1000)
        finally:
            storage.close()
        deadline = time.monotonic() + WAIT_S  # keys are re-read within a few seconds

        def publish_until_refused() -> None:
            while time.monotonic() < deadline:
                client.publish("order.new")

        with pytest.raises(Unauthenticated, match="revoked"):
            publish_until_refused()


def test_health_and_reflection_stay_open(keys: dict[str, str], broker_target: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(broker_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def exposed_settings(broker_settings: Settings) -> Settings:
    return dataclasses.replace(broker_settings, listen="0.0.0.0:0")


def test_listening_beyond_loopback_without_keys_needs_insecure(
    exposed_settings: Settings,
) -> None:
    app = BrokerApp(exposed_settings)
    with pytest.raises(SettingsError, match="--insecure"):
        asyncio.run(app.start())
    broker = BrokerThread(dataclasses.replace(exposed_settings, insecure=True)).start()
    try:
        with Client(f"127.0.0.1:{broker.port}") as client:
            assert client.publish("order.new").event_id
    finally:
        broker.stop()


def test_keys_from_the_command_line(broker_settings: Settings, tmp_path: Any) -> None:
    url = broker_settings.database_url
    storage = open_storage(url)  # the database `broker serve` makes: keys never create one
    storage.migrate()
    storage.close()

    def broker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from broker.cli import main; main()", "keys", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"BROKER_DATABASE_URL": url, "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        )

    made = broker("create", "billing", "--scope", "publish", "--names", "orders.>")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("ebk_")
    key_id = token.split("_")[1]
    listed = broker("list")
    assert key_id in listed.stdout and "orders.>" in listed.stdout
    assert "billing" in listed.stdout and "publish" in listed.stdout
    assert broker("revoke", key_id).returncode == 0
    again = broker("revoke", key_id)
    assert again.returncode == 1 and "revoked already" in again.stderr
    bad = broker("create", "x", "--scope", "nonsense")
    assert bad.returncode == 2


def test_a_key_with_a_publish_rate_is_held_to_it(
    broker_settings: Settings, broker_target: str
) -> None:
    token = make_key(broker_settings.database_url, Scope.PUBLISH, Scope.ADMIN, publish_rate=5)
    with Client(broker_target, api_key=token) as client:
        # More than the rate in one call can never fit in a second.
        with pytest.raises(ResourceExhausted) as exhausted:
            client.publish_batch([{"name": "order.new"}] * 6)
        assert exhausted.value.reason == "PUBLISH_RATE_EXCEEDED"
        assert "at most 5 events per second" in exhausted.value.message
        assert len(client.publish_batch([{"name": "order.new"}] * 5)) == 5
        assert client.get_stats().events == 5  # the refused batch stored nothing


def test_stream_limits_in_all_and_per_connection(
    broker_settings: Settings, readers: list[StreamReader]
) -> None:
    settings = dataclasses.replace(broker_settings, max_streams=2, max_streams_per_connection=1)
    broker = BrokerThread(settings).start()
    channels = [
        grpc.insecure_channel(broker.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(3)
    ]
    try:
        first, second, third = (pb_grpc.EventBrokerServiceStub(c) for c in channels)
        first.CreateSubscription(
            pb.CreateSubscriptionRequest(subscription=pb.Subscription(name="s", filter=["a.b"]))
        )
        held = subscribe(first, readers, "s")
        assert held.nothing_within(0.2) and held.error is None
        again = subscribe(first, readers, "s")
        assert again.ended.wait(WAIT_S) and again.error is not None
        assert again.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-streams-per-connection" in (again.error.details() or "")
        other = subscribe(second, readers, "s")
        assert other.nothing_within(0.2) and other.error is None
        over = subscribe(third, readers, "s")
        assert over.ended.wait(WAIT_S) and over.error is not None
        assert over.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-streams)" in (over.error.details() or "")
        held.close()  # a slot frees
        after = subscribe(third, readers, "s")
        assert after.nothing_within(0.3) and after.error is None
    finally:
        for reader in readers:
            reader.close()
        for channel in channels:
            channel.close()
        broker.stop()


def revoke(database_url: str, token: str) -> None:
    """Revoke a key in the database, as `broker keys revoke` does."""
    storage = open_storage(database_url)
    try:
        with storage.write() as tx:
            assert tx.api_key_revoke(token.split("_")[1], time.time_ns() // 1000)
    finally:
        storage.close()


def key_before_start(database_url: str, *scopes: Scope) -> str:
    """A key made in a database no broker has opened yet (migrated first)."""
    storage = open_storage(database_url)
    try:
        storage.migrate()
    finally:
        storage.close()
    return make_key(database_url, *scopes)


def error_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """The status code and message a unary call ends with."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def wait_until_closed_for_want_of_keys(stub: Stub) -> None:
    """Poll GetStats without a key until the broker has read that no key is active.

    Before the reload a call without a key is refused for lacking one; after
    it, for want of any active key. An answer of OK means the broker opened.
    """
    deadline = time.monotonic() + WAIT_S
    while True:
        code, message = error_of(lambda: stub.GetStats(pb.GetStatsRequest(), timeout=WAIT_S))
        assert code == grpc.StatusCode.UNAUTHENTICATED, f"a call without a key got {code}"
        if "no active API key" in message:
            return
        assert time.monotonic() < deadline, f"the revocation was not read: {message}"


@pytest.mark.parametrize("exposed_address", ["listen", "http_listen"])
def test_revoking_the_last_key_leaves_a_broker_beyond_loopback_closed(
    broker_settings: Settings, exposed_address: str
) -> None:
    """Bound to 0.0.0.0 (gRPC or HTTP), reached through 127.0.0.1 only."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from tests.e2e.test_http import http

    settings = dataclasses.replace(broker_settings, api_key_cache_s=0.2)
    if exposed_address == "listen":
        settings = dataclasses.replace(settings, listen="0.0.0.0:0")
    else:
        settings = dataclasses.replace(settings, http_listen="0.0.0.0:0")
    token = key_before_start(settings.database_url, Scope.PUBLISH, Scope.SUBSCRIBE, Scope.ADMIN)
    broker = BrokerThread(settings).start()
    try:
        with grpc.insecure_channel(broker.target) as channel:
            stub = Stub(channel)
            assert stub.GetStats(pb.GetStatsRequest(), metadata=bearer(token), timeout=WAIT_S)
            revoke(settings.database_url, token)
            wait_until_closed_for_want_of_keys(stub)
            for rpc, request_message, _ in RPCS:
                method = getattr(stub, rpc)
                for metadata in (None, bearer(token), bearer("ebk_nope_nope")):
                    code = code_of(functools.partial(method, request_message, metadata=metadata))
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (rpc, metadata, code)
            code, message = error_of(
                lambda: stub.CreateSubscription(
                    pb.CreateSubscriptionRequest(
                        subscription=pb.Subscription(name="open", filter=["a.b"])
                    )
                )
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert "no active API key" in message and "broker keys create" in message
            status, body, _ = http(broker, "POST", "/v1/events", {"name": "order.new"})
            assert status == 401 and body["error"]["reason"] == "API_KEY_NONE_ACTIVE"
            assert http(broker, "POST", "/v1/rpc/GetStats", {})[0] == 401
            assert http(broker, "GET", "/metrics")[0] == 401
            assert http(broker, "GET", "/healthz")[0] == 200
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            (answer,) = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=WAIT_S
            )
            services = {s.name for s in answer.list_services_response.service}
            assert "eventbroker.v1.EventBrokerService" in services
            # A new key opens the broker to its holder again, and to nobody else.
            fresh = make_key(settings.database_url, Scope.ADMIN)
            deadline = time.monotonic() + WAIT_S
            while code_of(lambda: stub.GetStats(pb.GetStatsRequest(), metadata=bearer(fresh))) != (
                grpc.StatusCode.OK
            ):
                assert time.monotonic() < deadline, "the new key was not read"
            code, message = error_of(lambda: stub.GetStats(pb.GetStatsRequest()))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "needs an API key" in message
            assert stub.GetStats(pb.GetStatsRequest(), metadata=bearer(fresh)).events == 0
    finally:
        broker.stop()


def test_revoking_the_last_key_reopens_a_loopback_broker(broker_settings: Settings) -> None:
    """On loopback only, no active key means open, as before any key was made."""
    settings = dataclasses.replace(broker_settings, api_key_cache_s=0.2)
    token = key_before_start(settings.database_url, Scope.ADMIN)
    broker = BrokerThread(settings).start()
    try:
        with grpc.insecure_channel(broker.target) as channel:
            stub = Stub(channel)
            assert code_of(lambda: stub.GetStats(pb.GetStatsRequest())) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
            revoke(settings.database_url, token)
            deadline = time.monotonic() + WAIT_S
            while code_of(lambda: stub.GetStats(pb.GetStatsRequest())) != grpc.StatusCode.OK:
                assert time.monotonic() < deadline, "the revocation was not read"
    finally:
        broker.stop()


def test_each_broker_of_a_database_decides_from_its_own_addresses(postgres_url: str) -> None:
    """Two brokers on one PostgreSQL database: the exposed one closes, the loopback one opens."""
    settings = dataclasses.replace(TEST_SETTINGS, database_url=postgres_url, api_key_cache_s=0.2)
    token = key_before_start(postgres_url, Scope.ADMIN)
    exposed = BrokerThread(dataclasses.replace(settings, listen="0.0.0.0:0")).start()
    loopback = BrokerThread(settings).start()
    try:
        with (
            grpc.insecure_channel(exposed.target) as exposed_channel,
            grpc.insecure_channel(loopback.target) as loopback_channel,
        ):
            exposed_stub, loopback_stub = Stub(exposed_channel), Stub(loopback_channel)
            revoke(postgres_url, token)
            wait_until_closed_for_want_of_keys(exposed_stub)
            deadline = time.monotonic() + WAIT_S
            while code_of(lambda: loopback_stub.GetStats(pb.GetStatsRequest())) != (
                grpc.StatusCode.OK
            ):
                assert time.monotonic() < deadline, "the loopback broker missed the revocation"
            code, _ = error_of(lambda: exposed_stub.GetStats(pb.GetStatsRequest()))
            assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        loopback.stop()
        exposed.stop()
