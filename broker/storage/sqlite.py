"""SQLite: the embedded default, one file and one process.

WAL mode with `synchronous=FULL`, so a commit is on disk before a publish is
acknowledged. SQLite has one writer at a time: every write transaction starts
with `BEGIN IMMEDIATE`, which takes the write lock up front, so a leaser that
reads ready rows and then claims them cannot race another writer. (SQLAlchemy
would silently drop `FOR UPDATE SKIP LOCKED` here; nothing relies on it.)
Readers use their own connections and see the last commit without blocking it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event

from broker.domain import AckId
from broker.storage.sql import SqlStorage, SqlTx

BUSY_TIMEOUT_MS = 10_000
READ_POOL_SIZE = 4


class SqliteTx(SqlTx):
    """SQLite's claims: the write lock is already held, so a plain ordered select.

    For the same reason ordering keys need no lock of their own
    (`_lock_ordering_key` stays a no-op): writers never run side by side.
    """

    def _claim_sql(self) -> str:
        return _CLAIM_SQL

    def _ack_statement(self, pairs: Sequence[AckId], now_us: int) -> tuple[str, list[Any]]:
        # The row-value test alone would scan the table; `id IN` lets it use the key.
        ids = ", ".join("?" * len(pairs))
        values = ", ".join(["(?, ?)"] * len(pairs))
        params: list[Any] = [now_us, now_us]
        params += [a.delivery_id for a in pairs]
        params += [n for a in pairs for n in (a.delivery_id, a.attempt)]
        return _ACK_SQL.format(ids=ids, values=values), params


_CLAIM_SQL = (
    "UPDATE deliveries SET state = 3, attempt = attempt + 1, leased_at = ?,"
    " lease_expires_at = ?, consumer = ?, updated_at = ?"
    " WHERE id IN (SELECT id FROM deliveries WHERE subscription_id = ? AND state = 2"
    " ORDER BY rank, id LIMIT ?)"
    " RETURNING id, event_id, attempt, rank"
)
_ACK_SQL = (
    "UPDATE deliveries SET state = 4, lease_expires_at = NULL, updated_at = ?"
    " WHERE state = 3 AND lease_expires_at > ? AND id IN ({ids})"
    " AND (id, attempt) IN (VALUES {values})"
    " RETURNING id, attempt, subscription_id, ordering_key"
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

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._writer_lock = threading.Lock()
        self._writer_conn: sa.Connection | None = None

    @contextmanager
    def _writer(self, keep: bool) -> Iterator[sa.Connection]:
        """The one write connection, kept open between transactions.

        SQLite has one writer at a time anyway; keeping its connection saves
        the pool's check-out, check-in and reset on every group commit.
        """
        with self._writer_lock:
            conn = self._writer_conn
            if conn is None or conn.closed or conn.invalidated:
                conn = self._writer_conn = self.write_engine.connect()
            yield conn

    def close(self) -> None:
        """Release every connection, the kept write connection too."""
        with self._writer_lock:
            if self._writer_conn is not None:
                self._writer_conn.close()
                self._writer_conn = None
        super().close()

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
