"""The clients' admin calls against a real broker: dead letters, redrive, seek, settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from eventbroker import (
    AsyncClient,
    Client,
    DeadLetterInfo,
    Message,
    NotFound,
    SeekResult,
)
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.streams import StreamReader, subscribe

WAIT_S = 10.0


@pytest.fixture
def client(broker_target: str) -> Iterator[Client]:
    with Client(broker_target) as opened:
        yield opened


def kill(client: Client, reader: StreamReader, count: int, *, terminal: bool = True) -> list[str]:
    """Take `count` deliveries and nack each (terminal by default); their event ids in order."""
    deliveries = reader.take(count)
    result = client.nack([d.ack_id for d in deliveries], terminal=terminal, error="boom")
    assert result.not_applied == ()
    return [d.event_id for d in deliveries]


def state(client: Client, event_id: str, subscription: str) -> str | None:
    """Where an event's delivery stands in a subscription; None if it has none there."""
    status = client.get_event(event_id).delivery(subscription)
    return status.state if status is not None else None


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Poll the broker's state until `condition` holds (bounded); fail if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


# -- listing -------------------------------------------------------------------


def test_terminal_nack_is_listed_with_reason_error_and_history(
    client: Client, stub: pb_grpc.EventBrokerServiceStub, readers: list[StreamReader]
) -> None:
    client.create_subscription("jobs", "job.*")
    client.create_subscription("audit", "job.*")
    reader = subscribe(stub, readers, "jobs", consumer_name="worker-1")
    published = client.publish("job.run", {"n": 7}, headers={"h": "v"}, priority=3)
    (delivery,) = reader.take(1)
    client.nack(delivery.ack_id, terminal=True, error="ValueError('bad input')")

    page = client.list_dead_letters("jobs")
    assert page.next_page_token is None
    (letter,) = page.items
    assert (letter.event_id, letter.name, letter.data) == (published.event_id, "job.run", {"n": 7})
    assert (letter.headers, letter.priority, letter.subscription) == ({"h": "v"}, 3, "jobs")
    assert letter.reason == "nacked_terminal"
    assert letter.last_error == "ValueError('bad input')"
    assert letter.attempts == 1
    assert "nacked it as terminal" in letter.description
    (attempt,) = letter.history
    assert (attempt.attempt, attempt.outcome) == (1, "nacked")
    assert attempt.error == "ValueError('bad input')"
    assert attempt.consumer.startswith("worker-1")
    assert letter.dead_time is not None and letter.dead_time == attempt.end_time
    assert abs(letter.dead_time - datetime.now(UTC)) < timedelta(seconds=10)
    assert letter.publish_time is not None and letter.publish_time <= letter.dead_time

    assert client.get_dead_letter("jobs", published.event_id) == letter
    assert client.get_dead_letter("audit", published.event_id) is None
    assert client.list_dead_letters("audit").items == ()
    with pytest.raises(NotFound):
        client.list_dead_letters("nope")


def test_filters_by_name_and_reason(
    client: Client, stub: pb_grpc.EventBrokerServiceStub, readers: list[StreamReader]
) -> None:
    client.create_subscription("tasks", "task.*", max_attempts=1)
    reader = subscribe(stub, readers, "tasks", max_outstanding=10)
    a_ids = [r.event_id for r in client.publish_batch([{"name": "task.a"}] * 2)]
    (b_id,) = [r.event_id for r in client.publish_batch([{"name": "task.b"}])]
    deliveries = {d.event_id: d for d in reader.take(3)}
    client.nack([deliveries[e].ack_id for e in a_ids], error="downstream down")
    client.nack(deliveries[b_id].ack_id, terminal=True, error="poison")

    named = client.list_dead_letters("tasks", name="task.a").items
    assert sorted(d.event_id for d in named) == sorted(a_ids)
    assert {d.reason for d in named} == {"attempts_exhausted"}
    assert {d.last_error for d in named} == {"downstream down"}
    assert all(d.dead_time is not None for d in named)
    (poison,) = client.list_dead_letters("tasks", reason="nacked_terminal").items
    assert (poison.event_id, poison.reason) == (b_id, "nacked_terminal")
    both = client.list_dead_letters("tasks", name="TASK.A", reason="ATTEMPTS_EXHAUSTED")
    assert len(both.items) == 2
    assert client.list_dead_letters("tasks", name="task.a", reason="nacked_terminal").items == ()
    assert client.list_dead_letters("tasks", reason="expired").items == ()
    with pytest.raises(ValueError, match="attempts_exhausted"):
        client.list_dead_letters("tasks", reason="tired")


def test_pages_with_a_small_page_size(
    client: Client, stub: pb_grpc.EventBrokerServiceStub, readers: list[StreamReader]
) -> None:
    client.create_subscription("many", "task.*")
    reader = subscribe(stub, readers, "many", max_outstanding=10)
    client.publish_batch([{"name": "task.p", "data": {"i": i}} for i in range(5)])
    dead = kill(client, reader, 5)

    pages = []
    token: str | None = None
    while True:
        page = client.list_dead_letters("many", page_size=2, page_token=token)
        pages.append(page.items)
        token = page.next_page_token
        if token is None:
            break
    assert [len(items) for items in pages] == [2, 2, 1]
    listed = [d.event_id for items in pages for d in items]
    assert sorted(listed) == sorted(dead) and len(set(listed)) == 5
    everything = list(client.iter_dead_letters("many", page_size=2))
    assert [d.event_id for d in everything] == listed
    assert sorted(d.data["i"] for d in everything) == [0, 1, 2, 3, 4]


# -- redrive -------------------------------------------------------------------


def test_redrive_by_ids_delivers_them_again_from_attempt_one(
    client: Client, stub: pb_grpc.EventBrokerServiceStub, readers: list[StreamReader]
) -> None:
    client.create_subscription("jobs", "job.*")
    reader = subscribe(stub, readers, "jobs", max_outstanding=10)
    client.publish_batch([{"name": "job.x"}] * 3)
    dead = kill(client, reader, 3)

    assert client.redrive_dead_letters("jobs", event_ids=dead[:2]) == 2
    again = reader.take(2)
    assert sorted(d.event_id for d in again) == sorted(dead[:2])
    assert {d.attempt for d in again} == {1}
    assert [d.event_id for d in client.iter_dead_letters("jobs")] == [dead[2]]
    # In flight now, no longer dead: redriving them again does nothing.
    assert client.redrive_dead_letters("jobs", event_ids=dead[:2]) == 0
    assert client.redrive_dead_letters("jobs", event_ids=[]) == 0
    assert client.redrive_dead_letters("jobs", event_ids=dead[2]) == 1
    assert [d.event_id for d in reader.take(1)] == [dead[2]]
    assert reader.nothing_within(0.2)


def test_redrive_all_narrowed_by_name_then_everything(
    client: Client, stub: pb_grpc.EventBrokerServiceStub, readers: list[StreamReader]
) -> None:
    client.create_subscription("jobs", "job.*")
    reader = subscribe(stub, readers, "jobs", max_outstanding=10)
    a_ids = [r.event_id for r in client.publish_batch([{"name": "job.a"}] * 2)]
    b_ids = [r.event_id for r in client.publish_batch([{"name": "job.b"}] * 3)]
    kill(client, reader, 5)

    assert client.redrive_dead_letters("jobs", all=True, name="job.a") == 2
    assert sorted(d.event_id for d in reader.take(2)) == sorted(a_ids)
    assert client.redrive_dead_letters("jobs", all=True, reason="expired") == 0
    assert client.redrive_dead_letters("jobs", all=True) == 3
    redriven = reader.take(3)
    assert sorted(d.event_id for d in redriven) == sorted(b_ids)
    assert {d.attempt for d in redriven} == {1}
    assert client.list_dead_letters("jobs").items == ()
    stats = client.get_stats("jobs").subscription("jobs")
    assert stats is not None and (stats.dead, stats.in_flight) == (0, 5)


def test_redrive_needs_ids_or_all_and_not_both(client: Client) -> None:
    client.create_subscription("jobs", "job.*")
    with pytest.raises(ValueError, match="all=True"):
        client.redrive_dead_letters("jobs")
    with pytest.raises(ValueError, match="not both"):
        client.redrive_dead_letters("jobs", event_ids=["x"], all=True)
    with pytest.raises(ValueError, match="reason"):
        client.redrive_dead_letters("jobs", all=True, reason="sad")
    with pytest.raises(NotFound):
        client.redrive_dead_letters("nope", all=True)


def test_redrive_of_more_ids_than_one_transaction_takes_them_all(
    client: Client, stub: pb_grpc.EventBrokerServiceStub, readers: list[StreamReader]
) -> None:
    count = 1_005  # the broker redrives in transactions of 1,000
    client.create_subscription("bulk", "job.*")
    reader = subscribe(stub, readers, "bulk", max_outstanding=2_000, max_batch_size=500)
    client.publish_batch([{"name": "job.bulk"}] * 1_000)
    client.publish_batch([{"name": "job.bulk"}] * (count - 1_000))
    dead = kill(client, reader, count)
    # One raw call with every id, as grpcurl would send it (the client sends chunks).
    response = stub.RedriveDeadLetters(
        pb.RedriveDeadLettersRequest(subscription="bulk", event_ids=dead)
    )
    assert response.redriven_count == count
    assert client.list_dead_letters("bulk").items == ()
    assert len(reader.take(count)) == count


# -- seek ------------------------------------------------------------------------


def test_seek_back_replays_acked_events(
    client: Client, stub: pb_grpc.EventBrokerServiceStub, readers: list[StreamReader]
) -> None:
    client.create_subscription("replay", "task.*")
    reader = subscribe(stub, readers, "replay", max_outstanding=10)
    start = datetime.now(UTC) - timedelta(seconds=1)
    ids = [r.event_id for r in client.publish_batch([{"name": "task.r"}] * 3)]
    first = reader.take(3)
    assert client.ack([d.ack_id for d in first]).not_applied == ()
    assert reader.nothing_within(0.2)

    assert client.seek("replay", start) == SeekResult(replayed=3, skipped=0)
    again = reader.take(3)
    assert sorted(d.event_id for d in again) == sorted(ids)
    assert {d.attempt for d in again} == {1}
    assert state(client, ids[0], "replay") == "in_flight"


def test_seek_forward_skips_the_backlog(
    client: Client, stub: pb_grpc.EventBrokerServiceStub, readers: list[StreamReader]
) -> None:
    client.create_subscription("skip", "task.*")
    backlog = [r.event_id for r in client.publish_batch([{"name": "task.old"}] * 3)]
    waiting = client.get_stats("skip").subscription("skip")
    assert waiting is not None and waiting.ready == 3

    result = client.seek("skip", datetime.now(UTC).replace(tzinfo=None))  # naive means UTC
    assert result == SeekResult(replayed=0, skipped=3)
    skipped = client.get_stats("skip").subscription("skip")
    assert skipped is not None and (skipped.ready, skipped.acked) == (0, 3)
    assert {state(client, e, "skip") for e in backlog} == {"acked"}
    fresh = client.publish("task.new")
    reader = subscribe(stub, readers, "skip", max_outstanding=10)
    (delivery,) = reader.take(1)
    assert delivery.event_id == fresh.event_id
    assert reader.nothing_within(0.2)
    with pytest.raises(TypeError):
        client.seek("skip", "yesterday")  # type: ignore[arg-type]


# -- settings --------------------------------------------------------------------


def test_max_age_and_retry_delays_round_trip(client: Client) -> None:
    plain = client.create_subscription("plain", "user.*")
    assert (plain.max_age, plain.retry_delays) == (None, ())

    created = client.create_subscription(
        "aged",
        "user.*",
        max_age="1 hour",
        retry_delays=["1s", 30, timedelta(minutes=5)],
    )
    assert created.max_age == timedelta(hours=1)
    assert created.retry_delays == (
        timedelta(seconds=1),
        timedelta(seconds=30),
        timedelta(minutes=5),
    )
    assert client.get_subscription("aged") == created

    longer = client.update_subscription("aged", max_age="2h")
    assert longer.max_age == timedelta(hours=2) and longer.retry_delays == created.retry_delays
    no_table = client.update_subscription("aged", retry_delays=[])
    assert no_table.retry_delays == () and no_table.max_age == timedelta(hours=2)
    constant = client.update_subscription("aged", retry_delays="10s", max_age=None)
    assert constant.retry_delays == (timedelta(seconds=10),) and constant.max_age is None
    assert client.get_subscription("aged") == constant
    assert constant.max_attempts == created.max_attempts

    with pytest.raises(ValueError, match=r"^max_age must be at least 1 s; got 0\.5 s$"):
        client.update_subscription("aged", max_age="500ms")
    with pytest.raises(ValueError, match=r"retry_delays\[1\]"):
        client.update_subscription("aged", retry_delays=["1s", "soon"])


def test_retry_table_sets_the_delay_after_a_nack(
    client: Client, stub: pb_grpc.EventBrokerServiceStub, readers: list[StreamReader]
) -> None:
    client.create_subscription("table", "task.*", retry_delays=["100s", "1h"])
    reader = subscribe(stub, readers, "table")
    published = client.publish("task.t")
    (delivery,) = reader.take(1)
    client.nack(delivery.ack_id, error="later")
    status = client.get_event(published.event_id).delivery("table")
    assert status is not None and status.state == "scheduled" and status.next_time is not None
    retry_in = status.next_time - datetime.now(UTC)
    assert timedelta(seconds=90) < retry_in <= timedelta(seconds=100)


def test_max_age_dead_letters_old_events_as_expired(client: Client) -> None:
    client.create_subscription("fresh-only", "task.*", max_age="1s")
    published = client.publish("task.stale")
    # Nobody consumes: once the event is older than a second the broker's
    # maintenance dead-letters it.
    wait_until(lambda: bool(client.list_dead_letters("fresh-only").items))
    (letter,) = client.list_dead_letters("fresh-only", reason="expired").items
    assert (letter.event_id, letter.reason, letter.attempts) == (published.event_id, "expired", 0)
    assert letter.history == () and letter.dead_time is not None
    assert letter.publish_time is not None
    assert letter.dead_time - letter.publish_time >= timedelta(seconds=1)
    assert "maximum age" in letter.description


def test_ordered_delivery_waiting_for_its_key_is_blocked(client: Client) -> None:
    client.create_subscription("fifo", "task.*", ordered=True)
    first = client.publish("task.o", ordering_key="k")
    second = client.publish("task.o", ordering_key="k")
    head = client.get_event(first.event_id).delivery("fifo")
    behind = client.get_event(second.event_id).delivery("fifo")
    assert head is not None and head.state == "ready"
    assert behind is not None and behind.state == "blocked"
    assert "ordering key 'k'" in behind.reason


# -- asyncio -------------------------------------------------------------------


def test_async_client_lists_redrives_and_seeks(broker_target: str) -> None:
    async def take(stream: AsyncGenerator[list[Message], None], count: int) -> list[Message]:
        got: list[Message] = []
        while len(got) < count:
            got.extend(await asyncio.wait_for(anext(stream), WAIT_S))
        return got

    async def scenario() -> None:
        async with AsyncClient(broker_target) as client:
            await client.create_subscription("jobs", "job.*", retry_delays=["5s"])
            start = datetime.now(UTC) - timedelta(seconds=1)
            published = await client.publish_batch([{"name": "job.a"}, {"name": "job.b"}])
            ids = sorted(r.event_id for r in published)
            stream = client.subscribe("jobs", max_outstanding=10)
            try:
                first = await take(stream, 2)
                await client.nack(first, terminal=True, error="nope")
                letters: list[DeadLetterInfo] = [
                    d async for d in client.iter_dead_letters("jobs", page_size=1)
                ]
                assert sorted(d.event_id for d in letters) == ids
                assert {d.reason for d in letters} == {"nacked_terminal"}
                page = await client.list_dead_letters("jobs", name="job.b")
                assert [d.name for d in page.items] == ["job.b"]
                assert await client.get_dead_letter("jobs", page.items[0].event_id) is not None

                assert await client.redrive_dead_letters("jobs", all=True) == 2
                again = await take(stream, 2)
                assert sorted(m.event_id for m in again) == ids
                assert {m.attempt for m in again} == {1}
                await client.ack(again)

                await client.seek("jobs", start)
                replayed = await take(stream, 2)
                assert sorted(m.event_id for m in replayed) == ids
                await client.ack(replayed)
            finally:
                await stream.aclose()
            sub = await client.get_subscription("jobs")
            assert sub.retry_delays == (timedelta(seconds=5),)

    asyncio.run(asyncio.wait_for(scenario(), 3 * WAIT_S))
