"""A publish that returned OK survives kill -9 of the broker process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
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
from tests.e2e.streams import StreamReader

START_TIMEOUT_S = 30
_PORT_RE = re.compile(r"\(port (\d+)\)")


class BrokerProcess:
    """`broker serve` in a child process, on a database of the test's."""

    def __init__(self, database_url: str, log: Path) -> None:
        self.database_url = database_url
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> BrokerProcess:
        """Start it and wait until it listens (its log names the port)."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from broker.cli import main; main()",
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--database-url",
                    self.database_url,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            match = _PORT_RE.search(text)
            if match:
                self.port = int(match.group(1))
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited early:\n{text}")
            time.sleep(0.05)
        raise AssertionError("broker did not start in time")

    @property
    def target(self) -> str:
        """HOST:PORT to dial."""
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """Kill -9: no shutdown, no flush, no lease given back."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM and wait, if it still runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(f"sqlite:///{tmp_path / 'broker.db'}", tmp_path / "broker.log")
    try:
        yield process
    finally:
        process.terminate()


def _publisher(target: str, checker: QueueChecker, stop: threading.Event, batch: int) -> None:
    """Publish batches until stopped, recording each outcome."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.EventBrokerServiceStub(channel)
        while not stop.is_set():
            ids = [uuid.uuid4().hex for _ in range(batch)]
            for publish_id in ids:
                checker.attempt(publish_id)
            request = pb.BatchPublishRequest(
                events=[pb.Event(name="orders.created", id=i) for i in ids]
            )
            try:
                stub.BatchPublish(request, timeout=5)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    for publish_id in ids:
                        checker.failed(publish_id)
                return  # the broker is gone: outcome unknown
            for publish_id in ids:
                checker.ok(publish_id)


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
        threading.Thread(target=_publisher, args=(broker_process.target, checker, stop, 20))
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
    with grpc.insecure_channel(broker_process.target) as channel:
        stub = pb_grpc.EventBrokerServiceStub(channel)
        reader = StreamReader(
            stub, pb.SubscribeRequest(subscription="orders", max_outstanding=1000)
        )
        expected = checker.expected_at_least()
        try:
            # Drain: everything acknowledged, then whatever else comes (unknown outcomes).
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
    result = checker.check()
    print(result)
    assert result.valid, str(result)
    assert result.lost == frozenset()
    assert result.unexpected == frozenset()


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
