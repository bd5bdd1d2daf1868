"""The blocking and asyncio clients against a real broker."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from eventbroker import (
    AlreadyExists,
    AsyncClient,
    BrokerError,
    Client,
    EventSpec,
    InvalidArgument,
    Message,
    NotFound,
    SubscriptionSettingsWarning,
    Unavailable,
)

WAIT_S = 10.0


@pytest.fixture
def client(broker_target: str) -> Iterator[Client]:
    with Client(broker_target) as opened:
        yield opened


@contextmanager
def attached(client: Client, subscription: str) -> Iterator[Generator[list[Message], None, None]]:
    """A consumer stream; its deliveries stay leased to it until it is closed."""
    stream = client.subscribe(subscription, max_outstanding=10)
    try:
        yield stream
    finally:
        stream.close()


# -- publishing ----------------------------------------------------------------


def test_publish_returns_the_id_and_a_repeat_id_is_a_duplicate(client: Client) -> None:
    first = client.publish("user.joined", {"plan": "pro"}, id="signup-42")
    again = client.publish("user.joined", {"plan": "other"}, id="signup-42")
    other = client.publish("user.joined", {"plan": "pro"})
    assert not first.duplicate and first.event_id
    assert again.duplicate and again.event_id == first.event_id
    assert not other.duplicate and other.event_id != first.event_id
    assert client.get_event(first.event_id).data == {"plan": "pro"}


def test_published_fields_are_stored(client: Client) -> None:
    result = client.publish(
        "User.Joined",
        [1, 2.5, "x", None],
        priority=7,
        headers={"source": "signup"},
        ordering_key="user-1",
    )
    info = client.get_event(result.event_id)
    assert info.name == "user.joined"
    assert info.data == [1, 2.5, "x", None]
    assert (info.priority, info.ordering_key) == (7, "user-1")
    assert info.headers == {"source": "signup"}
    assert info.publish_time is not None
    assert abs(info.publish_time - datetime.now(UTC)) < timedelta(seconds=10)


def test_delayed_event_is_scheduled(client: Client) -> None:
    client.create_subscription("later", "invoice.*")
    result = client.publish("invoice.due", {"id": 7}, delay="5m")
    info = client.get_event(result.event_id)
    assert info.delay == timedelta(minutes=5)
    status = info.delivery("later")
    assert status is not None and status.state == "scheduled"
    assert status.next_time is not None
    expected = datetime.now(UTC) + timedelta(minutes=5)
    assert abs(status.next_time - expected) < timedelta(seconds=10)


def test_publish_batch_takes_dicts_and_specs(client: Client) -> None:
    results = client.publish_batch(
        [
            {"name": "order.new", "data": {"n": 1}, "id": "o-1"},
            EventSpec("order.new", b"\x00\x01", content_type="application/x-thing"),
            {"name": "order.paid", "delay": 60},
        ]
    )
    assert len(results) == 3 and len({r.event_id for r in results}) == 3
    assert not any(r.duplicate for r in results)
    binary = client.get_event(results[1].event_id)
    assert (binary.data, binary.content_type) == (b"\x00\x01", "application/x-thing")
    assert client.get_event(results[2].event_id).delay == timedelta(minutes=1)
    (repeat,) = client.publish_batch([{"name": "order.new", "id": "o-1"}])
    assert repeat.duplicate and repeat.event_id == results[0].event_id


def test_bad_batch_stores_nothing_and_names_the_event(client: Client) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.publish_batch([{"name": "ok.one"}, {"name": "bad name!"}])
    assert any(field.startswith("events[1]") for field, _ in caught.value.field_violations)
    assert client.get_stats().events == 0


# -- errors --------------------------------------------------------------------


def test_empty_name_is_invalid_argument_with_a_field_violation(client: Client) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.publish("", {"x": 1})
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    fields = dict(error.field_violations)
    assert "event.name" in fields and "255" in fields["event.name"]
    assert "event.name" in error.message


def test_missing_subscription_is_not_found_with_reason_and_metadata(client: Client) -> None:
    with pytest.raises(NotFound) as caught:
        client.get_subscription("nope")
    assert caught.value.reason == "SUBSCRIPTION_NOT_FOUND"
    assert caught.value.metadata == {"subscription": "nope"}
    assert isinstance(caught.value, BrokerError)


def test_unreachable_broker_is_unavailable_once_the_publish_timeout_runs_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    caplog.set_level(logging.INFO, logger="eventbroker.client")
    started = time.monotonic()
    with Client(f"127.0.0.1:{port}", timeout=5) as offline, pytest.raises(Unavailable):
        offline.publish("user.joined", timeout=1)
    assert 0.5 < time.monotonic() - started < 3
    retries = [r.getMessage() for r in caplog.records if r.name == "eventbroker.client"]
    assert retries and all("publish of user.joined failed (" in m for m in retries)


def test_a_refused_publish_is_not_retried(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="eventbroker.client")
    with pytest.raises(InvalidArgument):
        client.publish("bad name!")
    assert [r for r in caplog.records if r.name == "eventbroker.client"] == []


def test_publish_without_an_id_gets_one_so_a_retry_is_a_duplicate(client: Client) -> None:
    result = client.publish("user.joined")
    first = client.get_event(result.event_id)
    assert first.dedup_id  # made by the client
    (given,) = client.publish_batch(
        [
            {"name": "user.left", "id": "mine"},
        ]
    )
    assert client.get_event(given.event_id).dedup_id == "mine"


def test_publish_reports_matched_subscriptions_and_warns_once_per_name(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    client.create_subscription("mails", "user.*")
    client.create_subscription("audit", ">")
    caplog.set_level(logging.WARNING, logger="eventbroker.client")
    assert client.publish("user.joined", id="j-1").matched_subscriptions == 2
    client.delete_subscription("audit")
    assert client.publish("user.joined").matched_subscriptions == 1
    typo = client.publish("usr.joined", id="t-1")
    assert typo.matched_subscriptions == 0 and not typo.duplicate
    assert client.publish("USR.joined").matched_subscriptions == 0
    repeat = client.publish("user.joined", id="j-1")
    assert repeat.duplicate and repeat.matched_subscriptions == 0
    batch = client.publish_batch([{"name": "user.left"}, {"name": "usr.left"}])
    assert [r.matched_subscriptions for r in batch] == [1, 0]
    warnings = [r.getMessage() for r in caplog.records if r.name == "eventbroker.client"]
    assert warnings == [
        f"no subscription matches usr.joined (event {typo.event_id} is stored, "
        "delivered to nobody)",
        f"no subscription matches usr.left (event {batch[1].event_id} is stored, "
        "delivered to nobody)",
    ]


# -- subscriptions -------------------------------------------------------------


def test_create_get_list_update_delete_subscription(client: Client) -> None:
    created = client.create_subscription(
        "billing",
        ["order.*", "refund.>"],
        ack_deadline="45s",
        max_attempts=5,
        min_backoff="500ms",
        max_backoff=timedelta(minutes=2),
        max_in_flight=8,
        retention="P2D",
    )
    assert created.filter == ("order.*", "refund.>")
    assert created.ack_deadline == timedelta(seconds=45)
    assert (created.max_attempts, created.max_in_flight) == (5, 8)
    assert (created.min_backoff, created.max_backoff) == (
        timedelta(milliseconds=500),
        timedelta(minutes=2),
    )
    assert created.retention == timedelta(days=2)
    assert created.create_time is not None
    assert client.get_subscription("billing") == created

    defaults = client.create_subscription("audit", ">")
    assert defaults.ack_deadline == timedelta(seconds=30) and defaults.max_attempts == 20
    assert defaults.max_in_flight is None
    assert [s.name for s in client.list_subscriptions()] == ["audit", "billing"]

    updated = client.update_subscription("billing", max_attempts=9, filter="order.new")
    assert (updated.max_attempts, updated.filter) == (9, ("order.new",))
    assert updated.ack_deadline == timedelta(seconds=45)

    client.delete_subscription("billing")
    assert [s.name for s in client.list_subscriptions()] == ["audit"]
    with pytest.raises(NotFound):
        client.delete_subscription("billing")


def test_duplicate_subscription_already_exists(client: Client) -> None:
    client.create_subscription("mails", "user.*")
    with pytest.raises(AlreadyExists) as caught:
        client.create_subscription("mails", "user.*")
    assert caught.value.reason == "SUBSCRIPTION_ALREADY_EXISTS"


def test_exist_ok_returns_the_existing_subscription_unchanged(client: Client) -> None:
    created = client.create_subscription("mails", "user.*", max_attempts=5)
    with pytest.warns(SubscriptionSettingsWarning):  # tests/e2e/test_exist_ok.py: what it says
        again = client.create_subscription("mails", "order.*", max_attempts=9, exist_ok=True)
    assert again == created
    assert again.filter == ("user.*",) and again.max_attempts == 5


def test_exist_ok_creates_a_missing_subscription(client: Client) -> None:
    created = client.create_subscription("mails", "user.*", exist_ok=True)
    assert client.get_subscription("mails") == created


def test_async_exist_ok_returns_the_existing_subscription(broker_target: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(broker_target) as client:
            created = await client.create_subscription("mails", "user.*")
            again = await client.create_subscription("mails", "user.*", exist_ok=True)
            assert again == created
            with pytest.raises(AlreadyExists):
                await client.create_subscription("mails", "user.*")

    asyncio.run(asyncio.wait_for(scenario(), WAIT_S))


def test_bad_settings_name_each_field(client: Client) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.create_subscription("s", "a..b", max_attempts=5000)
    fields = [field for field, _ in caught.value.field_violations]
    assert "subscription.max_attempts" in fields
    assert "subscription.filter[0]" in fields


def test_bare_numbers_are_seconds_in_every_setting(client: Client) -> None:
    created = client.create_subscription(
        "timed", "user.*", ack_deadline=30, min_backoff=5, max_backoff=60, retention=3600
    )
    assert created.ack_deadline == timedelta(seconds=30)
    assert (created.min_backoff, created.max_backoff) == (
        timedelta(seconds=5),
        timedelta(seconds=60),
    )
    assert created.retention == timedelta(hours=1)
    published = client.publish("user.joined", delay=90)
    status = client.get_event(published.event_id).delivery("timed")
    assert status is not None and status.next_time is not None
    ahead = status.next_time - datetime.now(UTC)
    assert timedelta(seconds=80) < ahead <= timedelta(seconds=90)


def test_out_of_range_durations_are_refused_before_sending(client: Client) -> None:
    with pytest.raises(
        ValueError, match=r"^ack_deadline must be between 1 s and 12 h; got 0\.5 s$"
    ):
        client.create_subscription("timed", "user.*", ack_deadline=0.5)
    with pytest.raises(ValueError, match=r"retry_delays\[1\] must be between 0 s and 366 days"):
        client.create_subscription("timed", "user.*", retry_delays=[1, "400 days"])
    with pytest.raises(ValueError, match=r"^extension must be between 1 s and 12 h; got 13 h$"):
        client.extend_ack_deadline("some-ack-id", "13h")
    with pytest.raises(NotFound):
        client.get_subscription("timed")


def test_stats_count_deliveries_per_subscription(client: Client) -> None:
    client.create_subscription("mails", "user.*")
    client.publish("user.joined")
    client.publish("user.left", delay="1 hour")
    stats = client.get_stats()
    mails = stats.subscription("mails")
    assert mails is not None and (mails.ready, mails.scheduled) == (1, 1)
    assert stats.events == 2
    assert client.get_stats("mails").subscriptions == (mails,)


# -- consuming -----------------------------------------------------------------


def test_subscribe_then_ack(client: Client) -> None:
    client.create_subscription("mails", "user.*")
    published = client.publish("user.joined", {"plan": "pro"}, headers={"h": "v"})
    with attached(client, "mails") as stream:
        (message,) = next(stream)
        assert (message.event_id, message.name, message.data) == (
            published.event_id,
            "user.joined",
            {"plan": "pro"},
        )
        assert (message.attempt, message.subscription) == (1, "mails")
        assert message.headers == {"h": "v"}
        assert message.ack_deadline is not None and message.ack_deadline > datetime.now(UTC)
        assert client.ack(message).not_applied == ()
        assert client.ack(message.ack_id).not_applied == (message.ack_id,)
    status = client.get_event(published.event_id).delivery("mails")
    assert status is not None and status.state == "acked"


def test_nack_with_delay_schedules_and_terminal_nack_dead_letters(client: Client) -> None:
    client.create_subscription("jobs", "job.*")
    retried = client.publish("job.retry")
    doomed = client.publish("job.doomed")
    with attached(client, "jobs") as stream:
        by_name = {m.name: m for m in next(stream)}
        if len(by_name) < 2:
            by_name |= {m.name: m for m in next(stream)}
        later = client.nack(by_name["job.retry"], delay="1 hour", error="later")
        assert later.not_applied == ()
        client.nack([by_name["job.doomed"]], terminal=True, error="ValueError('bad')")
    retry_status = client.get_event(retried.event_id).delivery("jobs")
    assert retry_status is not None and retry_status.state == "scheduled"
    assert retry_status.last_error == "later"
    dead_status = client.get_event(doomed.event_id).delivery("jobs")
    assert dead_status is not None
    assert (dead_status.state, dead_status.dead_reason) == ("dead", "nacked_terminal")
    assert dead_status.history and dead_status.history[-1].error == "ValueError('bad')"


def test_extend_ack_deadline_moves_the_lease(client: Client) -> None:
    client.create_subscription("slow", "job.*", ack_deadline="10s")
    published = client.publish("job.long")
    with attached(client, "slow") as stream:
        (message,) = next(stream)
        assert client.extend_ack_deadline(message, "10m").not_applied == ()
        status = client.get_event(published.event_id).delivery("slow")
    assert status is not None and status.next_time is not None
    assert status.next_time - datetime.now(UTC) > timedelta(minutes=9)
    assert client.extend_ack_deadline("unknown-ack-id", 5).not_applied == ("unknown-ack-id",)


def test_tail_sees_new_events_without_acks(client: Client, broker_target: str) -> None:
    seen = threading.Event()
    errors: list[BaseException] = []

    def publish_until_seen() -> None:
        with Client(broker_target) as publisher:
            try:
                while not seen.is_set():
                    publisher.publish("user.tailed", {"n": 1})
                    seen.wait(0.05)
            except BaseException as error:
                errors.append(error)
                raise

    publisher = threading.Thread(target=publish_until_seen, daemon=True)
    publisher.start()
    tail = client.tail("user.*")
    try:
        message = next(tail)
    finally:
        seen.set()
        tail.close()
        publisher.join(WAIT_S)
    assert (message.name, message.data, message.ack_id) == ("user.tailed", {"n": 1}, "")
    assert message.subscription == "" and message.ack_deadline is None
    assert errors == []


# -- asyncio -------------------------------------------------------------------


def test_async_client_publishes_consumes_and_acks(broker_target: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(broker_target) as client:
            await client.create_subscription("mails", "user.*")
            first = await client.publish("user.joined", {"n": 1}, id="a-1")
            again = await client.publish("user.joined", {"n": 1}, id="a-1")
            assert again.duplicate and again.event_id == first.event_id
            (batch_result,) = await client.publish_batch([EventSpec("user.left")])
            stream = client.subscribe("mails", max_outstanding=2, max_batch_size=2)
            received: list[Message] = []
            async for batch in stream:
                received.extend(batch)
                if len(received) == 2:
                    break
            assert {m.event_id for m in received} == {first.event_id, batch_result.event_id}
            assert (await client.ack(received)).not_applied == ()
            await stream.aclose()
            info = await client.get_event(first.event_id)
            status = info.delivery("mails")
            assert status is not None and status.state == "acked"
            with pytest.raises(NotFound):
                await client.get_subscription("nope")
            assert [s.name for s in await client.list_subscriptions()] == ["mails"]

    asyncio.run(asyncio.wait_for(scenario(), WAIT_S))
