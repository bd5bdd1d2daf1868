"""The schema on both databases: migrations produce the declared schema and upgrade in place."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from broker.storage import open_storage
from broker.storage.migrate import alembic_config
from broker.storage.schema import metadata
from broker.storage.sql import SqlStorage
from tests.conftest import sqlite_url
from tests.storage.test_storage import draft, lease, publish

HEAD = "0006"


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStorage]:
    """A migrated, empty database: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
    else:
        url = request.getfixturevalue("postgres_url")
    store = open_storage(url)
    assert isinstance(store, SqlStorage)
    store.migrate()
    try:
        yield store
    finally:
        store.close()


def test_migrations_produce_the_declared_schema(sql_storage: SqlStorage) -> None:
    with sql_storage.write_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_migrate_twice_is_a_no_op(sql_storage: SqlStorage) -> None:
    sql_storage.migrate()
    with sql_storage.read_engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert version == HEAD


def test_a_newer_broker_upgrades_an_older_database_in_place(sql_storage: SqlStorage) -> None:
    with sql_storage.write_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")
    with sql_storage.write_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO subscriptions (name, filters, ack_deadline_us, max_attempts,"
                " min_backoff_us, max_backoff_us, max_in_flight, ordered, retention_us,"
                " start_position, start_time, created_at)"
                " VALUES ('old', '[\"user.*\"]', 30000000, 20, 1000000, 600000000, 0,"
                " false, 604800000000, 1, 0, 0)"
            )
        )
    sql_storage.migrate()
    with sql_storage.read() as tx:
        old = tx.subscription_get("old")
    assert old is not None
    assert old.filters == ("user.*",) and old.max_age_us == 0 and old.retry_delays_us == ()
    publish(sql_storage, draft("user.joined"))
    assert len(lease(sql_storage, old.id, 10)) == 1
