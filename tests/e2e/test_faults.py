"""Consumers that die or crawl: their work comes back, and nobody else waits for them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from broker import logs
from broker.errors import storage_full
from broker.storage.sql import SqlStorage
from eventbroker import Client, Unavailable
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.conftest import TEST_SETTINGS, BrokerThread, PostgresServer, sqlite_url
from tests.e2e.cli import BrokerCli
from tests.e2e.streams import StreamReader, subscribe

WAIT_S = 10.0
#: Publishes the full disk refuses, and how long each is retried: long enough for a
#: loaded machine's first answer, short enough that the test takes seconds.
FULL_DISK_PUBLISHES = 5
FULL_DISK_TIMEOUT_S = 2.0

HANGING_CONSUMER = """
import sys, time
from eventbroker import Consumer

consumer = Consumer("jobs", target=sys.argv[1], max_outstanding=5)

@consumer.on("job.run")
def work(msg, ctx):
    print("started", msg.event_id, msg.attempt, flush=True)
    time.sleep(3600)  # stuck until killed

consumer.run()
"""


def test_a_consumer_killed_mid_handler_gives_its_work_back(
    stub: pb_grpc.EventBrokerServiceStub,
    broker_target: str,
    readers: list[StreamReader],
    tmp_path: Path,
) -> None:
    stub.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(
                name="jobs",
                filter=["job.*"],
                ack_deadline=duration_pb2.Duration(seconds=2),
                retry_policy=pb.RetryPolicy(
                    min_backoff=duration_pb2.Duration(seconds=0),
                    max_backoff=duration_pb2.Duration(seconds=0),
                ),
            )
        )
    )
    with Client(broker_target) as client:
        published = client.publish("job.run", {"n": 1})
    script = tmp_path / "consumer.py"
    script.write_text(HANGING_CONSUMER)
    proc = subprocess.Popen(
        [sys.executable, str(script), broker_target], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["started", published.event_id, "1"]
        # The kernel closes a killed process's connection, and the broker gives its
        # leases back at once; were the connection to linger, the 2 s deadline would.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    reader = subscribe(stub, readers, "jobs", max_outstanding=5)
    (again,) = reader.take(1, timeout=WAIT_S)
    assert again.event_id == published.event_id
    assert again.attempt == 2
    assert stub.Ack(pb.AckRequest(ack_ids=[again.ack_id])).not_applied_ack_ids == []


def test_a_slow_consumer_slows_only_itself(
    stub: pb_grpc.EventBrokerServiceStub, readers: list[StreamReader]
) -> None:
    for name in ("work", "audit"):
        stub.CreateSubscription(
            pb.CreateSubscriptionRequest(subscription=pb.Subscription(name=name, filter=["task.*"]))
        )
    # The slow consumer takes one delivery and never acks it; credit holds it to one.
    slow = subscribe(stub, readers, "work", max_outstanding=1)
    stub.BatchPublish(pb.BatchPublishRequest(events=[pb.Event(name="task.x")] * 50))
    (held,) = slow.take(1)
    fast = subscribe(stub, readers, "work", max_outstanding=100)
    other = subscribe(stub, readers, "audit", max_outstanding=100)
    got: list[pb.Delivery] = []
    while len(got) < 49:
        batch = fast.take_available(WAIT_S)
        assert batch, f"the fast consumer got {len(got)} of 49"
        got.extend(batch)
        stub.Ack(pb.AckRequest(ack_ids=[d.ack_id for d in batch]))
    assert held.event_id not in {d.event_id for d in got}
    assert len(other.take(50)) == 50  # another subscription is not held up either
    assert slow.nothing_within(0.3)  # and the slow one was never sent past its credit


def test_a_consumer_that_stops_reading_holds_at_most_its_credit(
    broker_server: BrokerThread, stub: pb_grpc.EventBrokerServiceStub
) -> None:
    """Its leases expire again and again, but the broker queues no more than its credit.

    The stream is opened and never read: after the client's transport buffers
    fill, nothing more can be written to it. Each expiry gives the deliveries
    back (and redelivers them to nobody else), but the broker must not lease
    more to a stream whose earlier deliveries still wait to be written.
    """
    stub.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(
                name="stuck",
                filter=["big.*"],
                ack_deadline=duration_pb2.Duration(seconds=1),
                retry_policy=pb.RetryPolicy(
                    min_backoff=duration_pb2.Duration(nanos=10_000_000),
                    max_backoff=duration_pb2.Duration(nanos=10_000_000),
                ),
            )
        )
    )
    big = pb.Event(name="big.x", binary_data=b"x" * 128 * 1024, content_type="text/plain")
    for _ in range(5):
        stub.BatchPublish(pb.BatchPublishRequest(events=[big] * 20))
    # Without BDP probing the client's receive window stays small, so what it
    # does not read soon stops the broker's writes instead of filling the client.
    channel = grpc.insecure_channel(broker_server.target, options=[("grpc.http2.bdp_probe", 0)])
    call = pb_grpc.EventBrokerServiceStub(channel).Subscribe(
        pb.SubscribeRequest(subscription="stuck", max_outstanding=10, max_batch_size=1)
    )
    try:
        metrics = f"http://127.0.0.1:{broker_server.app.http_port}/metrics"

        def leased() -> float:
            return _metric(metrics, 'eventbroker_deliveries_total{subscription="stuck"}')

        deadline = time.monotonic() + WAIT_S
        while leased() < 10:
            assert time.monotonic() < deadline, "the first credit's worth was never leased"
            time.sleep(0.05)
        # Over three and a half ack deadlines every lease expires at least three
        # times; a broker blind to the unread stream leases ten more each time.
        in_flight_seen_zero = False
        until = time.monotonic() + 3.5
        while time.monotonic() < until:
            assert leased() <= 20, f"{leased():.0f} leased to a stream that reads nothing"
            stats = stub.GetStats(pb.GetStatsRequest(subscription="stuck")).subscriptions[0]
            in_flight_seen_zero |= stats.in_flight == 0
            time.sleep(0.1)
        assert in_flight_seen_zero, "the leases never expired"
    finally:
        call.cancel()
        channel.close()


def _metric(url: str, series: str) -> float:
    """One series' value from a Prometheus text page."""
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    return 0.0


def set_max_pages(storage: SqlStorage, pages: int | None) -> int:
    """Cap the SQLite file at `pages` pages (None: as it is now); return the cap."""
    with storage.write() as tx:  # on the one writer connection, which the broker keeps
        if pages is None:
            pages = int(tx.conn.exec_driver_sql("PRAGMA page_count").scalar_one())
        return int(tx.conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}").scalar_one())


@pytest.fixture
def sqlite_broker(tmp_path: Path) -> Iterator[BrokerThread]:
    broker = BrokerThread(replace(TEST_SETTINGS, database_url=sqlite_url(tmp_path))).start()
    try:
        yield broker
    finally:
        broker.stop()


def test_a_full_disk_refuses_publishes_clearly_and_loses_nothing(
    sqlite_broker: BrokerThread,
) -> None:
    """SQLite's page cap gives the broker the very error a full disk gives (SQLITE_FULL).

    The client retries UNAVAILABLE for as long as it is given (a full disk may get
    room again), so each refused publish is several attempts; on a loaded machine
    the last of them may be cut short by the deadline before the broker answers.
    The error must still be the broker's reason, STORAGE_FULL, not the client's
    DEADLINE_EXCEEDED.
    """
    broker_server = sqlite_broker
    storage = broker_server.app.storage
    assert isinstance(storage, SqlStorage)
    payload = {"pad": "x" * 4000}
    with Client(broker_server.target) as client:
        client.create_subscription("orders", "order.*")
        before = [client.publish("order.new", payload).event_id for _ in range(5)]
        set_max_pages(storage, None)  # no room left
        refusals: list[tuple[str | None, str, int]] = []
        for _ in range(FULL_DISK_PUBLISHES):
            try:
                client.publish("order.new", payload, timeout=FULL_DISK_TIMEOUT_S)
            except Unavailable as error:
                refusals.append((error.reason, error.message, error.attempts))
        assert refusals, "the capped file took every publish"
        assert all(attempts > 1 for *_, attempts in refusals), "refused without a retry"
        full = ("STORAGE_FULL", storage_full().message)  # stable, and says "full"
        assert {(reason, message) for reason, message, _ in refusals} == {full}, refusals
        set_max_pages(storage, 1_000_000)  # room again
        after = client.publish("order.new", payload).event_id
        received: set[str] = set()
        for batch in client.subscribe("orders", max_outstanding=100):
            received.update(m.event_id for m in batch)
            client.ack(batch)
            if received >= {*before, after}:
                break
    assert {*before, after} <= received


def test_a_cli_publish_to_a_full_disk_says_so_while_it_retries_and_when_it_gives_up(
    sqlite_broker: BrokerThread,
) -> None:
    storage = sqlite_broker.app.storage
    assert isinstance(storage, SqlStorage)
    set_max_pages(storage, None)  # no room left
    cli = BrokerCli({"EVENTBROKER_TARGET": sqlite_broker.target})
    result = cli.invoke(["publish", "order.new", '{"pad": "%s"}' % ("x" * 4000), "--timeout", "2"])
    assert result.exit_code == 1, result.output
    retrying, error = result.stderr.splitlines()
    reason = f"UNAVAILABLE: {storage_full().message} [STORAGE_FULL]"
    assert retrying == (
        f"broker at {sqlite_broker.target} answered {reason}; retrying for up to 2 s..."
    )
    assert error.startswith(f"error: {reason} (gave up after "), error


def test_a_database_outage_tells_clients_a_stable_reason_and_logs_the_detail(
    postgres_server: PostgresServer, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Callers get no host, port or database name; the log gets them, with the request id."""
    from tests.e2e.test_http import http
    from tests.e2e.test_scale_out_faults import DatabaseSwitch

    caplog.handler.addFilter(logs.RequestIdFilter())
    database = sa.make_url(postgres_url)
    secrets = [str(database.database), str(database.host), str(database.port)]
    broker = BrokerThread(replace(TEST_SETTINGS, database_url=postgres_url)).start()
    switch = DatabaseSwitch(postgres_server, postgres_url)
    try:
        with grpc.insecure_channel(broker.target) as channel:
            stub = pb_grpc.EventBrokerServiceStub(channel)
            stub.GetStats(pb.GetStatsRequest(), timeout=WAIT_S)
            switch.cut_off()
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetStats(
                    pb.GetStatsRequest(),
                    metadata=(("x-request-id", "outage-grpc"),),
                    timeout=WAIT_S,
                )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        message = refused.value.details() or ""
        assert message == "the broker's database is unavailable; retry later"
        status = rpc_status.from_call(refused.value)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info) and info.reason == "DATABASE_UNAVAILABLE"
        answered, body, _ = http(broker, "POST", "/v1/rpc/GetStats", {}, request_id="outage-http")
        assert answered == 503 and body["error"]["reason"] == "DATABASE_UNAVAILABLE", body
        assert body["error"]["message"] == message
        for secret in secrets:
            assert secret not in message and secret not in json.dumps(body), secret
        for request_id in ("outage-grpc", "outage-http"):
            lines = [
                r.getMessage()
                for r in caplog.records
                if getattr(r, "request_id", None) == request_id
                and "DATABASE_UNAVAILABLE" in r.getMessage()
            ]
            assert lines, f"no log line for {request_id}"
            assert secrets[0] in lines[0] or "connection" in lines[0], lines
    finally:
        switch.restore()
        switch.close()
        broker.stop()
