"""PostgreSQL: the scale path, several broker processes on one database.

Several brokers write at once, and a transaction may commit after another that
started later: its events then appear in the log behind ones already read. So
a position is not a number but a pair of snapshots, as PgQ keeps it: the
events of transactions visible in `passed` were read; the current batch is
the events of transactions visible in `batch` and not in `passed`, read in
(txid, seq) order up to the position's (txid, seq). When a batch is read to
its end, `batch` becomes `passed` and a new snapshot the next batch: an event
whose transaction commits late is in whichever batch first sees it committed,
never skipped. A lease holds its subscription's cursor row (`FOR UPDATE SKIP
LOCKED`: another broker leasing for the same subscription tries again a moment
later instead of waiting, and meanwhile leases only rows that are ready);
advisory locks serialise an ordering key and a
dedup id. Commits are durable (`synchronous_commit=on`) before a publish is
acknowledged. Brokers tell each other what became ready with `NOTIFY` on one
channel (`PostgresNotifier`).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import psycopg
import sqlalchemy as sa
from sqlalchemy import event

from broker.delivery.records import LogEntry, LogScan, Position
from broker.domain import StartPosition, Subscription
from broker.storage.interface import (
    EventAppendParams,
    LogScanParams,
    Notifier,
    StorageUnavailableError,
)
from broker.storage.rows import EVENT_COLUMNS, event_values, header_key_of_json
from broker.storage.sql import (
    DELIVERY_COLUMNS,
    INSERT_DELIVERIES,
    INSERT_EVENTS,
    SqlStorage,
    SqlTx,
    delivery_values,
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
#: A broker's session idle inside a transaction this long is ended by the server: a
#: broker cut off from the database mid-transaction (a partition) would otherwise
#: hold a subscription's cursor, and its log, from every other broker until TCP
#: gave up (hours). The broker's own transactions never wait on it in between.
IDLE_IN_TRANSACTION_TIMEOUT_S = 5
#: Up to this many rows, an insert sends plain values: psycopg's array dumpers cost
#: more than a round trip for one row (105 against 59 µs of CPU per publish).
SMALL_INSERT_ROWS = 2


@dataclass(frozen=True, slots=True)
class PgPosition:
    """A subscription's place in the log on PostgreSQL (see the module's docstring).

    `passed` None: no transaction was passed (a start from the beginning or a
    time). Events of the batch published before `batch_from` count as passed.
    """

    passed: str | None
    batch: str
    txid: int
    seq: int
    batch_from: int = 0
    #: A snapshot taken as the cursor was locked (not kept): the next batch, if needed.
    now: str | None = None
    #: The locking transaction's own id, if it has one yet (not kept): see `log_scan`.
    own: int | None = None

    @property
    def read_to_end(self) -> bool:
        """Whether the whole batch was passed (nothing of it is left to read)."""
        return self.passed == self.batch


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A `txid_snapshot`: transactions below `xmin` and between it and `xmax` but not in `xip`."""

    xmin: int
    xmax: int
    xip: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """From PostgreSQL's text form, `xmin:xmax:xip,...`."""
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), tuple(int(x) for x in xip.split(",") if x))

    def __str__(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(str(x) for x in self.xip)}"

    def shows(self, txid: int) -> bool:
        """Whether a transaction counts as committed in this snapshot."""
        return txid < self.xmin or (txid < self.xmax and txid not in self.xip)

    def with_committed(self, txid: int | None) -> Snapshot:
        """The snapshot as it will read once `txid`, this transaction's own, has committed.

        PostgreSQL leaves a transaction's own id out of its snapshot's `xip` and may
        put it at or past `xmax` (which is the last completed id + 1): then `xmax`
        moves past it, and the ids in between (running or not yet begun when the
        snapshot was taken) join `xip`, so that they still count as not committed.
        """
        if txid is None or txid < self.xmin:
            return self
        xip = [x for x in self.xip if x != txid]
        xmax = self.xmax
        if txid >= xmax:
            xip += range(xmax, txid)
            xmax = txid + 1
        return Snapshot(self.xmin, xmax, tuple(xip))


def _up_to(entries: list[LogEntry], txid: int) -> list[LogEntry]:
    """The entries (in log order) of transactions up to `txid`: a prefix of them."""
    return [e for e in entries if _pg(e.position).txid <= txid]


class PostgresTx(SqlTx):
    """PostgreSQL's log, locks and bulk statements."""

    _placeholder: ClassVar[str] = "%s"
    PASSED: ClassVar[str] = (
        "(coalesce(txid_visible_in_snapshot(e.txid, c.passed), false)"
        " OR (txid_visible_in_snapshot(e.txid, c.batch)"
        " AND (e.published_at < c.batch_from OR (e.txid, e.seq) <= (c.txid, c.seq))))"
    )
    WAITING: ClassVar[str] = f"NOT {PASSED}"
    #: The bound on `txid` says no more than the snapshot does (every transaction below
    #: its xmin is in it), but lets the statement seek in the log's (txid, seq) index
    #: past the events stored before the subscription began, instead of reading them.
    LISTED: ClassVar[str] = (
        "NOT coalesce(txid_visible_in_snapshot(e.txid, c.start_snapshot), false)"
        " AND e.txid >= coalesce(txid_snapshot_xmin(c.start_snapshot), 0)"
        " AND e.published_at >= c.start_from"
    )
    #: The snapshots parsed once per statement, not once per event row: a cast in the
    #: conditions above was evaluated for every event (a tally of 5,000 events took
    #: ~140 ms in casts, ~1.4 ms without). OFFSET 0 keeps the planner from folding
    #: the casts back into the conditions.
    CURSORS: ClassVar[str] = (
        "(SELECT subscription_id, seq, txid, passed::txid_snapshot AS passed,"
        " batch::txid_snapshot AS batch, batch_from, start_snapshot::txid_snapshot"
        " AS start_snapshot, start_from FROM cursors OFFSET 0)"
    )

    def _seqs_in(self, seqs: Sequence[int]) -> tuple[str, list[Any]]:
        # One array: one statement text whatever the count.
        return "d.seq = ANY(%s::bigint[])", [list(seqs)]

    def _for_update(self) -> str:
        return " FOR UPDATE"

    def _skip_locked(self) -> str:
        return " FOR UPDATE SKIP LOCKED"

    def _insert_deliveries(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if len(rows) <= SMALL_INSERT_ROWS:
            self._run(
                values_sql(INSERT_DELIVERIES, len(DELIVERY_COLUMNS), len(rows), "%s"), flat(rows)
            )
        else:
            self._run(_INSERT_DELIVERIES_SQL, _columns(rows, len(DELIVERY_COLUMNS)))

    # Advisory locks, held to the end of the transaction and always taken in sorted
    # order. Ordering keys use the pair (subscription id >= 1, hash of the key) and
    # dedup ids the single 64-bit key space, which PostgreSQL keeps apart from pairs.

    def ordering_key_lock(self, subscription_id: int, key: str) -> None:
        """Serialise transactions that move one ordering key."""
        self._run("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [subscription_id, key])

    def dedup_lock(self, dedup_ids: Sequence[str]) -> None:
        """Serialise transactions that publish under the same dedup ids."""
        self._run(
            "SELECT count(pg_advisory_xact_lock(hashtextextended(id, 0)))"
            " FROM (SELECT unnest(%s::text[]) AS id ORDER BY 1) AS sorted",
            [list(dedup_ids)],
        )

    # -- the log -------------------------------------------------------------------

    def event_append(self, params: EventAppendParams) -> None:
        """Add events to the log (the identity gives `seq`), and the rows that refer to them."""
        events = [event_values(e) for e in params.events]
        if not params.rows:
            if len(events) <= SMALL_INSERT_ROWS:
                self._run(_small_events_sql(len(events)), flat(events))
            else:
                self._run(_INSERT_EVENTS_SQL, _columns(events, len(EVENT_COLUMNS)))
            return
        rows = [delivery_values(r, 0, via_log=False) for r in params.rows]
        self._run(
            f"WITH ev AS ({_INSERT_EVENTS_SQL} RETURNING id, seq) {_INSERT_STORED_ROWS_SQL}",
            _columns(events, len(EVENT_COLUMNS)) + _columns(rows, len(DELIVERY_COLUMNS)),
        )

    def _snapshot(self) -> Snapshot:
        """Now, as this transaction will read once committed (its own writes are in the log)."""
        text, own = self._all("SELECT txid_current_snapshot()::text, txid_current_if_assigned()")[0]
        return Snapshot.parse(text).with_committed(own)

    def cursor_lock(self, subscription_id: int, *, wait: bool = False) -> Position | None:
        """The position, with the cursor row locked (None if another leases, unless `wait`)."""
        # The snapshot comes with the lock: a lease at the head of the log needs a new
        # batch, and a round trip of its own would cost more than the snapshot.
        rows = self._all(
            "SELECT passed, batch, txid, seq, batch_from, txid_current_snapshot()::text,"
            " txid_current_if_assigned() FROM cursors WHERE subscription_id = %s"
            f" FOR UPDATE{'' if wait else ' SKIP LOCKED'}",
            [subscription_id],
        )
        if not rows:
            return None
        passed, batch, txid, seq, batch_from, now, own = rows[0]
        snapshot = str(Snapshot.parse(now).with_committed(own))
        return Position(
            PgPosition(
                passed,
                batch,
                int(txid or 0),
                int(seq),
                int(batch_from),
                snapshot,
                int(own) if own is not None else None,
            )
        )

    def log_scan(self, params: LogScanParams) -> LogScan:
        """The rest of the current batch, then the next one from a snapshot taken now."""
        position = _pg(params.position)
        entries = (
            []
            if position.read_to_end
            else self._batch(params.subscription_id, position, params.limit, params.key_header)
        )
        own = position.own
        if own is not None and Snapshot.parse(position.batch).shows(own):
            # A batch this transaction opened in an earlier lease: still no further
            # than its own events (see below).
            mine = _up_to(entries, own)
            if len(mine) < len(entries):
                end = mine[-1].position if mine else Position(replace(position, now=None))
                return LogScan(mine, end, exhausted=False)
        if len(entries) >= params.limit:
            return LogScan(entries, entries[-1].position, exhausted=False)
        following = PgPosition(position.batch, position.now or str(self._snapshot()), 0, 0)
        room = params.limit - len(entries)
        if own is None:
            more = self._batch(params.subscription_id, following, room, params.key_header)
            if len(more) >= room:
                return LogScan(entries + more, more[-1].position, exhausted=False)
            # The next batch was read to its end too: all of it is passed.
            done = PgPosition(following.batch, following.batch, 0, 0)
            return LogScan(entries + more, Position(done), exhausted=True)
        # The next batch counts this transaction's own events as committed (a publish
        # leases what it stores), but the transaction may store more after this lease
        # (group commit runs many operations in one): the batch stays open, read up to
        # this transaction's events and no further, and the next lease reads on.
        found = self._batch(params.subscription_id, following, room + 1, params.key_header)
        mine = _up_to(found, own)
        more = mine[:room]
        deferred = len(found) > len(mine)  # later transactions' events, read next time
        end = more[-1].position if more else Position(following)
        exhausted = len(mine) <= room and not deferred
        return LogScan(entries + more, end, exhausted=exhausted)

    def _batch(
        self, subscription_id: int, position: PgPosition, limit: int, key_header: str
    ) -> list[LogEntry]:
        """Up to `limit` events of the position's batch after it, in (txid, seq) order.

        With `key_header`, each entry's key is that header's value.
        """
        batch = Snapshot.parse(position.batch)
        low = (position.txid, position.seq)
        if position.passed is not None:
            # Transactions below the passed snapshot's xmin were all passed.
            low = max(low, (Snapshot.parse(position.passed).xmin, -1))
        rows = self._all(
            "SELECT e.txid, e.seq, e.id, e.name, e.priority,"
            f" {'e.headers' if key_header else 'e.ordering_key'}, e.published_at,"
            " e.deliver_at, EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.subscription_id = %s AND d.seq = e.seq)"
            " FROM events e WHERE e.txid IS NOT NULL AND (e.txid, e.seq) > (%s, %s)"
            " AND e.txid < %s AND txid_visible_in_snapshot(e.txid, %s::txid_snapshot)"
            " AND NOT coalesce(txid_visible_in_snapshot(e.txid, %s::txid_snapshot), false)"
            " AND e.published_at >= %s ORDER BY e.txid, e.seq LIMIT %s",
            [
                subscription_id,
                low[0],
                low[1],
                batch.xmax,
                position.batch,
                position.passed,
                position.batch_from,
                limit,
            ],
        )
        passed, snapshot, since = position.passed, position.batch, position.batch_from
        return [
            LogEntry(
                seq,
                event_id,
                name,
                priority,
                header_key_of_json(key, key_header) if key_header else key,
                published,
                due,
                bool(has),
                Position(PgPosition(passed, snapshot, txid, seq, since)),
            )
            for txid, seq, event_id, name, priority, key, published, due, has in rows
        ]

    def log_advance(self, subscription_id: int, position: Position) -> None:
        """Move a subscription's position."""
        pos = _pg(position)
        self._run(
            "UPDATE cursors SET passed = %s, batch = %s, txid = %s, seq = %s, batch_from = %s"
            " WHERE subscription_id = %s",
            [pos.passed, pos.batch, pos.txid, pos.seq, pos.batch_from, subscription_id],
        )

    def _position_at(self, time_us: int) -> PgPosition:
        """Everything committed and published before `time_us` passed; nothing else.

        The batch starts at the first event (in the log's order) published at or
        after the time: everything before it was published earlier.
        """
        now = str(self._snapshot())
        rows = self._all(
            "SELECT txid, seq FROM events WHERE txid IS NOT NULL AND published_at >= %s"
            " AND txid_visible_in_snapshot(txid, %s::txid_snapshot) ORDER BY txid, seq LIMIT 1",
            [time_us, now],
        )
        if not rows:
            return PgPosition(now, now, 0, 0)
        txid, seq = rows[0]
        return PgPosition(None, now, int(txid), int(seq) - 1, time_us)

    def log_seek(self, subscription_id: int, time_us: int) -> None:
        """Move the position to a time: what was published before it is passed."""
        self.log_advance(subscription_id, Position(self._position_at(time_us)))

    def _cursor_start(self, subscription: Subscription) -> dict[str, Any]:
        if subscription.start_position is StartPosition.NEW:
            now = str(self._snapshot())
            position = PgPosition(now, now, 0, 0)
            start_snapshot, start_from = now, 0
        elif subscription.start_position is StartPosition.TIME:
            position = self._position_at(subscription.start_time_us)
            start_snapshot, start_from = None, subscription.start_time_us
        else:
            position = PgPosition(None, str(self._snapshot()), 0, 0)
            start_snapshot, start_from = None, 0
        return {
            "passed": position.passed,
            "batch": position.batch,
            "txid": position.txid,
            "seq": position.seq,
            "batch_from": position.batch_from,
            "start_snapshot": start_snapshot,
            "start_from": start_from,
        }


def _pg(position: Position) -> PgPosition:
    assert isinstance(position, PgPosition)
    return position


_EVENT_TYPES = (
    "text",
    "text",
    "bytea",
    "text",
    "text",
    "text",
    "smallint",
    "text",
    "bigint",
    "bigint",
    "bigint",
)
_DELIVERY_TYPES = (
    "int",
    "text",
    "bigint",
    "smallint",
    "smallint",
    "text",
    "bigint",
    "int",
    "bigint",
    "bigint",
    "text",
    "smallint",
    "smallint",
    "bigint",
)
_EVENT_NAMES = [f"c{i}" for i in range(len(_EVENT_TYPES))]
_DELIVERY_NAMES = [f"d{i}" for i in range(len(_DELIVERY_TYPES))]
# Rows as arrays, one per column (pgqueuer's enqueue): a plan per batch, not per
# row; WITH ORDINALITY keeps the given order, so the identity numbers events in it.
_INSERT_EVENTS_SQL = (
    f"{INSERT_EVENTS}, txid) SELECT {', '.join(_EVENT_NAMES)}, txid_current() FROM unnest("
    + ", ".join(f"%b::{t}[]" for t in _EVENT_TYPES)
    + f") WITH ORDINALITY AS t({', '.join(_EVENT_NAMES)}, o) ORDER BY o"
)
_INSERT_DELIVERIES_SQL = (
    f"{INSERT_DELIVERIES} SELECT {', '.join(_DELIVERY_NAMES)} FROM unnest("
    + ", ".join(f"%b::{t}[]" for t in _DELIVERY_TYPES)
    + f") AS t({', '.join(_DELIVERY_NAMES)})"
)
# The rows stored with their events take each event's seq from the insert above.
_INSERT_STORED_ROWS_SQL = (
    f"{INSERT_DELIVERIES} SELECT d0, d1, ev.seq, {', '.join(_DELIVERY_NAMES[3:])} FROM unnest("
    + ", ".join(f"%b::{t}[]" for t in _DELIVERY_TYPES)
    + f") AS t({', '.join(_DELIVERY_NAMES)}) JOIN ev ON ev.id = t.d1"
)


@functools.cache
def _small_events_sql(count: int) -> str:
    row = f"({', '.join(['%s'] * len(EVENT_COLUMNS))}, txid_current())"
    return f"{INSERT_EVENTS}, txid) VALUES {', '.join([row] * count)}"


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows turned into one list per column, as `unnest` takes them."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


class PostgresStorage(SqlStorage):
    """A PostgreSQL database through psycopg 3."""

    dialect: ClassVar[str] = "postgresql"
    tx_class: ClassVar[type[SqlTx]] = PostgresTx
    max_concurrent_writers = 4
    # Other brokers change subscriptions too: what a transaction read serves for a
    # second, sparing every publish, lease and settle a round trip. A publish routed
    # by a list a second old loses nothing: a subscription reads the log from its
    # own position, and gives an event it finds without a row the row it needs.
    subscriptions_kept_s = 1.0

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._kept = threading.local()
        self._kept_lock = threading.Lock()
        self._kept_all: list[sa.Connection] = []

    @contextmanager
    def read(self) -> Iterator[SqlTx]:
        """A read-only transaction that sees one snapshot in all its statements.

        At PostgreSQL's default level each statement sees what committed before
        it began: counts made of several statements (the log's tally, then the
        rows) would count an event twice when a lease moved it from the log into
        a row in between.
        """
        with storage_errors(), self.read_engine.connect() as conn:
            conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield self.tx_class(conn, self._kept_subscriptions())

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
                cursor.execute(
                    f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT_S}s'"
                )
                # Every statement planned for its own arguments: a generic plan of one
                # matching rows by arrays of keys may scan every lease instead.
                cursor.execute("SET plan_cache_mode = force_custom_plan")
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
