"""SQLite: the embedded default, one file and one process.

WAL mode with `synchronous=FULL`, so a commit is on disk before a publish is
acknowledged. SQLite has one writer at a time: every write transaction starts
with `BEGIN IMMEDIATE`, which takes the write lock up front, so a leaser that
reads ready rows and then claims them cannot race another writer. (SQLAlchemy
would silently drop `FOR UPDATE SKIP LOCKED` here; nothing relies on it.)
Readers use their own connections and see the last commit without blocking it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event

from broker.storage.sql import SqlStorage, SqlTx

BUSY_TIMEOUT_MS = 10_000
READ_POOL_SIZE = 4


class SqliteTx(SqlTx):
    """SQLite's claims: the write lock is already held, so a plain ordered select.

    For the same reason ordering keys need no lock of their own
    (`_lock_ordering_key` stays a no-op): writers never run side by side.
    """

    def _ready_ids(self, subscription_id: int, limit: int) -> sa.Select[tuple[int]]:
        d = self._deliveries
        return (
            sa.select(d.c.id)
            .where(d.c.subscription_id == subscription_id, d.c.state == 2)
            .order_by(d.c.rank, d.c.id)
            .limit(limit)
        )


class SqliteStorage(SqlStorage):
    """A SQLite file."""

    dialect: ClassVar[str] = "sqlite"
    tx_class: ClassVar[type[SqlTx]] = SqliteTx
    max_concurrent_writers = 1
    # One broker process and one writer own the file, so the subscriptions read by
    # one transaction stay true until a transaction of ours changes them: every
    # publish, lease and settle is spared reading them again.
    caches_subscriptions = True

    def _create_engines(self, url: str) -> tuple[sa.Engine, sa.Engine]:
        writer = sa.create_engine(
            url,
            pool_size=1,
            max_overflow=0,
            connect_args={"check_same_thread": False},
        )
        reader = sa.create_engine(
            url,
            pool_size=READ_POOL_SIZE,
            max_overflow=READ_POOL_SIZE,
            connect_args={"check_same_thread": False},
        )
        _configure(writer, "BEGIN IMMEDIATE")
        _configure(reader, "BEGIN")
        return writer, reader


def _configure(engine: sa.Engine, begin: str) -> None:
    """Let SQLAlchemy, not the sqlite3 module, open transactions, and set durability."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(begin)
