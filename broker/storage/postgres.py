"""PostgreSQL: the scale path, several broker processes on one database.

Ready rows are claimed with `FOR UPDATE SKIP LOCKED`, so concurrent leasers in
any process each take different rows and never wait on one another; rows read
before an update (acks, nacks) are locked with `FOR UPDATE`. Commits are
durable (`synchronous_commit=on`) before a publish is acknowledged. Brokers
tell each other what became ready with `NOTIFY` on one channel
(`PostgresNotifier`).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import psycopg
import sqlalchemy as sa
from sqlalchemy import event

from broker.domain import AckId
from broker.storage.interface import Notifier, StorageUnavailableError
from broker.storage.sql import (
    DELIVERY_ROW,
    EVENT_ROW,
    INSERT_DELIVERIES,
    INSERT_EVENTS,
    SqlStorage,
    SqlTx,
    flat,
    storage_errors,
    values_sql,
)

POOL_SIZE = 8
#: The `LISTEN`/`NOTIFY` channel brokers on one database share.
CHANNEL = "eventbroker_wakeup"
#: How often a listener looks at its stop flag while no message comes.
LISTEN_POLL_S = 0.1
#: A committer's kept connection idle this long goes back to the pool and a fresh
#: check-out (pinged) replaces it: a busy one is never pinged, a stale one is.
WRITER_IDLE_S = 2.0


class PostgresTx(SqlTx):
    """PostgreSQL's claims and locks."""

    _placeholder: ClassVar[str] = "%s"

    def _insert_rows(
        self, event_rows: list[tuple[Any, ...]], delivery_rows: list[tuple[Any, ...]]
    ) -> None:
        # Rows as arrays, one per column (pgqueuer's enqueue): a plan per batch,
        # not per row. Both tables in one statement (a data-modifying WITH), since
        # a round trip costs more than the rows; the foreign key is checked at the
        # statement's end, after the events are in.
        with self._cursor() as cursor:
            if len(event_rows) <= SMALL_INSERT_ROWS and len(delivery_rows) <= SMALL_INSERT_ROWS:
                # A few rows: plain values. psycopg's array dumpers cost more than a
                # round trip for one row (105 against 59 µs of CPU per publish).
                cursor.execute(
                    _small_insert_sql(len(event_rows), len(delivery_rows)),
                    flat(event_rows) + flat(delivery_rows),
                )
            elif delivery_rows:
                cursor.execute(
                    _INSERT_EVENTS_AND_DELIVERIES_SQL,
                    _columns(event_rows, 11) + _columns(delivery_rows, 7),
                )
            else:
                cursor.execute(_INSERT_EVENTS_SQL, _columns(event_rows, 11))

    def _claim_sql(self) -> str:
        return _CLAIM_SQL

    def _ack_statement(self, pairs: Sequence[AckId], now_us: int) -> tuple[str, list[Any]]:
        ids = [a.delivery_id for a in pairs]
        attempts = [a.attempt for a in pairs]
        return _ACK_SQL, [now_us, ids, attempts, now_us]

    def _locked(self, query: sa.Select[Any]) -> sa.Select[Any]:
        return query.with_for_update()

    # Advisory locks, held to the end of the transaction and always taken in sorted
    # order. Ordering keys use the pair (subscription id >= 1, hash of the key), a
    # subscription the pair (0, its id), and dedup ids the single 64-bit key space,
    # which PostgreSQL keeps apart from the pairs.

    def _lock_ordering_key(self, subscription_id: int, key: str) -> None:
        self.conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(:sub, hashtext(:key))"),
            {"sub": subscription_id, "key": key},
        )

    def _lock_subscription(self, subscription_id: int) -> None:
        self.conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(0, :sub)"), {"sub": subscription_id}
        )

    def _lock_dedup_ids(self, dedup_ids: Sequence[str]) -> None:
        self.conn.execute(
            sa.text(
                "SELECT count(pg_advisory_xact_lock(hashtextextended(id, 0)))"
                " FROM (SELECT unnest(CAST(:ids AS text[])) AS id ORDER BY 1) AS sorted"
            ),
            {"ids": list(dedup_ids)},
        )


_INSERT_EVENTS_SQL = (
    f"{INSERT_EVENTS}"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::bytea[], %b::text[], %b::text[],"
    " %b::text[], %b::smallint[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[])"
)
_INSERT_DELIVERIES_SQL = (
    f"{INSERT_DELIVERIES}"
    " SELECT s, e, st, r, k, ra, 0, 0, u FROM unnest(%b::int[], %b::text[], %b::smallint[],"
    " %b::smallint[], %b::text[], %b::bigint[], %b::bigint[])"
    " WITH ORDINALITY AS t(s, e, st, r, k, ra, u, n) ORDER BY n"  # ids in publish order
)

#: Up to this many events (and deliveries), a publish inserts plain values.
SMALL_INSERT_ROWS = 2
_INSERT_EVENTS_AND_DELIVERIES_SQL = (
    f"WITH inserted AS ({_INSERT_EVENTS_SQL}) {_INSERT_DELIVERIES_SQL}"
)


@functools.cache
def _small_insert_sql(events: int, deliveries: int) -> str:
    """Insert this many event rows and delivery rows as values, in one statement."""
    insert_events = values_sql(INSERT_EVENTS, EVENT_ROW, events, "%s")
    if not deliveries:
        return insert_events
    insert_deliveries = values_sql(INSERT_DELIVERIES, DELIVERY_ROW, deliveries, "%s")
    return f"WITH inserted AS ({insert_events}) {insert_deliveries}"


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows turned into one list per column, as `unnest` takes them."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


_CLAIM_SQL = (
    "UPDATE deliveries SET state = 3, attempt = attempt + 1, leased_at = %s,"
    " lease_expires_at = %s, consumer = %s, updated_at = %s"
    " WHERE id IN (SELECT id FROM deliveries WHERE subscription_id = %s AND state = 2"
    " ORDER BY rank, id LIMIT %s FOR UPDATE SKIP LOCKED)"
    " RETURNING id, event_id, attempt, rank"
)
# An UPDATE re-checks its WHERE on a row another transaction changed meanwhile,
# so two brokers settling one lease cannot both apply: the second finds it gone.
_ACK_SQL = (
    "UPDATE deliveries AS d SET state = 4, lease_expires_at = NULL, updated_at = %s"
    " FROM unnest(%s::bigint[], %s::int[]) AS a(id, attempt)"
    " WHERE d.id = a.id AND d.attempt = a.attempt AND d.state = 3 AND d.lease_expires_at > %s"
    " RETURNING d.id, d.attempt, d.subscription_id, d.ordering_key"
)


class PostgresStorage(SqlStorage):
    """A PostgreSQL database through psycopg 3."""

    dialect: ClassVar[str] = "postgresql"
    tx_class: ClassVar[type[SqlTx]] = PostgresTx
    max_concurrent_writers = 4

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._kept = threading.local()
        self._kept_lock = threading.Lock()
        self._kept_all: list[sa.Connection] = []

    @contextmanager
    def _writer(self, keep: bool) -> Iterator[sa.Connection]:
        """A write connection; with `keep`, the calling thread's, kept while it is busy.

        The pool's check-out pings the server (`pool_pre_ping`): a round trip
        per group commit, kept only for a connection that sat idle (a server
        restarted meanwhile is noticed). Only a committer's few long-lived
        workers keep one, so the pool is never held by threads gone.
        """
        if not keep:
            with self.write_engine.connect() as fresh:
                yield fresh
            return
        conn: sa.Connection | None = getattr(self._kept, "conn", None)
        idle = time.monotonic() - getattr(self._kept, "used", 0.0)
        if conn is None or conn.closed or conn.invalidated or idle > WRITER_IDLE_S:
            if conn is not None:
                self._let_go(conn)
            conn = self.write_engine.connect()
            with self._kept_lock:
                self._kept_all.append(conn)
            self._kept.conn = conn
        try:
            yield conn
        finally:
            self._kept.used = time.monotonic()

    def _let_go(self, conn: sa.Connection) -> None:
        with self._kept_lock:
            if conn in self._kept_all:
                self._kept_all.remove(conn)
        conn.close()

    def close(self) -> None:
        """Release every connection, the kept write connections too."""
        with self._kept_lock:
            kept, self._kept_all = self._kept_all, []
        for conn in kept:
            conn.close()
        super().close()

    def _create_engines(self, url: str) -> tuple[sa.Engine, sa.Engine]:
        engine = sa.create_engine(url, pool_size=POOL_SIZE, max_overflow=0, pool_pre_ping=True)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET synchronous_commit = on")
            dbapi_connection.commit()

        return engine, engine

    def notifier(self) -> Notifier:
        """`NOTIFY` on the shared pool; `LISTEN` on a connection of its own."""
        return PostgresNotifier(self.write_engine)


class PostgresNotifier:
    """Messages between brokers on one database, over `LISTEN`/`NOTIFY`.

    `NOTIFY` is delivered to every session listening on the database once the
    sending transaction commits; a listener that reconnects may have missed
    some, which its caller makes up for (by looking at everything once).
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def notify(self, payload: str) -> None:
        """Send one message to every listening broker."""
        with storage_errors(), self._engine.connect() as conn:
            conn.execute(
                sa.text("SELECT pg_notify(:channel, :payload)"),
                {"channel": CHANNEL, "payload": payload},
            )
            conn.commit()

    def listen(
        self,
        on_message: Callable[[str], None],
        stop: threading.Event,
        on_listening: Callable[[], None],
    ) -> None:
        """Hand every message to `on_message` until `stop` is set."""
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                on_listening()
                while not stop.is_set():
                    for notification in conn.notifies(timeout=LISTEN_POLL_S):
                        on_message(notification.payload)
        except psycopg.Error as error:
            raise StorageUnavailableError(str(error).strip()) from error
