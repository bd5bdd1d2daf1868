"""`eventbroker.publish(...)` as installed: its limits, its privileges, its rows, its migration.

PostgreSQL only (on SQLite the migration does nothing; tests/storage/test_migrations.py
checks that the chain still produces the declared schema there).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
import ulid
from alembic import command

from broker import config
from broker.api.convert import draft_from_event
from broker.config import Settings
from broker.domain import JSON_CONTENT_TYPE, US_PER_S
from broker.errors import FieldViolation
from broker.storage import open_storage
from broker.storage.migrate import alembic_config
from broker.storage.sql import SqlStorage
from broker.storage.sql_publish import API_SCHEMA, publish_function_body
from eventbroker.outbox import publish_in
from eventbroker.v1 import broker_pb2 as pb

FUNCTION = "eventbroker.publish(text, jsonb, jsonb, integer, interval, timestamptz, text, text)"


@pytest.fixture
def pg_storage(postgres_url: str) -> Iterator[SqlStorage]:
    """A migrated, empty PostgreSQL database."""
    store = open_storage(postgres_url)
    assert isinstance(store, SqlStorage)
    store.migrate()
    try:
        yield store
    finally:
        store.close()


def _dsn(store: SqlStorage) -> str:
    url = store.write_engine.url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _scalar(store: SqlStorage, sql: str) -> object:
    with store.read_engine.connect() as conn:
        return conn.exec_driver_sql(sql).scalar()


def test_the_installed_function_carries_the_present_limits(pg_storage: SqlStorage) -> None:
    """A limit changed in Python without a migration re-creating the function fails here."""
    installed = _scalar(
        pg_storage, f"SELECT prosrc FROM pg_proc WHERE oid = '{FUNCTION}'::regprocedure"
    )
    assert installed == publish_function_body("public")


def test_only_granted_roles_may_call_it_and_it_runs_with_a_fixed_search_path(
    pg_storage: SqlStorage,
) -> None:
    with pg_storage.read_engine.connect() as conn:
        definer, settings, public_may_execute = conn.exec_driver_sql(
            "SELECT prosecdef, proconfig, EXISTS (SELECT 1 FROM aclexplode(coalesce(proacl,"
            " acldefault('f', proowner))) WHERE grantee = 0)"
            f" FROM pg_proc WHERE oid = '{FUNCTION}'::regprocedure"
        ).one()
        public_may_use = conn.exec_driver_sql(
            "SELECT EXISTS (SELECT 1 FROM aclexplode(coalesce(nspacl, acldefault('n', nspowner)))"
            f" WHERE grantee = 0) FROM pg_namespace WHERE nspname = '{API_SCHEMA}'"
        ).scalar()
    assert definer is True
    assert settings == ["search_path=pg_catalog, pg_temp"]
    assert public_may_execute is False and public_may_use is False


def test_the_event_is_stored_as_the_broker_stores_one(pg_storage: SqlStorage) -> None:
    with psycopg.connect(_dsn(pg_storage)) as conn:
        published = publish_in(
            conn,
            "User.Joined",
            {"plan": "pro"},
            headers={"source": "signup"},
            priority=-2,
            delay=timedelta(minutes=5),
            id="signup-1",
            ordering_key="user-1",
        )
        txid = conn.execute("SELECT txid_current()").fetchone()
    with pg_storage.read() as tx:
        event = tx.event_get(published.event_id)
    assert event is not None
    assert event.name == "user.joined" and json.loads(event.payload) == {"plan": "pro"}
    assert event.content_type == JSON_CONTENT_TYPE and event.headers == {"source": "signup"}
    assert (event.priority, event.ordering_key, event.dedup_id) == (-2, "user-1", "signup-1")
    assert event.delay_us == 300 * US_PER_S
    assert event.deliver_at_us == event.published_at_us + 300 * US_PER_S
    parsed = ulid.ULID.from_str(published.event_id)
    assert parsed.milliseconds == event.published_at_us // 1000
    with pg_storage.read_engine.connect() as conn:
        stored_txid, rows, window = conn.exec_driver_sql(
            "SELECT e.txid, (SELECT count(*) FROM deliveries),"
            " (SELECT d.expires_at FROM dedup d WHERE d.dedup_id = 'signup-1') - e.published_at"
            f" FROM events e WHERE e.id = '{published.event_id}'"
        ).one()
    assert txid is not None and stored_txid == txid[0]  # the caller's own transaction
    assert rows == 0  # routed by the subscriptions' scans of the log, not here
    assert window == config.DEDUP_WINDOW_S_DEFAULT * US_PER_S


def test_ids_are_distinct_ulids_in_time_order(pg_storage: SqlStorage) -> None:
    with psycopg.connect(_dsn(pg_storage)) as conn:
        ids = [publish_in(conn, "tick").event_id for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    times = [ulid.ULID.from_str(i).milliseconds for i in ids]
    assert times == sorted(times)
    # The random part uses every character of the alphabet in every place.
    for place in (10, 17, 25):
        assert len({i[place] for i in ids}) == 32


def test_data_at_the_depth_limit_is_taken(pg_storage: SqlStorage) -> None:
    deepest: dict[str, Any] = {"s": "[[[[" * 20}
    for _ in range(config.JSON_DEPTH_MAX - 1):
        deepest = {"a": deepest}
    with psycopg.connect(_dsn(pg_storage)) as conn:
        assert not publish_in(conn, "deep", deepest).duplicate
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="nested too deep"):
            publish_in(conn, "deep", [deepest])


def test_downgrade_removes_the_function_and_its_schema_and_upgrade_brings_them_back(
    pg_storage: SqlStorage,
) -> None:
    exists = f"SELECT count(*) FROM pg_namespace WHERE nspname = '{API_SCHEMA}'"
    with pg_storage.write_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0004")
    assert _scalar(pg_storage, exists) == 0
    pg_storage.migrate()
    assert _scalar(pg_storage, exists) == 1
    assert _scalar(pg_storage, f"SELECT '{FUNCTION}'::regprocedure::text") is not None


#: (gRPC event fields, the SQL function's arguments, the argument the SQL error names):
#: the same bad input both ways.
SAME_REFUSALS = [
    ({"name": "has space"}, {"name": "has space"}, "name"),
    ({"name": ""}, {"name": ""}, "name"),
    ({"priority": 51}, {"priority": 51}, "priority"),
    ({"priority": -99}, {"priority": -99}, "priority"),
    ({"id": "i" * 300}, {"idempotency_id": "i" * 300}, "idempotency_id"),
    ({"ordering_key": "k" * 256}, {"ordering_key": "k" * 256}, "ordering_key"),
    ({"headers": {f"h{i}": "v" for i in range(65)}}, {"headers": 65}, "headers"),
    ({"headers": {"": "v"}}, {"headers": {"": "v"}}, "headers"),
    ({"delay": -1}, {"delay": "-1 second"}, "delay"),
    ({"delay": config.MAX_DELAY_S + 86400}, {"delay": "367 days"}, "delay"),
]


@pytest.mark.parametrize(("grpc_fields", "sql_arguments", "argument"), SAME_REFUSALS)
def test_the_function_refuses_what_publish_refuses_in_the_same_words(
    pg_storage: SqlStorage,
    grpc_fields: dict[str, Any],
    sql_arguments: dict[str, Any],
    argument: str,
) -> None:
    event = pb.Event(name=grpc_fields.get("name", "order.created"))
    for key, value in grpc_fields.items():
        if key == "headers":
            event.headers.update(value)
        elif key == "delay":
            event.delay.seconds = value
        elif key != "name":
            setattr(event, key, value)
    violations: list[FieldViolation] = []
    assert draft_from_event(event, "event", Settings(), 0, violations) is None
    (violation,) = violations
    arguments = {"name": "order.created", **sql_arguments}
    if isinstance(arguments.get("headers"), int):
        arguments["headers"] = {f"h{i}": "v" for i in range(arguments["headers"])}
    if "headers" in arguments:
        arguments["headers"] = json.dumps(arguments["headers"])
    names = list(arguments)
    sql = f"SELECT * FROM eventbroker.publish({', '.join(f'{n} => %s' for n in names)})"
    with (
        psycopg.connect(_dsn(pg_storage)) as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue) as refused,
    ):
        conn.execute(sql, [arguments[n] for n in names])
    assert refused.value.diag.column_name == argument
    assert refused.value.diag.message_primary == f"{argument}: {violation.description}"


def test_tables_in_a_schema_of_their_own_are_found_whatever_the_callers_search_path(
    postgres_url: str,
) -> None:
    dsn = sa.make_url(postgres_url).set(drivername="postgresql")
    with psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True) as admin:
        admin.execute('CREATE SCHEMA "broker data"')
        admin.execute(f'ALTER DATABASE "{dsn.database}" SET search_path = "broker data"')
    store = open_storage(postgres_url)
    try:
        store.migrate()
        with psycopg.connect(dsn.render_as_string(hide_password=False)) as conn:
            conn.execute("SET search_path = public")
            published = publish_in(conn, "order.created")
            conn.commit()
        with store.read() as tx:
            assert tx.event_get(published.event_id) is not None
        assert isinstance(store, SqlStorage)
        where = "SELECT schemaname FROM pg_tables WHERE tablename = 'events'"
        assert _scalar(store, where) == "broker data"
    finally:
        store.close()
