"""Publishing from SQL inside a service's own transaction: delivered if it commits, never else.

A real broker on PostgreSQL with a real consumer stream; the service writes its
own row and calls `eventbroker.publish(...)` (through the client's `publish_in`)
in one transaction. The brokers poll only every minute, so whatever arrives in
time arrived because the commit's `NOTIFY` woke them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import psycopg
import pytest
import sqlalchemy as sa
from google.protobuf import json_format
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.storage import open_storage
from eventbroker import Client, NotFound
from eventbroker.outbox import publish_in, publish_in_async
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.conftest import TEST_SETTINGS, BrokerThread
from tests.e2e.streams import StreamReader, subscribe

#: Long enough that no test here can pass by polling.
NO_POLLING = replace(TEST_SETTINGS, poll_interval_s=60.0)
WAKE_S = 5.0


def psycopg_dsn(url: str) -> str:
    """A SQLAlchemy URL as psycopg takes it."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def payload(delivery: pb.Delivery) -> Any:
    """A delivery's JSON data, whichever form the broker sent it in."""
    if delivery.WhichOneof("payload") == "binary_data":
        return json.loads(delivery.binary_data)
    return json_format.MessageToDict(delivery.data)


class Service:
    """A broker on the test database, its consumer of "order.*", and the service's own table."""

    def __init__(self, settings: Settings, readers: list[StreamReader]) -> None:
        self.url = settings.database_url
        self.dsn = psycopg_dsn(self.url)
        self.broker = BrokerThread(settings).start()
        self.channel = grpc.insecure_channel(self.broker.target)
        self.stub = pb_grpc.EventBrokerServiceStub(self.channel)
        self.client = Client(self.broker.target)
        self.client.create_subscription("billing", "order.*")
        with psycopg.connect(self.dsn) as conn:
            conn.execute("CREATE TABLE orders (id text PRIMARY KEY, total int NOT NULL)")
        self.reader = subscribe(self.stub, readers, "billing", max_outstanding=50)
        assert self.reader.nothing_within(0.3)  # attached and idle

    def order_count(self, order_id: str) -> int:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM orders WHERE id = %s", [order_id]).fetchone()
        assert row is not None
        return int(row[0])

    def publish_committed(self, name: str = "order.marker") -> str:
        """An event published from SQL and committed at once (a later event to wait for)."""
        with psycopg.connect(self.dsn) as conn:
            return publish_in(conn, name).event_id

    def close(self) -> None:
        self.client.close()
        self.channel.close()
        self.broker.stop()


@pytest.fixture
def service(postgres_url: str, readers: list[StreamReader]) -> Iterator[Service]:
    made = Service(replace(NO_POLLING, database_url=postgres_url), readers)
    yield made
    made.close()


def test_a_commit_stores_the_row_and_delivers_the_event_to_a_broker_alone(
    service: Service,
) -> None:
    with psycopg.connect(service.dsn) as conn:
        conn.execute("INSERT INTO orders VALUES ('o-1', 42)")
        published = publish_in(
            conn,
            "Order.Created",
            {"order": "o-1", "total": 42},
            headers={"source": "shop"},
            priority=3,
        )
        assert service.reader.nothing_within(0.3)  # not before the commit
    (delivery,) = service.reader.take(1, timeout=WAKE_S)
    assert delivery.event_id == published.event_id and not published.duplicate
    assert delivery.name == "order.created"
    assert payload(delivery) == {"order": "o-1", "total": 42}
    assert dict(delivery.headers) == {"source": "shop"}
    assert delivery.priority == 3 and delivery.attempt == 1
    assert service.order_count("o-1") == 1
    info = service.client.get_event(published.event_id)
    assert info.name == "order.created"


def test_a_rollback_stores_nothing_and_delivers_nothing(service: Service) -> None:
    with psycopg.connect(service.dsn) as conn:
        conn.execute("INSERT INTO orders VALUES ('o-2', 7)")
        rolled_back = publish_in(conn, "order.created", {"order": "o-2"})
        conn.rollback()
    later = service.publish_committed()
    (delivery,) = service.reader.take(1, timeout=WAKE_S)
    assert delivery.event_id == later != rolled_back.event_id
    assert service.reader.nothing_within(0.3)
    assert service.order_count("o-2") == 0
    with pytest.raises(NotFound):
        service.client.get_event(rolled_back.event_id)


CRASHING_SERVICE = """
import sys, psycopg
from eventbroker.outbox import publish_in
conn = psycopg.connect(sys.argv[1])
conn.execute("INSERT INTO orders VALUES ('o-3', 1)")
result = publish_in(conn, "order.created", {"order": "o-3"})
print(conn.info.backend_pid, result.event_id, flush=True)
sys.stdin.read()  # killed here, before any commit
"""


def test_a_service_killed_before_its_commit_loses_both_its_row_and_its_event(
    service: Service,
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CRASHING_SERVICE, service.dsn],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            backend_pid, event_id = process.stdout.readline().split()
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    # The server ends the session once it reads the closed socket: wait for that.
    with psycopg.connect(service.dsn, autocommit=True) as conn:
        deadline = time.monotonic() + WAKE_S
        while conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [int(backend_pid)]
        ).fetchone():
            assert time.monotonic() < deadline, "the killed service's session never ended"
            time.sleep(0.05)
    later = service.publish_committed()
    (delivery,) = service.reader.take(1, timeout=WAKE_S)
    assert delivery.event_id == later != event_id
    assert service.order_count("o-3") == 0
    with psycopg.connect(service.dsn) as conn:
        assert conn.execute("SELECT 1 FROM events WHERE id = %s", [event_id]).fetchone() is None


def test_a_long_transaction_is_delivered_when_it_commits_after_later_events(
    service: Service,
) -> None:
    with psycopg.connect(service.dsn) as slow:
        slow.execute("INSERT INTO orders VALUES ('o-4', 4)")  # its txid is taken now
        held = publish_in(slow, "order.slow")
        # Later transactions commit and are delivered while it is open: the
        # subscription's position moves past their events (and its seq).
        later = [service.publish_committed("order.fast") for _ in range(3)]
        later.append(service.client.publish("order.fast").event_id)
        got = service.reader.take(4, timeout=WAKE_S)
        assert sorted(d.event_id for d in got) == sorted(later)
        assert service.reader.nothing_within(0.3)
    (delivery,) = service.reader.take(1, timeout=WAKE_S)
    assert delivery.event_id == held.event_id


def test_an_idempotency_id_is_honoured_within_the_window_from_sql_and_grpc(
    service: Service,
) -> None:
    with psycopg.connect(service.dsn) as conn:
        first = publish_in(conn, "order.paid", {"n": 1}, id="pay-1")
    with psycopg.connect(service.dsn) as conn:
        again = publish_in(conn, "order.paid", {"n": 2}, id="pay-1")
    assert not first.duplicate and again.duplicate and again.event_id == first.event_id
    over_grpc = service.client.publish("order.paid", {"n": 3}, id="pay-1")
    assert over_grpc.duplicate and over_grpc.event_id == first.event_id
    grpc_first = service.client.publish("order.refunded", id="refund-1")
    with psycopg.connect(service.dsn) as conn:
        from_sql = publish_in(conn, "order.refunded", id="refund-1")
    assert from_sql.duplicate and from_sql.event_id == grpc_first.event_id
    later = service.publish_committed()
    got = service.reader.take(3, timeout=WAKE_S)
    assert [d.event_id for d in got] == [first.event_id, grpc_first.event_id, later]
    assert payload(got[0]) == {"n": 1}
    assert service.reader.nothing_within(0.3)


def test_an_idempotency_id_in_an_open_transaction_holds_a_second_publish_of_it(
    service: Service,
) -> None:
    """The second waits for the first's transaction, then sees its event or, rolled back, none."""
    results: list[Any] = []

    def second() -> None:
        with psycopg.connect(service.dsn) as conn:
            results.append(publish_in(conn, "order.paid", id="pay-2"))

    with psycopg.connect(service.dsn) as conn:
        first = publish_in(conn, "order.paid", id="pay-2")
        thread = threading.Thread(target=second)
        thread.start()
        with psycopg.connect(service.dsn, autocommit=True) as watcher:
            deadline = time.monotonic() + WAKE_S
            while not watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'advisory'"
            ).fetchone():
                assert time.monotonic() < deadline, "the second publish never waited"
                time.sleep(0.02)
        assert results == []
    thread.join(WAKE_S)
    assert results[0].duplicate and results[0].event_id == first.event_id
    (delivery,) = service.reader.take(1, timeout=WAKE_S)
    assert delivery.event_id == first.event_id


def test_sqlalchemy_sessions_and_asyncio_connections_publish_in_their_transaction(
    service: Service,
) -> None:
    engine = sa.create_engine(service.url)
    with Session(engine) as session, session.begin():
        session.execute(sa.text("INSERT INTO orders VALUES ('o-5', 5)"))
        from_session = publish_in(session, "order.created", {"via": "session"})
    with Session(engine) as session:
        session.execute(sa.text("INSERT INTO orders VALUES ('o-6', 6)"))
        publish_in(session, "order.created", {"via": "rolled back"})
        session.rollback()
    engine.dispose()

    async def publish_async() -> list[str]:
        conn = await psycopg.AsyncConnection.connect(service.dsn)
        async with conn:
            first = await publish_in_async(conn, "order.created", {"via": "async"})
        # asyncpg types every parameter itself: the helper's text must still do.
        url = sa.make_url(service.url).set(drivername="postgresql+asyncpg")
        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as session, session.begin():
                second = await publish_in_async(
                    session, "order.created", {"via": "asyncpg"}, delay=0.01, headers={"h": "v"}
                )
        finally:
            await engine.dispose()
        raw = await asyncpg.connect(sa.make_url(service.dsn).render_as_string(False))
        try:
            async with raw.transaction():
                third = await publish_in_async(raw, "order.created", {"via": "raw asyncpg"})
        finally:
            await raw.close()
        return [first.event_id, second.event_id, third.event_id]

    from_async = asyncio.run(publish_async())
    got = service.reader.take(4, timeout=WAKE_S)
    assert [d.event_id for d in got] == [from_session.event_id, *from_async]
    assert [payload(d)["via"] for d in got] == ["session", "async", "asyncpg", "raw asyncpg"]
    assert service.reader.nothing_within(0.3)
    assert (service.order_count("o-5"), service.order_count("o-6")) == (1, 0)


def test_a_delayed_event_comes_due_on_time_without_polling(service: Service) -> None:
    with psycopg.connect(service.dsn) as conn:
        published = publish_in(conn, "order.reminder", delay=timedelta(seconds=1))
    assert service.reader.nothing_within(0.6)
    (delivery,) = service.reader.take(1, timeout=WAKE_S)
    assert delivery.event_id == published.event_id
    assert delivery.delay.ToTimedelta() == timedelta(seconds=1)


def test_keyed_events_go_one_at_a_time_and_a_priority_is_kept(
    service: Service, readers: list[StreamReader]
) -> None:
    """The subscriptions' scans route what the SQL publish stored without rows."""
    service.client.create_subscription("shipping", "order.*", ordered=True)
    reader = subscribe(service.stub, readers, "shipping", max_outstanding=10)
    assert reader.nothing_within(0.3)
    keyed = []
    for n in range(3):
        with psycopg.connect(service.dsn) as conn:
            keyed.append(publish_in(conn, "order.step", {"n": n}, ordering_key="o-8").event_id)
    for expected in keyed:
        (delivery,) = reader.take(1, timeout=WAKE_S)
        assert delivery.event_id == expected and delivery.ordering_key == "o-8"
        assert reader.nothing_within(0.3)  # the next of the key waits for this ack
        assert service.client.ack(delivery.ack_id).not_applied == ()
    got = service.reader.take(3, timeout=WAKE_S)  # the unordered subscription: all at once
    assert sorted(d.event_id for d in got) == sorted(keyed)
    with psycopg.connect(service.dsn) as conn:
        urgent = publish_in(conn, "order.urgent", priority=50)
    (delivery,) = service.reader.take(1, timeout=WAKE_S)
    assert delivery.event_id == urgent.event_id and delivery.priority == 50


# -- refusals --------------------------------------------------------------------

BAD_ARGUMENTS = [
    ("name", {"name": "not a name"}, "1 to 255 characters"),
    ("name", {"name": ""}, "(it is empty)"),
    ("name", {"name": "a" * 256}, "1 to 255 characters"),
    ("name", {"name": "order.created\n"}, "1 to 255 characters"),
    ("headers", {"headers": "[1]"}, "must be a JSON object of strings"),
    ("headers", {"headers": json.dumps({"h": 1})}, "every value must be a string"),
    ("headers", {"headers": json.dumps({"": "x"})}, "must not be empty"),
    ("headers", {"headers": json.dumps({f"h{i}": "v" for i in range(65)})}, "at most 64"),
    ("priority", {"priority": 51}, "between -50 and 50; got 51"),
    ("priority", {"priority": -51}, "between -50 and 50; got -51"),
    ("delay", {"delay": "-1 second"}, "must not be negative"),
    ("delay", {"delay": "367 days"}, "at most one year (31622400 s)"),
    ("delay", {"delay": "1 second", "deliver_at": "2030-01-01Z"}, "not both"),
    ("deliver_at", {"deliver_at": "now() + interval '400 days'"}, "at most one year ahead"),
    ("idempotency_id", {"idempotency_id": "i" * 256}, "at most 255 characters; got 256"),
    ("ordering_key", {"ordering_key": "k" * 256}, "at most 255 characters"),
    (
        "data",
        {"data": "[" * 33 + "]" * 33},
        "nested too deep: arrays and objects may nest at most 32",
    ),
    ("data", {"data": json.dumps("x" * 262_144)}, "the limit is 262144 bytes"),
]


def _call(arguments: dict[str, Any]) -> tuple[str, list[Any]]:
    """`eventbroker.publish` with named arguments (an expression for deliver_at)."""
    parts, values = [], []
    for key, value in {"name": "order.bad", **arguments}.items():
        if key == "deliver_at" and value.startswith("now()"):
            parts.append(f"{key} => {value}")
            continue
        parts.append(f"{key} => %s")
        values.append(value)
    return f"SELECT * FROM eventbroker.publish({', '.join(parts)})", values


@pytest.mark.parametrize(("argument", "arguments", "words"), BAD_ARGUMENTS)
def test_bad_input_is_refused_naming_the_argument_and_the_limit(
    postgres_url: str, argument: str, arguments: dict[str, Any], words: str
) -> None:
    store = open_storage(postgres_url)
    store.migrate()
    store.close()
    sql, values = _call(arguments)
    with psycopg.connect(psycopg_dsn(postgres_url)) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
            conn.execute(sql, values)
        conn.rollback()
        count = conn.execute("SELECT count(*) FROM events").fetchone()
    error = refused.value
    assert error.sqlstate == "22023"
    assert error.diag.column_name == argument
    assert error.diag.message_primary is not None
    assert error.diag.message_primary.startswith(f"{argument}: ")
    assert words in error.diag.message_primary
    assert count == (0,)


def test_a_role_without_the_grant_is_refused_and_one_with_it_publishes(
    service: Service,
) -> None:
    role = f"svc_{uuid.uuid4().hex[:10]}"
    url = sa.make_url(service.dsn)
    as_role = url.set(username=role, password=None).render_as_string(hide_password=False)
    with psycopg.connect(service.dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT ALL ON TABLE orders TO {role}")
        try:
            with psycopg.connect(as_role) as conn:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    publish_in(conn, "order.created")
                conn.rollback()
                # Nor may it write the broker's tables itself.
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("INSERT INTO dedup VALUES ('x', 'y', 0)")
            admin.execute(f"GRANT USAGE ON SCHEMA eventbroker TO {role}")
            admin.execute(
                "GRANT EXECUTE ON FUNCTION eventbroker.publish(text, jsonb, jsonb, integer,"
                f" interval, timestamptz, text, text) TO {role}"
            )
            with psycopg.connect(as_role) as conn:
                conn.execute("INSERT INTO orders VALUES ('o-7', 7)")
                published = publish_in(conn, "order.created", {"order": "o-7"})
            (delivery,) = service.reader.take(1, timeout=WAKE_S)
            assert delivery.event_id == published.event_id
        finally:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


# -- two brokers -----------------------------------------------------------------


def test_with_two_brokers_the_one_with_the_consumer_is_woken(
    postgres_url: str, readers: list[StreamReader]
) -> None:
    settings = replace(NO_POLLING, database_url=postgres_url)
    brokers = [BrokerThread(settings).start(), BrokerThread(settings).start()]
    channels = [grpc.insecure_channel(b.target) for b in brokers]
    try:
        with Client(brokers[0].target) as client:
            client.create_subscription("billing", "order.*")
        stub = pb_grpc.EventBrokerServiceStub(channels[1])
        reader = subscribe(stub, readers, "billing", max_outstanding=10)
        assert reader.nothing_within(0.3)
        with psycopg.connect(psycopg_dsn(postgres_url)) as conn:
            published = publish_in(conn, "order.created")
        (delivery,) = reader.take(1, timeout=WAKE_S)
        assert delivery.event_id == published.event_id
    finally:
        for reader in readers:
            reader.close()
        readers.clear()
        for channel in channels:
            channel.close()
        for broker in brokers:
            broker.stop()
