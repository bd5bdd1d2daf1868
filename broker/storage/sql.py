"""The statements both databases share, and the connection handling around them.

SQL only: every method runs statements and maps rows; what to write is
decided in `broker.delivery`. Statements are written with `?` and run on the
driver's own cursor (a statement costs far more to issue through SQLAlchemy's
compiled-statement machinery than a row costs to write); a dialect whose
driver takes `%s` converts them. Where the dialects differ (how the log is
read and a position kept, how rows are matched and locked, how many rows one
statement inserts), `sqlite.py` and `postgres.py` say so in their own code.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from typing import Any, ClassVar, NamedTuple

import psycopg
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from broker.delivery.failure import FailingLease
from broker.delivery.records import (
    Claimed,
    DeliveryKey,
    KeyedDelivery,
    LogScan,
    NewDelivery,
    Position,
    ReadyDelivery,
    Settled,
    StateChange,
)
from broker.delivery.replay import SeekRow
from broker.delivery.upkeep import OldEvent
from broker.delivery.views import NameTally, RowCounts
from broker.domain import (
    AckId,
    ApiKey,
    DeliveryInfo,
    DeliveryState,
    LegacyAckId,
    StoredEvent,
    Subscription,
)
from broker.storage import schema
from broker.storage.interface import (
    AckParams,
    ClaimParams,
    DeadLetter,
    DeadLetterListParams,
    DeadSelectParams,
    DedupParams,
    EventAppendParams,
    ExtendParams,
    FailingParams,
    FailParams,
    LogScanParams,
    LogTallyParams,
    Notifier,
    OldEventsParams,
    PromoteOutcome,
    PromoteParams,
    SettledDeleteParams,
    StorageConflictError,
    StorageFullError,
    StorageUnavailableError,
    SubscriptionExistsError,
)
from broker.storage.rows import (
    EVENT_COLUMNS,
    api_key_from_row,
    delivery_info_from_row,
    event_from_values,
    history_from_json,
    history_to_json,
    subscription_from_row,
    subscription_values,
)

_s = schema.subscriptions
_k = schema.api_keys

#: Events' columns for a SELECT from `events e`.
EVENT_SELECT = ", ".join(f"e.{c}" for c in EVENT_COLUMNS)
INSERT_EVENTS = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}"
#: The columns of a new delivery row, in the order `delivery_values` gives them.
DELIVERY_COLUMNS = (
    "subscription_id",
    "event_id",
    "seq",
    "state",
    "rank",
    "ordering_key",
    "ready_at",
    "attempt",
    "leased_at",
    "lease_expires_at",
    "consumer",
    "dead_reason",
    "via_log",
    "updated_at",
)
INSERT_DELIVERIES = f"INSERT INTO deliveries ({', '.join(DELIVERY_COLUMNS)})"
#: Rows inserted by one statement at most; shorter chunks are powers of two, so
#: that few distinct statements reach the driver's statement cache.
INSERT_CHUNK = 64
#: Most keys matched by one statement.
KEY_CHUNK = 500
_WAITING_STATES = "(1, 2, 6)"  # scheduled, ready, blocked
_SETTLED_STATES = "(4, 5)"  # acked, dead
_SUBSCRIPTION_COLUMNS = tuple(column.name for column in _s.columns)
_CURSOR_COLUMNS = tuple(c.name for c in schema.cursors.columns if c.name != "subscription_id")
_SUBSCRIPTIONS_SQL = f"SELECT {', '.join(_SUBSCRIPTION_COLUMNS)} FROM subscriptions"
#: Subscriptions as last read, by their row: a transaction that reads the same row
#: again (PostgreSQL reads them in every write transaction) reuses the object.
_known_subscriptions: dict[tuple[Any, ...], Subscription] = {}
KNOWN_SUBSCRIPTIONS_MAX = 10_000
_ROW_INFO_SELECT = (
    "SELECT d.id, d.state, d.attempt, d.ready_at, d.lease_expires_at, d.consumer,"
    " d.dead_reason, d.last_error, d.history, d.ordering_key, d.updated_at,"
    " s.name AS subscription_name, d.event_id"
    " FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id"
)


class _InfoRow(NamedTuple):
    id: int
    state: int
    attempt: int
    ready_at: int
    lease_expires_at: int | None
    consumer: str | None
    dead_reason: int
    last_error: str | None
    history: str | None
    ordering_key: str | None
    updated_at: int
    subscription_name: str
    event_id: str


@functools.cache
def values_sql(insert: str, width: int, rows: int, placeholder: str = "?") -> str:
    """`insert` of `rows` rows of `width` values each, with the driver's placeholder."""
    row = f"({', '.join([placeholder] * width)})"
    return f"{insert} VALUES {', '.join([row] * rows)}"


def flat(rows: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Rows' values in one list, as a statement of many rows takes them."""
    return [value for row in rows for value in row]


def chunks(rows: Sequence[Any], size: int = INSERT_CHUNK) -> Iterator[Sequence[Any]]:
    """`rows` in chunks of `size`, then of decreasing powers of two."""
    start = 0
    while start < len(rows):
        while start + size > len(rows):
            size //= 2
        yield rows[start : start + size]
        start += size


def delivery_values(row: NewDelivery, seq: int, via_log: bool) -> tuple[Any, ...]:
    """A new delivery's values in `DELIVERY_COLUMNS` order."""
    return (
        row.subscription_id,
        row.event_id,
        seq,
        int(row.state),
        row.rank,
        row.ordering_key,
        row.ready_at_us,
        row.attempt,
        row.leased_at_us,
        row.lease_expires_at_us,
        row.consumer,
        int(row.dead_reason),
        int(via_log),
        row.leased_at_us or row.ready_at_us,
    )


class SqlTx:
    """The reads and writes of one transaction on one connection."""

    #: The driver's placeholder for a bound parameter.
    _placeholder: ClassVar[str] = "?"
    #: Whether an event `e` is passed by the position of the cursor `c` (dialects say).
    PASSED: ClassVar[str]
    #: Whether an event `e` is the subscription's of cursor `c` (after its start).
    LISTED: ClassVar[str]
    #: Whether an event `e` is past the position of the cursor `c` (not passed yet).
    WAITING: ClassVar[str]
    #: The cursors as the conditions above read them (`c`), in a statement's FROM.
    CURSORS: ClassVar[str] = "cursors"

    def __init__(
        self, conn: sa.Connection, subscriptions: dict[int, Subscription] | None = None
    ) -> None:
        self.conn = conn
        self._subscriptions = subscriptions
        #: Set when this transaction created, changed or deleted a subscription.
        self.subscriptions_changed = False
        #: Set when this transaction read the subscriptions itself (not from the storage).
        self.subscriptions_read = False

    def _cursor(self) -> Any:
        """A cursor of the driver's own, inside this transaction."""
        return self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]

    def _sql(self, text: str) -> str:
        return text if self._placeholder == "?" else text.replace("?", self._placeholder)

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with closing(self._cursor()) as cursor:
            cursor.execute(self._sql(sql), params)
            return list(cursor.fetchall())

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        with closing(self._cursor()) as cursor:
            cursor.execute(self._sql(sql), params)
            return int(cursor.rowcount)

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with closing(self._cursor()) as cursor:
                cursor.executemany(self._sql(sql), rows)

    def _marks(self, count: int) -> str:
        return ", ".join("?" * count)

    # -- dialect hooks -------------------------------------------------------------

    def _seqs_in(self, seqs: Sequence[int]) -> tuple[str, list[Any]]:
        """A WHERE fragment for rows `d` whose `seq` is one of these, and its parameters."""
        return f"d.seq IN ({self._marks(len(seqs))})", list(seqs)

    def _keys_where(self, keys: Iterable[DeliveryKey]) -> Iterator[tuple[str, list[Any]]]:
        """WHERE fragments finding rows `d` by key, one per subscription and chunk.

        One subscription and a list of places per statement: every database
        reaches those rows through the (subscription_id, seq) index, whatever
        its statistics say of the table.
        """
        by_subscription: dict[int, list[int]] = {}
        for key in keys:
            by_subscription.setdefault(key.subscription_id, []).append(key.seq)
        for subscription_id, seqs in sorted(by_subscription.items()):
            for part in chunks(sorted(seqs), KEY_CHUNK):
                sql, params = self._seqs_in(part)
                yield f"d.subscription_id = ? AND {sql}", [subscription_id, *params]

    def _leases_where(self, acks: Iterable[AckId]) -> Iterator[tuple[str, list[Any]]]:
        """WHERE fragments finding rows `d` by key and attempt (as `_keys_where`)."""
        by_lease: dict[tuple[int, int], list[int]] = {}
        for ack in acks:
            by_lease.setdefault((ack.subscription_id, ack.attempt), []).append(ack.seq)
        for (subscription_id, attempt), seqs in sorted(by_lease.items()):
            for part in chunks(sorted(seqs), KEY_CHUNK):
                sql, params = self._seqs_in(part)
                yield (
                    f"d.subscription_id = ? AND {sql} AND d.attempt = ?",
                    [subscription_id, *params, attempt],
                )

    def _insert_deliveries(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert delivery rows given as `DELIVERY_COLUMNS` tuples."""
        raise NotImplementedError

    def _for_update(self) -> str:
        """What locks rows read before an update, where the dialect needs it."""
        return ""

    def _skip_locked(self) -> str:
        """What locks rows read to be claimed, skipping those another transaction holds."""
        return ""

    def event_append(self, params: EventAppendParams) -> None:
        """Add events to the log in order, and the rows that refer to them. Dialects say how."""
        raise NotImplementedError

    def cursor_lock(self, subscription_id: int, *, wait: bool = False) -> Position | None:
        """A subscription's position, locked until the transaction ends. Dialects say how."""
        raise NotImplementedError

    def log_scan(self, params: LogScanParams) -> LogScan:
        """Up to `limit` events past the position, in log order. Dialects say how."""
        raise NotImplementedError

    def log_advance(self, subscription_id: int, position: Position) -> None:
        """Move a subscription's position. Dialects say how."""
        raise NotImplementedError

    def log_seek(self, subscription_id: int, time_us: int) -> None:
        """Move a subscription's position to a time. Dialects say how."""
        raise NotImplementedError

    # -- events and the log ------------------------------------------------------

    def event_get(self, event_id: str) -> StoredEvent | None:
        """One stored event."""
        rows = self._all(f"SELECT {EVENT_SELECT} FROM events e WHERE e.id = ?", [event_id])
        return event_from_values(rows[0]) if rows else None

    def event_get_many(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        """Stored events by id (ids not stored are left out)."""
        ids = list(set(event_ids))
        found: dict[str, StoredEvent] = {}
        for part in chunks(ids, KEY_CHUNK):
            sql = f"SELECT {EVENT_SELECT} FROM events e WHERE e.id IN ({self._marks(len(part))})"
            for row in self._all(sql, list(part)):
                found[row[0]] = event_from_values(row)
        return found

    def event_count(self) -> int:
        """How many events are stored."""
        return int(self._all("SELECT count(*) FROM events")[0][0])

    def event_old_list(self, params: OldEventsParams) -> list[tuple[int, OldEvent]]:
        """Old events no row refers to, with the subscriptions still waiting for each."""
        rows = self._all(
            "SELECT e.seq, e.id, e.name, e.published_at FROM events e"
            " WHERE e.published_at < ? AND e.seq > ?"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)"
            " ORDER BY e.seq LIMIT ?",
            [params.published_before_us, params.after_seq, params.limit],
        )
        if not rows:
            return []
        seqs = [row[0] for row in rows]
        waiting: dict[int, set[int]] = {}
        for part in chunks(seqs, KEY_CHUNK):
            found = self._all(
                f"SELECT e.seq, c.subscription_id FROM events e, {self.CURSORS} c"
                f" WHERE e.seq IN ({self._marks(len(part))})"
                f" AND {self.LISTED} AND NOT ({self.PASSED})",
                list(part),
            )
            for seq, subscription_id in found:
                waiting.setdefault(seq, set()).add(subscription_id)
        return [
            (seq, OldEvent(event_id, name, published, frozenset(waiting.get(seq, ()))))
            for seq, event_id, name, published in rows
        ]

    def event_delete(self, event_ids: Sequence[str]) -> int:
        """Delete events; how many were deleted."""
        deleted = 0
        for part in chunks(list(event_ids), KEY_CHUNK):
            deleted += self._run(
                f"DELETE FROM events WHERE id IN ({self._marks(len(part))})", list(part)
            )
        return deleted

    def dedup_lock(self, dedup_ids: Sequence[str]) -> None:
        """Serialise publishes of the same dedup ids (SQLite: one writer, nothing to do)."""

    def dedup_find(self, params: DedupParams) -> dict[str, str]:
        """The event id of each of these dedup ids still inside its window."""
        found: dict[str, str] = {}
        for part in chunks(list(params.dedup_ids), KEY_CHUNK):
            sql = (
                "SELECT dedup_id, event_id FROM dedup WHERE expires_at > ?"
                f" AND dedup_id IN ({self._marks(len(part))})"
            )
            found.update((row[0], row[1]) for row in self._all(sql, [params.now_us, *part]))
        return found

    def dedup_put(self, rows: Sequence[tuple[str, str, int]]) -> None:
        """Store dedup ids, replacing any left past their window."""
        self._many(
            "INSERT INTO dedup (dedup_id, event_id, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (dedup_id) DO UPDATE"
            " SET event_id = excluded.event_id, expires_at = excluded.expires_at",
            rows,
        )

    def dedup_prune(self, now_us: int, limit: int) -> int:
        """Forget dedup ids whose window has passed."""
        return self._run(
            "DELETE FROM dedup WHERE dedup_id IN"
            " (SELECT dedup_id FROM dedup WHERE expires_at <= ? LIMIT ?)",
            [now_us, limit],
        )

    def log_passed(self, event_id: str, subscription_ids: Sequence[int]) -> dict[int, bool]:
        """Whether each subscription's position has passed the event (not its: left out)."""
        if not subscription_ids:
            return {}
        rows = self._all(
            f"SELECT c.subscription_id, CASE WHEN {self.PASSED} THEN 1 ELSE 0 END"
            f" FROM events e, {self.CURSORS} c WHERE e.id = ?"
            f" AND c.subscription_id IN ({self._marks(len(subscription_ids))}) AND {self.LISTED}",
            [event_id, *subscription_ids],
        )
        return {row[0]: bool(row[1]) for row in rows}

    def log_tally(self, params: LogTallyParams) -> dict[int, list[NameTally]]:
        """Subscriptions' events without a row, passed or waiting, counted by name.

        Subscriptions whose cursors stand alike (the same position, start and
        time window) share one count of the events; then each one's rows for
        those events (few: the log serves most deliveries without one) are
        taken off. Grouped scans, not a row lookup per event.
        """
        ids = sorted(params.since_us)
        if not ids:
            return {}
        columns = ", ".join(f"c.{name}" for name in _CURSOR_COLUMNS)
        alike: dict[tuple[Any, ...], list[int]] = {}
        for row in self._all(
            f"SELECT c.subscription_id, {columns} FROM cursors c"
            f" WHERE c.subscription_id IN ({self._marks(len(ids))})",
            ids,
        ):
            alike.setdefault((*row[1:], params.since_us[row[0]]), []).append(row[0])
        which = self.PASSED if params.passed else self.WAITING
        counted = "count(*), sum(CASE WHEN e.deliver_at > ? THEN 1 ELSE 0 END)"
        tallies: dict[int, list[NameTally]] = {}
        for group in alike.values():
            where = f"{self.LISTED} AND {which} AND e.published_at >= ? AND e.published_at < ?"
            window = [params.since_us[group[0]], params.published_before_us]
            events = self._all(
                f"SELECT e.name, {counted},"
                " min(CASE WHEN e.deliver_at > ? THEN NULL ELSE e.deliver_at END)"
                f" FROM events e, {self.CURSORS} c WHERE c.subscription_id = ? AND {where}"
                " GROUP BY e.name",
                [params.now_us, params.now_us, group[0], *window],
            )
            rowed: dict[tuple[int, str], tuple[int, int]] = {
                (sid, name): (int(n), int(due or 0))
                for sid, name, n, due in self._all(
                    f"SELECT d.subscription_id, e.name, {counted} FROM deliveries d"
                    f" JOIN {self.CURSORS} c ON c.subscription_id = d.subscription_id"
                    " JOIN events e ON e.seq = d.seq"
                    f" WHERE d.subscription_id IN ({self._marks(len(group))}) AND {where}"
                    " GROUP BY d.subscription_id, e.name",
                    [params.now_us, *group, *window],
                )
            }
            for sid in group:
                mine = tallies[sid] = []
                for name, n, due, oldest in events:
                    less, less_due = rowed.get((sid, name), (0, 0))
                    if int(n) > less:
                        mine.append(
                            NameTally(name, int(n) - less, int(due or 0) - less_due, oldest)
                        )
        return tallies

    # -- delivery rows ------------------------------------------------------------

    def delivery_insert(self, rows: Sequence[NewDelivery]) -> None:
        """Write rows made by a lease or a scan (the position has passed their events)."""
        values = []
        for row in rows:
            assert row.seq is not None
            values.append(delivery_values(row, row.seq, via_log=True))
        self._insert_deliveries(values)

    def delivery_ready_list(self, subscription_id: int, limit: int) -> list[ReadyDelivery]:
        """Ready rows in delivery order (the partial index's order), locked to be claimed."""
        rows = self._all(
            "SELECT seq, rank, event_id FROM deliveries"
            " WHERE subscription_id = ? AND state = 2 ORDER BY rank, seq LIMIT ?"
            f"{self._skip_locked()}",
            [subscription_id, limit],
        )
        return [ReadyDelivery(*row) for row in rows]

    def delivery_in_flight_count(self, subscription_id: int) -> int:
        """How many of a subscription's deliveries are leased now."""
        return int(
            self._all(
                "SELECT count(*) FROM deliveries WHERE subscription_id = ? AND state = 3",
                [subscription_id],
            )[0][0]
        )

    def delivery_claim(self, params: ClaimParams) -> list[Claimed]:
        """Lease ready rows, one statement per consumer."""
        by_consumer: dict[str, list[int]] = {}
        for claim in params.claims:
            by_consumer.setdefault(claim.consumer, []).append(claim.seq)
        claimed: list[Claimed] = []
        for consumer, seqs in by_consumer.items():
            rows = self._all(
                "UPDATE deliveries SET state = 3, attempt = attempt + 1, leased_at = ?,"
                " lease_expires_at = ?, consumer = ?, updated_at = ?"
                f" WHERE subscription_id = ? AND state = 2 AND seq IN ({self._marks(len(seqs))})"
                " RETURNING seq, event_id, attempt",
                [
                    params.now_us,
                    params.expires_at_us,
                    consumer,
                    params.now_us,
                    params.subscription_id,
                    *seqs,
                ],
            )
            claimed += [Claimed(*row) for row in rows]
        return claimed

    def delivery_ack(self, params: AckParams) -> list[Settled]:
        """Acknowledge live leases: forget clean first attempts from the log, keep the rest.

        Each statement both finds and settles: a lease is live while its row is
        in flight at the ack id's attempt and its deadline has not passed.
        """
        settled: list[Settled] = []
        returning = " RETURNING subscription_id, seq, attempt, ordering_key"
        first = [ack for ack in params.ack_ids if ack.attempt == 1]
        for where, args in self._leases_where(first):
            rows = self._all(
                f"DELETE FROM deliveries AS d WHERE {where} AND d.state = 3"
                " AND d.lease_expires_at > ? AND d.via_log = 1 AND d.history IS NULL"
                f"{returning}",
                [*args, params.now_us],
            )
            settled += [Settled(DeliveryKey(sid, seq), n, key) for sid, seq, n, key in rows]
        done = {AckId(s.key.subscription_id, s.key.seq, s.attempt) for s in settled}
        for where, args in self._leases_where(a for a in params.ack_ids if a not in done):
            rows = self._all(
                "UPDATE deliveries AS d SET state = 4, lease_expires_at = NULL, updated_at = ?"
                f" WHERE {where} AND d.state = 3 AND d.lease_expires_at > ?{returning}",
                [params.now_us, *args, params.now_us],
            )
            settled += [Settled(DeliveryKey(sid, seq), n, key) for sid, seq, n, key in rows]
        return settled

    def delivery_failing(self, params: FailingParams) -> list[FailingLease]:
        """The live leases among these ack ids, locked until the transaction ends."""
        leases: list[FailingLease] = []
        unexpired = "" if params.unexpired_at_us is None else " AND d.lease_expires_at > ?"
        extra = [] if params.unexpired_at_us is None else [params.unexpired_at_us]
        for where, args in self._leases_where(params.ack_ids):
            rows = self._all(
                "SELECT d.subscription_id, d.seq, d.attempt, d.leased_at, d.consumer,"
                f" d.history, d.ordering_key FROM deliveries d WHERE {where}"
                f" AND d.state = 3{unexpired} ORDER BY d.seq{self._for_update()}",
                [*args, *extra],
            )
            leases += [
                FailingLease(
                    key=DeliveryKey(sid, seq),
                    attempt=attempt,
                    leased_at_us=leased_at,
                    consumer=consumer or "",
                    history=tuple(history_from_json(history)),
                    ordering_key=key,
                )
                for sid, seq, attempt, leased_at, consumer, history, key in rows
            ]
        return leases

    def delivery_fail(self, params: FailParams) -> None:
        """Write retried or dead deliveries."""
        self._many(
            "UPDATE deliveries SET state = ?, ready_at = ?, history = ?, last_error = ?,"
            " dead_reason = ?, lease_expires_at = NULL, updated_at = ?"
            " WHERE subscription_id = ? AND seq = ?",
            [
                (
                    int(c.state),
                    c.ready_at_us,
                    history_to_json(c.history),
                    c.error,
                    int(c.dead_reason),
                    params.now_us,
                    c.key.subscription_id,
                    c.key.seq,
                )
                for c in params.changes
            ],
        )

    def delivery_extend(self, params: ExtendParams) -> list[AckId]:
        """Extend the live leases among these ack ids; the ones extended."""
        extended: list[AckId] = []
        for where, args in self._leases_where(params.ack_ids):
            rows = self._all(
                f"UPDATE deliveries AS d SET lease_expires_at = ? WHERE {where}"
                " AND d.state = 3 AND d.lease_expires_at > ?"
                " RETURNING subscription_id, seq, attempt",
                [params.until_us, *args, params.now_us],
            )
            extended += [AckId(*row) for row in rows]
        return extended

    def delivery_expired_list(self, now_us: int, limit: int) -> list[AckId]:
        """Leases whose deadline has passed, earliest first."""
        rows = self._all(
            "SELECT subscription_id, seq, attempt FROM deliveries"
            " WHERE state = 3 AND lease_expires_at <= ? ORDER BY lease_expires_at LIMIT ?",
            [now_us, limit],
        )
        return [AckId(*row) for row in rows]

    def delivery_live(self, ack_ids: Sequence[AckId]) -> set[AckId]:
        """Which of these ack ids are still live leases (in flight, same attempt)."""
        live: set[AckId] = set()
        for where, args in self._leases_where(ack_ids):
            rows = self._all(
                f"SELECT d.subscription_id, d.seq, d.attempt FROM deliveries d"
                f" WHERE {where} AND d.state = 3",
                args,
            )
            live |= {AckId(*row) for row in rows}
        return live

    def delivery_resolve(self, legacy: Sequence[LegacyAckId]) -> dict[LegacyAckId, AckId]:
        """The ack ids of deliveries named by their row id and attempt."""
        ids = sorted({old.delivery_id for old in legacy})
        keys: dict[int, tuple[int, int]] = {}
        for part in chunks(ids, KEY_CHUNK):
            rows = self._all(
                f"SELECT id, subscription_id, seq FROM deliveries"
                f" WHERE id IN ({self._marks(len(part))})",
                list(part),
            )
            keys.update((row[0], (row[1], row[2])) for row in rows)
        return {
            old: AckId(*keys[old.delivery_id], old.attempt)
            for old in legacy
            if old.delivery_id in keys
        }

    def delivery_promote(self, params: PromoteParams) -> PromoteOutcome:
        """Make due scheduled deliveries ready."""
        rows = self._all(
            "UPDATE deliveries SET state = 2, updated_at = ? WHERE state = 1 AND id IN"
            " (SELECT id FROM deliveries WHERE state = 1 AND ready_at <= ? LIMIT ?)"
            " RETURNING subscription_id, seq, ordering_key",
            [params.now_us, params.now_us, params.limit],
        )
        (next_due,) = self._all("SELECT min(ready_at) FROM deliveries WHERE state = 1")[0]
        return PromoteOutcome(
            frozenset(row[0] for row in rows),
            len(rows),
            int(next_due) if next_due is not None else None,
            tuple((DeliveryKey(row[0], row[1]), row[2]) for row in rows if row[2] is not None),
        )

    def ordering_key_lock(self, subscription_id: int, key: str) -> None:
        """Serialise transactions that move one ordering key (SQLite: one writer)."""

    def delivery_keyed_list(
        self, subscription_id: int, key: str, blocked_limit: int | None = None
    ) -> list[KeyedDelivery]:
        """A key's open deliveries: those not blocked, and the first blocked ones, in log order.

        Both statements repeat the open key index's condition word for word
        (`schema.OPEN_KEYED`): SQLite uses a partial index only for a query
        that carries its condition.
        """
        where = (
            "SELECT seq, state, ready_at FROM deliveries WHERE subscription_id = ?"
            f" AND ordering_key = ? AND {schema.OPEN_KEYED}"
        )
        args: list[Any] = [subscription_id, key]
        # Open and below 6: not blocked (a range SQLite seeks in the index; with
        # `state IN (1, 2, 3)` it walked the blocked ones too). Sorted below.
        rows = self._all(f"{where} AND state < 6", args)
        if blocked_limit is None:
            rows += self._all(f"{where} AND state = 6 ORDER BY seq", args)
        elif blocked_limit > 0:
            rows += self._all(f"{where} AND state = 6 ORDER BY seq LIMIT ?", [*args, blocked_limit])
        return sorted(
            (KeyedDelivery(seq, DeliveryState(state), ready_at) for seq, state, ready_at in rows),
            key=lambda d: d.seq,
        )

    def delivery_blocked_keys(self, subscription_id: int) -> list[str]:
        """The keys of a subscription that have blocked deliveries, sorted."""
        rows = self._all(
            "SELECT DISTINCT ordering_key FROM deliveries WHERE subscription_id = ?"
            " AND state = 6 AND ordering_key IS NOT NULL ORDER BY ordering_key",
            [subscription_id],
        )
        return [row[0] for row in rows]

    def delivery_set_states(self, changes: Sequence[StateChange], now_us: int) -> None:
        """Move delivery rows to other states (a dead one with its reason)."""
        self._many(
            "UPDATE deliveries SET state = ?,"
            " dead_reason = CASE WHEN ? = 5 THEN ? ELSE dead_reason END, updated_at = ?"
            " WHERE subscription_id = ? AND seq = ?",
            [
                (
                    int(c.state),
                    int(c.state),
                    int(c.dead_reason),
                    now_us,
                    c.key.subscription_id,
                    c.key.seq,
                )
                for c in changes
            ],
        )

    def delivery_restart(self, keys: Sequence[DeliveryKey], now_us: int) -> None:
        """Make dead rows ready again as new first attempts, keeping their history."""
        self._many(
            "UPDATE deliveries SET state = 2, ready_at = ?, attempt = 0, dead_reason = 0,"
            " lease_expires_at = NULL, updated_at = ? WHERE subscription_id = ? AND seq = ?",
            [(now_us, now_us, k.subscription_id, k.seq) for k in keys],
        )

    def delivery_delete(self, keys: Sequence[DeliveryKey]) -> None:
        """Forget delivery rows."""
        for where, args in self._keys_where(keys):
            self._run(f"DELETE FROM deliveries AS d WHERE {where}", args)

    def delivery_dead_select(self, params: DeadSelectParams) -> list[DeliveryKey]:
        """Dead letters to redrive, oldest first, locked until the transaction ends."""
        sql = (
            "SELECT d.subscription_id, d.seq FROM deliveries d"
            " WHERE d.subscription_id = ? AND d.state = 5"
        )
        args: list[Any] = [params.subscription_id]
        if params.event_ids:
            sql += f" AND d.event_id IN ({self._marks(len(params.event_ids))})"
            args += list(params.event_ids)
        if params.reason is not None:
            sql += " AND d.dead_reason = ?"
            args.append(int(params.reason))
        if params.name is not None:
            sql += " AND d.event_id IN (SELECT id FROM events WHERE name = ?)"
            args.append(params.name)
        sql += f" ORDER BY d.id LIMIT ?{self._for_update()}"
        return [DeliveryKey(*row) for row in self._all(sql, [*args, params.limit])]

    def delivery_seek_list(self, subscription_id: int) -> list[SeekRow]:
        """A subscription's rows with their events' publish times."""
        rows = self._all(
            "SELECT d.seq, d.state, e.published_at FROM deliveries d"
            " JOIN events e ON e.id = d.event_id WHERE d.subscription_id = ?",
            [subscription_id],
        )
        return [
            SeekRow(DeliveryKey(subscription_id, seq), DeliveryState(state), published)
            for seq, state, published in rows
        ]

    def delivery_waiting_list(
        self, subscription_id: int, published_before_us: int, limit: int
    ) -> list[DeliveryKey]:
        """Waiting rows (scheduled, ready, blocked) of events published before a time."""
        rows = self._all(
            "SELECT d.seq FROM deliveries d JOIN events e ON e.id = d.event_id"
            f" WHERE d.subscription_id = ? AND d.state IN {_WAITING_STATES}"
            " AND e.published_at < ? ORDER BY d.seq LIMIT ?",
            [subscription_id, published_before_us, limit],
        )
        return [DeliveryKey(subscription_id, row[0]) for row in rows]

    def delivery_keys_of(self, keys: Sequence[DeliveryKey]) -> set[tuple[int, str]]:
        """The ordering keys these rows hold or wait for."""
        found: set[tuple[int, str]] = set()
        for where, args in self._keys_where(keys):
            rows = self._all(
                f"SELECT d.subscription_id, d.ordering_key FROM deliveries d"
                f" WHERE {where} AND d.ordering_key IS NOT NULL",
                args,
            )
            found |= {(row[0], row[1]) for row in rows}
        return found

    def delivery_settled_delete(self, params: SettledDeleteParams) -> int:
        """Delete acked and dead rows past retention whose events the position passed."""
        return self._run(
            "DELETE FROM deliveries WHERE id IN (SELECT d.id FROM deliveries d"
            " JOIN events e ON e.id = d.event_id"
            f" JOIN {self.CURSORS} c ON c.subscription_id = d.subscription_id"
            f" WHERE d.subscription_id = ? AND d.state IN {_SETTLED_STATES}"
            f" AND d.updated_at < ? AND {self.PASSED} LIMIT ?)",
            [params.subscription_id, params.changed_before_us, params.limit],
        )

    def delivery_orphans_delete(self, limit: int) -> int:
        """Delete rows of subscriptions that are gone."""
        return self._run(
            "DELETE FROM deliveries WHERE id IN (SELECT d.id FROM deliveries d"
            " WHERE NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = d.subscription_id)"
            " LIMIT ?)",
            [limit],
        )

    def delivery_list_for_event(self, event_id: str) -> list[DeliveryInfo]:
        """An event's delivery rows, one per subscription that has one."""
        rows = self._all(f"{_ROW_INFO_SELECT} WHERE d.event_id = ? ORDER BY s.name", [event_id])
        return [delivery_info_from_row(_InfoRow(*row)) for row in rows]

    def delivery_counts(self, subscription_id: int) -> RowCounts:
        """A subscription's rows by state, and its oldest ready one."""
        rows = self._all(
            "SELECT state, count(*), min(CASE WHEN state = 2 THEN ready_at END)"
            " FROM deliveries WHERE subscription_id = ? GROUP BY state",
            [subscription_id],
        )
        oldest = [row[2] for row in rows if row[2] is not None]
        return RowCounts(
            {DeliveryState(row[0]): int(row[1]) for row in rows}, min(oldest, default=None)
        )

    def dead_letter_list(self, params: DeadLetterListParams) -> list[DeadLetter]:
        """A page of dead letters, oldest first."""
        sql = f"{_ROW_INFO_SELECT} WHERE d.subscription_id = ? AND d.state = 5 AND d.id > ?"
        args: list[Any] = [params.subscription_id, params.after_delivery_id]
        if params.reason is not None:
            sql += " AND d.dead_reason = ?"
            args.append(int(params.reason))
        if params.name is not None:
            sql += " AND d.event_id IN (SELECT id FROM events WHERE name = ?)"
            args.append(params.name)
        rows = [
            _InfoRow(*row)
            for row in self._all(f"{sql} ORDER BY d.id LIMIT ?", [*args, params.limit])
        ]
        events = self.event_get_many({row.event_id for row in rows})
        return [
            DeadLetter(row.id, events[row.event_id], delivery_info_from_row(row)) for row in rows
        ]

    # -- subscriptions -------------------------------------------------------------

    def subscriptions_by_id(self, *, fresh: bool = False) -> dict[int, Subscription]:
        """Every subscription, by id: read once per transaction, or kept by the storage.

        `fresh`: read now, unless this transaction read them already (a caller
        that missed one it was asked about: it may have been made just now).
        """
        if self._subscriptions is None or (fresh and not self.subscriptions_read):
            self.subscriptions_read = True
            self._subscriptions = {}
            for row in self._all(_SUBSCRIPTIONS_SQL):
                key = tuple(row)
                sub = _known_subscriptions.get(key)
                if sub is None:
                    if len(_known_subscriptions) >= KNOWN_SUBSCRIPTIONS_MAX:
                        _known_subscriptions.clear()
                    sub = subscription_from_row(_SubscriptionRow(*key))
                    _known_subscriptions[key] = sub
                self._subscriptions[sub.id] = sub
        return self._subscriptions

    def _cursor_start(self, subscription: Subscription) -> dict[str, Any]:
        """The cursor row of a new subscription, at its start. Dialects override."""
        raise NotImplementedError

    def subscription_create(self, subscription: Subscription) -> Subscription:
        """Create a subscription and its cursor at its start; raises SubscriptionExistsError."""
        if self.subscription_get(subscription.name) is not None:
            raise SubscriptionExistsError(subscription.name)
        try:
            new_id = self.conn.execute(
                sa.insert(_s).values(**subscription_values(subscription)).returning(_s.c.id)
            ).scalar_one()
        except sa_exc.IntegrityError as error:
            raise SubscriptionExistsError(subscription.name) from error
        self._changed()
        created = self.subscriptions_by_id()[int(new_id)]
        self.conn.execute(
            sa.insert(schema.cursors).values(
                subscription_id=created.id, **self._cursor_start(created)
            )
        )
        return created

    def _changed(self) -> None:
        self._subscriptions = None
        self.subscriptions_changed = True

    def subscription_get(self, name: str) -> Subscription | None:
        """One subscription by name."""
        row = self.conn.execute(sa.select(_s).where(_s.c.name == name)).first()
        return subscription_from_row(row) if row is not None else None

    def subscription_list(self, after_name: str, limit: int) -> list[Subscription]:
        """Subscriptions by name, after a name."""
        rows = self.conn.execute(
            sa.select(_s).where(_s.c.name > after_name).order_by(_s.c.name).limit(limit)
        )
        return [subscription_from_row(row) for row in rows]

    def subscription_update(self, subscription: Subscription) -> Subscription | None:
        """Replace a subscription's settings; None when it does not exist."""
        values = subscription_values(subscription)
        for fixed in ("name", "created_at", "start_position", "start_time"):
            values.pop(fixed)
        result = self.conn.execute(
            sa.update(_s).where(_s.c.name == subscription.name).values(**values)
        )
        self._changed()
        if result.rowcount == 0:
            return None
        return self.subscription_get(subscription.name)

    def subscription_delete(self, name: str) -> bool:
        """Delete a subscription, its cursor and its rows; False when it did not exist."""
        sub = self.subscription_get(name)
        if sub is None:
            return False
        self._run("DELETE FROM deliveries WHERE subscription_id = ?", [sub.id])
        self._run("DELETE FROM cursors WHERE subscription_id = ?", [sub.id])
        self.conn.execute(sa.delete(_s).where(_s.c.id == sub.id))
        self._changed()
        return True

    # -- API keys ---------------------------------------------------------------------

    def api_key_create(self, key: ApiKey) -> None:
        """Store a new API key."""
        self.conn.execute(
            sa.insert(_k).values(
                id=key.key_id,
                name=key.name,
                secret_sha256=key.secret_sha256,
                scopes=",".join(sorted(key.scopes)),
                patterns="\n".join(key.patterns) or None,
                publish_rate=key.publish_rate,
                created_at=key.created_at_us,
                revoked_at=key.revoked_at_us,
            )
        )

    def api_key_get(self, key_id: str) -> ApiKey | None:
        """One API key by id, revoked or not."""
        row = self.conn.execute(sa.select(_k).where(_k.c.id == key_id)).first()
        return api_key_from_row(row) if row is not None else None

    def api_key_list(self) -> list[ApiKey]:
        """Every API key, oldest first."""
        rows = self.conn.execute(sa.select(_k).order_by(_k.c.created_at, _k.c.id))
        return [api_key_from_row(row) for row in rows]

    def api_key_revoke(self, key_id: str, now_us: int) -> bool:
        """Revoke a key; False if there is no such key or it was revoked already."""
        return bool(
            self.conn.execute(
                sa.update(_k)
                .where(_k.c.id == key_id, _k.c.revoked_at.is_(None))
                .values(revoked_at=now_us)
            ).rowcount
        )

    def api_key_active_count(self) -> int:
        """How many keys are not revoked."""
        return int(
            self.conn.execute(
                sa.select(sa.func.count()).select_from(_k).where(_k.c.revoked_at.is_(None))
            ).scalar_one()
        )


_SubscriptionRow = NamedTuple(  # type: ignore[misc]
    "_SubscriptionRow", [(name, Any) for name in _SUBSCRIPTION_COLUMNS]
)


class SqlStorage:
    """A database reached through SQLAlchemy; dialects subclass it."""

    dialect: ClassVar[str]
    max_concurrent_writers: int = 1
    reads_own_log: ClassVar[bool] = True
    tx_class: ClassVar[type[SqlTx]]
    #: How long the subscriptions one transaction read serve the next ones: None for
    #: as long as no transaction here changes them (sound where every write goes
    #: through this object: one process, one writer); 0 for not at all.
    subscriptions_kept_s: ClassVar[float | None] = 0.0

    def __init__(self, url: str) -> None:
        self.url = url
        self.write_engine, self.read_engine = self._create_engines(url)
        self._subscriptions_cache: dict[int, Subscription] | None = None
        self._subscriptions_read_at = 0.0

    def _create_engines(self, url: str) -> tuple[sa.Engine, sa.Engine]:
        raise NotImplementedError

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest version."""
        from broker.storage.migrate import upgrade

        with storage_errors(), self.write_engine.begin() as conn:
            upgrade(conn)

    @contextmanager
    def write(self, *, keep: bool = False) -> Iterator[SqlTx]:
        """A write transaction, committed on leaving without error."""
        with storage_errors(), self._writer(keep) as conn, conn.begin():
            tx = self.tx_class(conn, self._kept_subscriptions())
            yield tx
        if tx.subscriptions_changed:
            self._subscriptions_cache = None
        elif tx.subscriptions_read:  # committed: what it read is the truth now
            self._subscriptions_cache = tx._subscriptions
            self._subscriptions_read_at = time.monotonic()

    def _kept_subscriptions(self) -> dict[int, Subscription] | None:
        """The subscriptions last read, while they may still serve."""
        kept = self.subscriptions_kept_s
        if kept is not None and time.monotonic() - self._subscriptions_read_at >= kept:
            return None
        return self._subscriptions_cache

    @contextmanager
    def read(self) -> Iterator[SqlTx]:
        """A read-only transaction."""
        with storage_errors(), self.read_engine.connect() as conn:
            yield self.tx_class(conn, self._kept_subscriptions())

    def notifier(self) -> Notifier | None:
        """None: a dialect that lets several brokers share a database overrides this."""
        return None

    def _writer(self, keep: bool) -> AbstractContextManager[sa.Connection]:
        """A connection to write on, from the pool. Dialects may keep one instead."""
        return self.write_engine.connect()

    def close(self) -> None:
        """Release every connection."""
        self.write_engine.dispose()
        self.read_engine.dispose()


#: PostgreSQL's serialization_failure and deadlock_detected: the transaction may be run again.
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
#: No room to write: PostgreSQL's disk_full (SQLSTATE) and SQLite's SQLITE_FULL (error code).
_FULL_SQLSTATES = frozenset({"53100"})


@contextmanager
def storage_errors() -> Iterator[None]:
    """Turn a database that cannot serve now into StorageUnavailableError (or a subclass).

    The same for SQLAlchemy's wrapped errors and for the drivers' own, which the
    statements run on the driver's cursor raise.
    """
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as error:
        raise _unavailable(error.orig or error) from error
    except sa_exc.DBAPIError as error:
        if error.connection_invalidated:
            raise StorageUnavailableError(str(error.orig or error).strip()) from error
        raise
    except _DRIVER_UNAVAILABLE as error:
        raise _unavailable(error) from error


def _unavailable(error: BaseException) -> StorageUnavailableError:
    """The kind of unavailability a driver's error says: a conflict, a full disk, or other."""
    message = str(error).strip()
    if getattr(error, "sqlstate", None) in _CONFLICT_SQLSTATES:
        return StorageConflictError(message)
    if (
        getattr(error, "sqlstate", None) in _FULL_SQLSTATES
        or getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    ):
        return StorageFullError(message)
    return StorageUnavailableError(message)


#: The drivers' own errors for a database that cannot serve now (what SQLAlchemy
#: wraps as OperationalError and InterfaceError on the statements it runs).
_DRIVER_UNAVAILABLE = (
    sqlite3.OperationalError,
    sqlite3.InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
