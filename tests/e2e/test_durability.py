"""A publish that returned OK survives kill -9 of the broker process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from broker.storage import open_storage
from broker.storage.sql import SqlStorage
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.checker import QueueChecker
from tests.e2e.processes import BrokerProcess as BrokerProcess  # re-exported for the benchmarks
from tests.e2e.processes import publish_batches
from tests.e2e.streams import StreamReader


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(f"sqlite:///{tmp_path / 'broker.db'}", tmp_path / "broker.log")
    try:
        yield process
    finally:
        process.terminate()


def test_acknowledged_publishes_survive_kill_9(broker_process: BrokerProcess) -> None:
    broker_process.start()
    with grpc.insecure_channel(broker_process.target) as channel:
        stub = pb_grpc.EventBrokerServiceStub(channel)
        stub.CreateSubscription(
            pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(name="orders", filter=["orders.>"])
            )
        )
    checker = QueueChecker()
    stop = threading.Event()
    publishers = [
        threading.Thread(target=publish_batches, args=(broker_process.target, checker, stop, 20))
        for _ in range(4)
    ]
    for thread in publishers:
        thread.start()
    deadline = time.monotonic() + 30
    while checker.acknowledged < 2000 and time.monotonic() < deadline:
        time.sleep(0.01)
    broker_process.kill()  # while the publishers are still sending
    stop.set()
    for thread in publishers:
        thread.join(10)
    assert checker.acknowledged >= 2000

    broker_process.start()
    drain(broker_process.target, checker)
    result = checker.check()
    print(result)
    assert result.valid, str(result)
    assert result.lost == frozenset()
    assert result.unexpected == frozenset()


def drain(target: str, checker: QueueChecker) -> None:
    """Consume and ack everything acknowledged, then whatever else comes (unknown outcomes)."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.EventBrokerServiceStub(channel)
        reader = StreamReader(
            stub, pb.SubscribeRequest(subscription="orders", max_outstanding=1000)
        )
        expected = checker.expected_at_least()
        try:
            while True:
                timeout = 10.0 if not expected <= checker.seen() else 0.5
                batch = reader.take_available(timeout)
                if not batch:
                    break
                for delivery in batch:
                    checker.delivered(delivery.dedup_id)
                stub.Ack(pb.AckRequest(ack_ids=[d.ack_id for d in batch]))
        finally:
            reader.close()


KILL_CYCLES = 20


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_twenty_kill_9_cycles_under_a_publish_burst_lose_nothing(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    broker = BrokerProcess(url, tmp_path / "broker.log")
    checker = QueueChecker()
    try:
        for cycle in range(KILL_CYCLES):
            broker.start()
            if cycle == 0:
                with grpc.insecure_channel(broker.target) as channel:
                    pb_grpc.EventBrokerServiceStub(channel).CreateSubscription(
                        pb.CreateSubscriptionRequest(
                            subscription=pb.Subscription(name="orders", filter=["orders.>"])
                        )
                    )
            stop = threading.Event()
            publishers = [
                threading.Thread(target=publish_batches, args=(broker.target, checker, stop, 10))
                for _ in range(2)
            ]
            before = checker.acknowledged
            for thread in publishers:
                thread.start()
            deadline = time.monotonic() + 20
            while checker.acknowledged < before + 100 and time.monotonic() < deadline:
                time.sleep(0.005)
            broker.kill()  # mid-burst
            stop.set()
            for thread in publishers:
                thread.join(10)
            assert checker.acknowledged >= before + 100, f"cycle {cycle} published too little"
        broker.start()
        drain(broker.target, checker)
    finally:
        broker.terminate()
    result = checker.check()
    print(f"{KILL_CYCLES} kill -9 cycles on {database}: {result}")
    assert result.lost == frozenset(), str(result)
    assert result.unexpected == frozenset(), str(result)
    assert result.ok >= KILL_CYCLES * 100


def test_sqlite_durability_settings_are_what_the_broker_claims(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'b.db'}")
    storage.migrate()
    assert isinstance(storage, SqlStorage)
    try:
        for engine in (storage.write_engine, storage.read_engine):
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL
    finally:
        storage.close()


def test_postgres_durability_settings_are_what_the_broker_claims(postgres_url: str) -> None:
    storage = open_storage(postgres_url)
    assert isinstance(storage, SqlStorage)
    try:
        with storage.write_engine.connect() as conn:
            assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"
            assert conn.execute(sa.text("SHOW fsync")).scalar_one() == "on"
    finally:
        storage.close()
