"""SQLite: the embedded default, one file and one process.

WAL mode with `synchronous=FULL`, so a commit is on disk before a publish is
acknowledged. SQLite has one writer at a time: every write transaction starts
with `BEGIN IMMEDIATE`, which takes the write lock up front, so a leaser that
reads ready rows and then claims them cannot race another writer. (SQLAlchemy
would silently drop `FOR UPDATE SKIP LOCKED` here; nothing relies on it.)
Readers use their own connections and see the last commit without blocking it.
"""

from __future__ import annotations

import functools
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

    def _insert_rows(
        self, event_rows: list[tuple[Any, ...]], delivery_rows: list[tuple[Any, ...]]
    ) -> None:
        """Insert many rows per statement: one step of SQLite for up to `INSERT_CHUNK` rows.

        The sqlite3 module lets go of the interpreter lock around every step, and
        `executemany` steps once per row. With the event loop busy, the committer
        thread then waits for the lock again after every row: a publish of 100
        events fanned out to ten subscriptions took 1,100 such waits.
        """
        cursor = self._cursor()
        for sql, row, rows in (
            (_INSERT_EVENT_SQL, _EVENT_ROW, event_rows),
            (_INSERT_DELIVERY_SQL, _DELIVERY_ROW, delivery_rows),
        ):
            for chunk in _chunks(rows):
                cursor.execute(_statement(sql, row, len(chunk)), _flat(chunk))
        cursor.close()

    def _ack_statement(self, pairs: Sequence[AckId], now_us: int) -> tuple[str, list[Any]]:
        # The row-value test alone would scan the table; `id IN` lets it use the key.
        ids = ", ".join("?" * len(pairs))
        values = ", ".join(["(?, ?)"] * len(pairs))
        params: list[Any] = [now_us, now_us]
        params += [a.delivery_id for a in pairs]
        params += [n for a in pairs for n in (a.delivery_id, a.attempt)]
        return _ACK_SQL.format(ids=ids, values=values), params


#: Rows inserted by one statement at most; shorter chunks are powers of two, so
#: that few distinct statements reach the sqlite3 module's statement cache.
INSERT_CHUNK = 64
_INSERT_EVENT_SQL = (
    "INSERT INTO events (id, name, payload, content_type, headers, dedup_id, priority,"
    " ordering_key, published_at, deliver_at, delay_us) VALUES {rows}"
)
_INSERT_DELIVERY_SQL = (
    "INSERT INTO deliveries (subscription_id, event_id, state, rank, ordering_key, ready_at,"
    " attempt, dead_reason, updated_at) VALUES {rows}"
)
_EVENT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_DELIVERY_ROW = "(?, ?, ?, ?, ?, ?, 0, 0, ?)"


def _chunks(rows: list[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    """`rows` in chunks of `INSERT_CHUNK`, then of decreasing powers of two."""
    start, size = 0, INSERT_CHUNK
    while start < len(rows):
        while start + size > len(rows):
            size //= 2
        yield rows[start : start + size]
        start += size


@functools.cache
def _statement(sql: str, row: str, rows: int) -> str:
    return sql.format(rows=", ".join([row] * rows))


def _flat(rows: list[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]


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
