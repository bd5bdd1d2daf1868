"""Faults with several broker processes on one PostgreSQL database.

A broker killed with SIGKILL while its consumer holds leases, and the database
cut off under two running brokers. Each test judges its whole history with the
queue checker (nothing acknowledged lost, nothing delivered that was never
sent) and checks that no event was held by two consumers at once.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from broker.storage.postgres import CHANNEL
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.conftest import PostgresServer
from tests.e2e.checker import QueueChecker
from tests.e2e.faults import (
    CALL_TIMEOUT_S,
    Consumer,
    DeliveryLog,
    create_subscription,
    deadline_s,
    drain,
    overlapping_holds,
    report,
    wait_for,
)
from tests.e2e.processes import BrokerProcess, publish_batches

BATCH = 20


@pytest.fixture
def start_brokers(
    postgres_url: str, tmp_path: Path
) -> Iterator[Callable[[int], list[BrokerProcess]]]:
    """Starts broker processes on the test's database; all are stopped afterwards."""
    started: list[BrokerProcess] = []

    def start(count: int) -> list[BrokerProcess]:
        for _ in range(count):
            broker = BrokerProcess(postgres_url, tmp_path / f"broker-{len(started)}.log")
            started.append(broker)
            broker.start()
        return started[-count:]

    try:
        yield start
    finally:
        for broker in started:
            broker.terminate()


# -- kill -9 of one broker ------------------------------------------------------

KILL_ACK_DEADLINE_S = 2
ACKNOWLEDGED_BEFORE_KILL = 1500
ACKNOWLEDGED_AT_END = 3000


def test_kill_9_of_one_of_three_brokers_loses_nothing(
    start_brokers: Callable[[int], list[BrokerProcess]],
) -> None:
    started = time.monotonic()
    brokers = start_brokers(3)
    create_subscription(brokers[0].target, KILL_ACK_DEADLINE_S)
    checker = QueueChecker()
    log = DeliveryLog(checker)
    consumers = [Consumer(i, b.target, log) for i, b in enumerate(brokers)]
    *survivors, victim = consumers
    stop_publishing = threading.Event()
    publishers = [
        threading.Thread(target=publish_batches, args=(b.target, checker, stop_publishing, BATCH))
        for b in brokers
    ]

    def came_again(delivery: pb.Delivery) -> bool:
        return any(
            consumer != victim.index and attempt > delivery.attempt
            for consumer, attempt in log.received_by(delivery.dedup_id)
        )

    try:
        for thread in publishers:
            thread.start()
        assert wait_for(lambda: checker.acknowledged >= ACKNOWLEDGED_BEFORE_KILL, 20)
        victim.holding.set()
        assert victim.holds_one.wait(10), "the third broker's consumer got nothing to hold"
        brokers[2].kill()
        assert victim.reader.ended.wait(10), "the killed broker's stream did not end"
        victim.stop()  # keeps the leases it held unsettled: they end at their deadline

        assert wait_for(lambda: checker.acknowledged >= ACKNOWLEDGED_AT_END, 30)
        stop_publishing.set()
        for thread in publishers:
            thread.join(10)
        held = [d for d, _ in victim.held]
        drain(checker, log, 30)
        assert wait_for(lambda: all(came_again(d) for d in held), 15)
        drain(checker, log, 10)
        for survivor in survivors:
            assert not survivor.reader.ended.is_set(), survivor.reader.error
    finally:
        stop_publishing.set()
        for thread in publishers:
            thread.join(10)
        for consumer in consumers:
            consumer.stop()

    result = checker.check()
    report(result, started)
    print(f"held unacked by the killed broker's consumer: {len(held)}")
    assert result.valid, str(result)
    assert result.lost == frozenset()
    assert result.unexpected == frozenset()
    for delivery in held:
        assert came_again(delivery), f"{delivery.dedup_id}, held at the kill, never came again"
    assert result.duplicates >= len(held)
    assert overlapping_holds(log.holds()) == []


# -- the database cut off ---------------------------------------------------------

OUTAGE_ACK_DEADLINE_S = 2
RECOVERY_TIMEOUT_S = 20.0
#: Longest a published event may take to reach a waiting consumer.
WAKE_S = 5.0
#: Batches published, alternately on each broker, for both consumers to receive some.
ROUNDS_MAX = 10
#: Longest a dispatcher pauses after its database went away: the poll interval
#: (1 s by default) with its jitter, and a margin.
DISPATCH_RETRY_S = 1.5
#: What a broker logs when the connection that hears the other brokers breaks.
LISTENER_LOST = "lost the connection that hears other brokers"


class DatabaseSwitch:
    """Cuts the test's database off from every client, and lets them back."""

    def __init__(self, server: PostgresServer, database_url: str) -> None:
        self.name = sa.make_url(database_url).database
        self._admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")

    def cut_off(self) -> datetime:
        """Refuse new connections and end every open one; returns the server's time then."""
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": self.name},
            )
            now: datetime = conn.execute(sa.text("SELECT now()")).scalar_one()
        return now

    def restore(self) -> None:
        """Accept connections again."""
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    def listeners_since(self, since: datetime) -> int:
        """Sessions listening for wake-ups that connected after `since`."""
        with self._admin.connect() as conn:
            count: int = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = :name"
                    " AND query = :listen AND backend_start > :since"
                ),
                {"name": self.name, "listen": f"LISTEN {CHANNEL}", "since": since},
            ).scalar_one()
        return count

    def close(self) -> None:
        """Release the admin connections."""
        self._admin.dispose()


def _publish(stub: pb_grpc.EventBrokerServiceStub, checker: QueueChecker) -> list[str]:
    """Publish a batch; returns the ids; raises (outcome unknown) if the call fails."""
    ids = [uuid.uuid4().hex for _ in range(BATCH)]
    for publish_id in ids:
        checker.attempt(publish_id)
    stub.BatchPublish(
        pb.BatchPublishRequest(events=[pb.Event(name="orders.created", id=i) for i in ids]),
        timeout=CALL_TIMEOUT_S,
    )
    for publish_id in ids:
        checker.ok(publish_id)
    return ids


def _all_seen(checker: QueueChecker, publish_ids: list[str]) -> bool:
    return set(publish_ids) <= checker.seen()


def _publish_succeeds(stub: pb_grpc.EventBrokerServiceStub, checker: QueueChecker) -> bool:
    try:
        _publish(stub, checker)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return False
    return True


def test_database_outage_is_survived(
    start_brokers: Callable[[int], list[BrokerProcess]],
    postgres_server: PostgresServer,
    postgres_url: str,
) -> None:
    started = time.monotonic()
    brokers = start_brokers(2)
    create_subscription(brokers[0].target, OUTAGE_ACK_DEADLINE_S)
    switch = DatabaseSwitch(postgres_server, postgres_url)
    checker = QueueChecker()
    log = DeliveryLog(checker)
    consumers = [Consumer(i, b.target, log) for i, b in enumerate(brokers)]
    channels = [grpc.insecure_channel(b.target) for b in brokers]
    stubs = [pb_grpc.EventBrokerServiceStub(c) for c in channels]
    try:
        for stub in stubs:
            _publish(stub, checker)
        drain(checker, log, 10)

        # Leases held across the outage: their acks fail while the database is away.
        for consumer in consumers:
            consumer.holding.set()
        in_flight = [i for stub in stubs for i in _publish(stub, checker)]
        assert wait_for(lambda: set(in_flight) <= checker.seen(), 10)
        held_until = max(deadline_s(d) for c in consumers for d, _ in c.held)

        cut_at = switch.cut_off()
        try:
            for stub in stubs:
                publish_id = uuid.uuid4().hex
                checker.attempt(publish_id)  # stays unknown
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Publish(
                        pb.PublishRequest(event=pb.Event(name="orders.created", id=publish_id)),
                        timeout=CALL_TIMEOUT_S,
                    )
                error: grpc.Call = caught.value  # type: ignore[assignment]
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                message = error.details() or ""
                print(f"\nduring the outage: {message}")
                assert "database" in message.lower(), message
            for consumer in consumers:
                consumer.holding.clear()

            # Away for longer than the held leases last, until their acks have failed
            # and each broker's listener has failed to reconnect.
            def outage_felt() -> tuple[bool, list[int], list[int]]:
                return (
                    time.time() > held_until,
                    [c.failed_acks for c in consumers if c.held],
                    [b.log_text().count(LISTENER_LOST) for b in brokers],
                )

            def felt() -> bool:
                leases_over, failed_acks, listener_losses = outage_felt()
                return leases_over and min(failed_acks) > 0 and min(listener_losses) >= 2

            assert wait_for(felt, 10), outage_felt()
        finally:
            switch.restore()

        for stub in stubs:
            assert wait_for(functools.partial(_publish_succeeds, stub, checker), RECOVERY_TIMEOUT_S)
        assert wait_for(lambda: all(c.unsettled == 0 for c in consumers), RECOVERY_TIMEOUT_S)
        # Each broker listens for the others again, on a connection made since.
        assert wait_for(lambda: switch.listeners_since(cut_at) == 2, RECOVERY_TIMEOUT_S)

        # Both brokers deliver again: each consumer receives new events.
        counts = [c.received for c in consumers]

        def received_since() -> list[int]:
            return [c.received - n for c, n in zip(consumers, counts, strict=True)]

        for turn in range(ROUNDS_MAX):
            published = _publish(stubs[turn % 2], checker)
            assert wait_for(functools.partial(_all_seen, checker, published), WAKE_S)
            # A broker whose last lease met the outage looks again a poll interval later.
            if wait_for(lambda: min(received_since()) > 0, DISPATCH_RETRY_S):
                break
        assert min(received_since()) > 0, f"received after the outage: {received_since()}"

        # An event published on the first broker reaches the consumer on the second.
        for consumer in consumers:
            assert not consumer.reader.ended.is_set(), consumer.reader.error
        consumers[0].stop()
        crossing = _publish(stubs[0], checker)
        assert wait_for(
            lambda: all(any(c == 1 for c, _ in log.received_by(i)) for i in crossing), WAKE_S
        )
        drain(checker, log, RECOVERY_TIMEOUT_S)
        # What waited for the database said so in a line, not in a traceback.
        for broker in brokers:
            assert "Traceback" not in broker.log_text(), broker.log
    finally:
        for consumer in consumers:
            consumer.stop()
        for channel in channels:
            channel.close()
        switch.restore()  # idempotent: the fixture must be able to drop the database
        switch.close()

    result = checker.check()
    report(result, started)
    assert result.valid, str(result)
    assert result.lost == frozenset()
    assert result.unexpected == frozenset()
    assert overlapping_holds(log.holds()) == []
