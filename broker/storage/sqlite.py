"""SQLite: the embedded default, one file and one process.

WAL mode with `synchronous=FULL`, so a commit is on disk before a publish is
acknowledged. SQLite has one writer at a time: every write transaction starts
with `BEGIN IMMEDIATE`, which takes the write lock up front. So transactions
commit in the order they write, and the log's order is simply `seq`, given by
the broker: a position is the last `seq` passed, and no lock of a cursor, an
ordering key or a dedup id is needed (those hooks stay no-ops). Readers use
their own connections and see the last commit without blocking it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event

from broker.delivery.records import LogEntry, LogScan, Position
from broker.domain import StartPosition, Subscription
from broker.storage.interface import EventAppendParams, LogScanParams
from broker.storage.rows import EVENT_COLUMNS, event_values, header_key_of_json
from broker.storage.sql import (
    DELIVERY_COLUMNS,
    INSERT_DELIVERIES,
    INSERT_EVENTS,
    SqlStorage,
    SqlTx,
    chunks,
    delivery_values,
    flat,
    values_sql,
)

BUSY_TIMEOUT_MS = 10_000
READ_POOL_SIZE = 4
_INSERT_EVENTS_SEQ = f"{INSERT_EVENTS}, seq)"


class SqliteTx(SqlTx):
    """SQLite's log: positions are `seq`, given by the broker under the write lock."""

    PASSED: ClassVar[str] = "e.seq <= c.seq"
    WAITING: ClassVar[str] = "e.seq > c.seq"
    LISTED: ClassVar[str] = "e.seq > c.start_seq AND e.published_at >= c.start_from"

    _next_seq: int | None = None

    def _insert_deliveries(self, rows: list[tuple[Any, ...]]) -> None:
        self._insert_chunked(INSERT_DELIVERIES, len(DELIVERY_COLUMNS), rows)

    def _insert_chunked(self, insert: str, width: int, rows: list[tuple[Any, ...]]) -> None:
        """Insert rows, up to `INSERT_CHUNK` per statement.

        Not `executemany`, which steps once per row: SQLite's driver lets go of
        the interpreter lock around every step, and with the event loop busy the
        committer then waits for the lock again after every row.
        """
        if not rows:
            return
        cursor = self._cursor()
        for chunk in chunks(rows):
            cursor.execute(values_sql(insert, width, len(chunk)), flat(chunk))
        cursor.close()

    # -- the log -------------------------------------------------------------------

    def event_append(self, params: EventAppendParams) -> None:
        """Give the events the next places in the log, and write their rows."""
        if self._next_seq is None:
            (last,) = self._all("SELECT coalesce(max(seq), 0) FROM events")[0]
            self._next_seq = int(last) + 1
        seq_of: dict[str, int] = {}
        event_rows = []
        for stored in params.events:
            seq_of[stored.event_id] = self._next_seq
            event_rows.append((*event_values(stored), self._next_seq))
            self._next_seq += 1
        self._insert_chunked(_INSERT_EVENTS_SEQ, len(EVENT_COLUMNS) + 1, event_rows)
        self._insert_deliveries(
            [delivery_values(r, seq_of[r.event_id], via_log=False) for r in params.rows]
        )

    def cursor_lock(self, subscription_id: int, *, wait: bool = False) -> Position | None:
        """The position: the write lock is held already, no other transaction runs."""
        rows = self._all("SELECT seq FROM cursors WHERE subscription_id = ?", [subscription_id])
        return Position(int(rows[0][0])) if rows else None

    def log_scan(self, params: LogScanParams) -> LogScan:
        """Events past the position, with whether the subscription has a row for each."""
        after = _seq(params.position)
        header = params.key_header
        rows = self._all(
            "SELECT e.seq, e.id, e.name, e.priority,"
            f" {'e.headers' if header else 'e.ordering_key'}, e.published_at,"
            " e.deliver_at, EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.subscription_id = ? AND d.seq = e.seq)"
            " FROM events e WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
            [params.subscription_id, after, params.limit],
        )
        entries = [
            LogEntry(
                seq,
                event_id,
                name,
                priority,
                header_key_of_json(key, header) if header else key,
                published,
                due,
                bool(has),
                Position(seq),
            )
            for seq, event_id, name, priority, key, published, due, has in rows
        ]
        end = rows[-1][0] if rows else after
        return LogScan(entries, Position(end), len(rows) < params.limit)

    def log_advance(self, subscription_id: int, position: Position) -> None:
        """Move a subscription's position."""
        self._run(
            "UPDATE cursors SET seq = ? WHERE subscription_id = ?",
            [_seq(position), subscription_id],
        )

    def _seq_before(self, time_us: int) -> int:
        """The place in the log just before the first event published at or after a time."""
        rows = self._all("SELECT min(seq) FROM events WHERE published_at >= ?", [time_us])
        if rows[0][0] is not None:
            return int(rows[0][0]) - 1
        return int(self._all("SELECT coalesce(max(seq), 0) FROM events")[0][0])

    def log_seek(self, subscription_id: int, time_us: int) -> None:
        """Move the position to just before what was published at or after a time."""
        self.log_advance(subscription_id, Position(self._seq_before(time_us)))

    def _cursor_start(self, subscription: Subscription) -> dict[str, Any]:
        if subscription.start_position is StartPosition.NEW:
            head = int(self._all("SELECT coalesce(max(seq), 0) FROM events")[0][0])
            return {"seq": head, "start_seq": head, "start_from": 0}
        start = (
            subscription.start_time_us if subscription.start_position is StartPosition.TIME else 0
        )
        return {"seq": self._seq_before(start), "start_seq": 0, "start_from": start}


def _seq(position: Position) -> int:
    assert isinstance(position, int)
    return position


class SqliteStorage(SqlStorage):
    """A SQLite file."""

    dialect: ClassVar[str] = "sqlite"
    tx_class: ClassVar[type[SqlTx]] = SqliteTx
    max_concurrent_writers = 1
    # One broker process and one writer own the file, so the subscriptions read by
    # one transaction stay true until a transaction of ours changes them: every
    # publish, lease and settle is spared reading them again.
    subscriptions_kept_s = None

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
