"""`broker dlq list|show|redrive` against a real broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventbroker import Client
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.cli import BrokerCli
from tests.e2e.streams import StreamReader, subscribe

LONG_ERROR = "ConnectionError: " + "the payment service did not answer " * 4


@pytest.fixture
def cli(broker_target: str) -> BrokerCli:
    return BrokerCli({"EVENTBROKER_TARGET": broker_target})


@pytest.fixture
def client(broker_target: str) -> Iterator[Client]:
    with Client(broker_target) as opened:
        yield opened


def dead_letters(
    client: Client, reader: StreamReader, name: str, count: int, *, error: str = "boom"
) -> list[str]:
    """Publish `count` events named `name` and nack each as terminal; their ids."""
    ids = [r.event_id for r in client.publish_batch([{"name": name, "data": {"n": 1}}] * count)]
    deliveries = reader.take(count)
    assert sorted(d.event_id for d in deliveries) == sorted(ids)
    client.nack([d.ack_id for d in deliveries], terminal=True, error=error)
    return ids


def dead_ids(client: Client, subscription: str) -> set[str]:
    return {letter.event_id for letter in client.iter_dead_letters(subscription)}


def table_rows(output: str) -> list[list[str]]:
    """The cells of each body row of a rich table."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in output.splitlines()
        if line.startswith("│")
    ]


# -- list and show -------------------------------------------------------------


def test_list_is_a_table_that_filters_and_limits(
    cli: BrokerCli,
    client: Client,
    stub: pb_grpc.EventBrokerServiceStub,
    readers: list[StreamReader],
) -> None:
    client.create_subscription("jobs", "job.*", max_attempts=1)
    reader = subscribe(stub, readers, "jobs", max_outstanding=10)
    poisoned = dead_letters(client, reader, "job.a", 2, error=LONG_ERROR)
    (exhausted,) = [r.event_id for r in client.publish_batch([{"name": "job.b"}])]
    (delivery,) = reader.take(1)
    client.nack(delivery.ack_id, error="timeout")

    listed = cli.invoke(["dlq", "list", "jobs"])
    assert listed.exit_code == 0, listed.output
    rows = {row[0]: row for row in table_rows(listed.stdout)}
    assert set(rows) == {*poisoned, exhausted}
    _, name, reason, attempts, error, died = rows[poisoned[0]]
    assert (name, reason, attempts) == ("job.a", "nacked_terminal", "1")
    assert error.endswith("…") and len(error) <= 60 and LONG_ERROR not in listed.stdout
    assert died.startswith("20")
    assert rows[exhausted][1:5] == ["job.b", "attempts_exhausted", "1", "timeout"]

    by_name = cli.invoke(["dlq", "list", "jobs", "--name", "job.b"])
    assert [row[0] for row in table_rows(by_name.stdout)] == [exhausted]
    by_reason = cli.invoke(["dlq", "list", "jobs", "--reason", "NACKED_TERMINAL"])
    assert {row[0] for row in table_rows(by_reason.stdout)} == set(poisoned)
    limited = cli.invoke(["dlq", "list", "jobs", "--limit", "1"])
    assert len(table_rows(limited.stdout)) == 1 and "raise --limit" in limited.stdout
    none = cli.invoke(["dlq", "list", "jobs", "--reason", "expired"])
    assert none.exit_code == 0 and "no dead letters in jobs match" in none.stdout
    bad = cli.invoke(["dlq", "list", "jobs", "--reason", "tired"])
    assert bad.exit_code == 2 and "tired" in bad.output
    missing = cli.invoke(["dlq", "list", "nope"])
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output


def test_show_prints_the_details_and_the_attempt_history(
    cli: BrokerCli,
    client: Client,
    stub: pb_grpc.EventBrokerServiceStub,
    readers: list[StreamReader],
) -> None:
    client.create_subscription("jobs", "job.*", max_attempts=2, retry_delays=[0])
    reader = subscribe(stub, readers, "jobs", consumer_name="billing-worker")
    published = client.publish("job.pay", {"order": 42}, headers={"tenant": "acme"})
    for attempt in (1, 2):
        (delivery,) = reader.take(1)
        assert delivery.attempt == attempt
        client.nack(delivery.ack_id, error=f"failure {attempt}: {LONG_ERROR}")

    shown = cli.invoke(["dlq", "show", "jobs", published.event_id])
    assert shown.exit_code == 0, shown.output
    details, history = shown.stdout.split("Attempts, oldest first")
    fields = {row[0]: row[1] for row in table_rows(details)}
    assert fields["name"] == "job.pay" and fields["reason"] == "attempts_exhausted"
    assert fields["attempts"] == "2" and fields["headers"] == "tenant=acme"
    assert fields["data"] == '{"order":42}'
    assert "all 2 attempts failed" in fields["why"]
    assert LONG_ERROR.strip() in " ".join(details.split())  # the last error, in full
    attempts = [row for row in table_rows(history) if row[0]]  # not the wrapped lines
    assert [row[0] for row in attempts] == ["1", "2"]
    assert {row[4] for row in attempts} == {"nacked"}
    assert all(row[3].startswith("billing-worker") for row in attempts)

    client.create_subscription("other", "job.*")
    fresh = client.publish("job.pay")
    not_dead = cli.invoke(["dlq", "show", "other", fresh.event_id])
    assert not_dead.exit_code == 1 and "is not a dead letter of other" in not_dead.output
    unknown = cli.invoke(["dlq", "show", "jobs", "01NOSUCHEVENT0000000000000"])
    assert unknown.exit_code == 1 and "NOT_FOUND" in unknown.output


# -- redrive -------------------------------------------------------------------


def test_redrive_by_ids(
    cli: BrokerCli,
    client: Client,
    stub: pb_grpc.EventBrokerServiceStub,
    readers: list[StreamReader],
) -> None:
    client.create_subscription("jobs", "job.*")
    reader = subscribe(stub, readers, "jobs", max_outstanding=10)
    ids = dead_letters(client, reader, "job.a", 3)

    result = cli.invoke(["dlq", "redrive", "jobs", ids[0], ids[1]])
    assert result.exit_code == 0, result.output
    assert "redrove 2 dead letters of jobs" in result.stdout
    again = reader.take(2)
    assert sorted(d.event_id for d in again) == sorted(ids[:2])
    assert {d.attempt for d in again} == {1}
    assert dead_ids(client, "jobs") == {ids[2]}
    # The first is in flight now, no longer dead: only the third is redriven.
    mixed = cli.invoke(["dlq", "redrive", "jobs", ids[0], ids[2]])
    assert "redrove 1 dead letter of jobs (1 of the 2 ids were not dead there)" in mixed.stdout
    assert [d.event_id for d in reader.take(1)] == [ids[2]]
    assert dead_ids(client, "jobs") == set()


def test_redrive_refuses_everything_without_all(
    cli: BrokerCli,
    client: Client,
    stub: pb_grpc.EventBrokerServiceStub,
    readers: list[StreamReader],
) -> None:
    client.create_subscription("jobs", "job.*")
    reader = subscribe(stub, readers, "jobs", max_outstanding=10)
    ids = dead_letters(client, reader, "job.a", 2)

    refused = cli.invoke(["dlq", "redrive", "jobs", "--yes"])
    assert refused.exit_code == 2 and "--all" in refused.output
    both = cli.invoke(["dlq", "redrive", "jobs", ids[0], "--all"])
    assert both.exit_code == 2 and "not both" in both.output
    declined = cli.invoke(["dlq", "redrive", "jobs", "--all"], input="n\n")
    assert declined.exit_code == 1 and "Redrive 2 dead letters of jobs?" in declined.output
    assert dead_ids(client, "jobs") == set(ids)
    assert reader.nothing_within(0.2)


def test_redrive_selection_by_name_and_reason_after_confirming(
    cli: BrokerCli,
    client: Client,
    stub: pb_grpc.EventBrokerServiceStub,
    readers: list[StreamReader],
) -> None:
    client.create_subscription("jobs", "job.*", max_attempts=1)
    reader = subscribe(stub, readers, "jobs", max_outstanding=20)
    a_ids = dead_letters(client, reader, "job.a", 2)
    b_ids = dead_letters(client, reader, "job.b", 3)
    (exhausted,) = [r.event_id for r in client.publish_batch([{"name": "job.b"}])]
    client.nack(reader.take(1)[0].ack_id, error="timeout")

    by_name = cli.invoke(["dlq", "redrive", "jobs", "--name", "job.a"], input="y\n")
    assert by_name.exit_code == 0, by_name.output
    assert "Redrive 2 dead letters of jobs?" in by_name.output
    assert "redrove 2 dead letters of jobs" in by_name.stdout
    assert sorted(d.event_id for d in reader.take(2)) == sorted(a_ids)

    by_reason = cli.invoke(
        ["dlq", "redrive", "jobs", "--name", "job.b", "--reason", "nacked_terminal", "-y"]
    )
    assert "redrove 3 dead letters of jobs" in by_reason.stdout
    assert sorted(d.event_id for d in reader.take(3)) == sorted(b_ids)
    assert dead_ids(client, "jobs") == {exhausted}
    nothing = cli.invoke(["dlq", "redrive", "jobs", "--reason", "expired", "-y"])
    assert nothing.exit_code == 0 and "no dead letters in jobs match" in nothing.stdout


def test_redrive_all_goes_in_chunks_with_a_progress_bar(
    cli: BrokerCli,
    client: Client,
    stub: pb_grpc.EventBrokerServiceStub,
    readers: list[StreamReader],
) -> None:
    count = 250  # three calls of at most 100 ids
    client.create_subscription("jobs", "job.*")
    reader = subscribe(stub, readers, "jobs", max_outstanding=500, max_batch_size=100)
    ids = dead_letters(client, reader, "job.bulk", count)

    result = cli.invoke(["dlq", "redrive", "jobs", "--all", "--yes"])
    assert result.exit_code == 0, result.output
    assert f"{count}/{count}" in result.stderr  # the progress bar, finished
    assert f"redrove {count} dead letters of jobs" in result.stdout
    assert sorted(d.event_id for d in reader.take(count)) == sorted(ids)
    stats = client.get_stats("jobs").subscription("jobs")
    assert stats is not None and (stats.dead, stats.in_flight) == (0, count)
