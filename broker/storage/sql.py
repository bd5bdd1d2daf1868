"""The storage operations in SQLAlchemy Core, shared by the SQLite and PostgreSQL dialects.

Where the dialects differ (how ready rows are claimed, how rows read before an
update are locked, how a connection is set up), the subclass in `sqlite.py` or
`postgres.py` says so in its own code.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from typing import Any, ClassVar, NamedTuple

import psycopg
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from broker.domain import (
    AckId,
    ApiKey,
    AttemptOutcome,
    AttemptRecord,
    DeadReason,
    DeliveryInfo,
    DeliveryState,
    LeaseClaim,
    PublishOutcome,
    Scope,
    SettleOutcome,
    StartPosition,
    StoredEvent,
    Subscription,
    SubscriptionCounts,
    share_credit,
)
from broker.names import matches
from broker.storage import schema
from broker.storage.interface import (
    DeadLetter,
    DeadLetterListParams,
    DeliveryAckParams,
    DeliveryExpiredListParams,
    DeliveryExtendParams,
    DeliveryFailingParams,
    DeliveryFailParams,
    DeliveryLeaseParams,
    DeliveryPromoteParams,
    DeliveryRedriveParams,
    EventInsertParams,
    FailingLeases,
    MaintenanceOutcome,
    MaintenanceParams,
    Notifier,
    PromoteOutcome,
    SeekOutcome,
    StorageConflictError,
    StorageFullError,
    StorageUnavailableError,
    SubscriptionBackfillParams,
    SubscriptionExistsError,
    SubscriptionSeekParams,
    SubscriptionUpdateParams,
)
from broker.transitions import FailingLease

_d = schema.deliveries
_e = schema.events
_s = schema.subscriptions
_dd = schema.dedup
_k = schema.api_keys

_SETTLE_COLUMNS = (
    _d.c.id,
    _d.c.attempt,
    _d.c.subscription_id,
    _d.c.consumer,
    _d.c.leased_at,
    _d.c.history,
    _d.c.ordering_key,
)
#: States a delivery can still move from; an ordering key is held by the first of them.
_OPEN_STATES = (
    DeliveryState.SCHEDULED,
    DeliveryState.READY,
    DeliveryState.IN_FLIGHT,
    DeliveryState.BLOCKED,
)
BACKFILL_PAGE = 1000
OrderedKey = tuple[int, str]


class _Claimed(NamedTuple):
    """A delivery row a lease claimed."""

    id: int
    event_id: str
    attempt: int
    rank: int


class _Acked(NamedTuple):
    """A delivery row an ack settled."""

    id: int
    attempt: int
    subscription_id: int
    ordering_key: str | None


def _ack_order(ack: AckId) -> tuple[int, int]:
    """Rows are touched in id order, so that two settling transactions cannot deadlock."""
    return (ack.delivery_id, ack.attempt)


#: The hot statements, run through the driver: a statement costs far more to
#: issue through SQLAlchemy's compiled-statement machinery than a row costs to
#: write. Written with `?`; a dialect whose driver takes `%s` converts them.
INSERT_EVENTS = (
    "INSERT INTO events (id, name, payload, content_type, headers, dedup_id, priority,"
    " ordering_key, published_at, deliver_at, delay_us)"
)
INSERT_DELIVERIES = (
    "INSERT INTO deliveries (subscription_id, event_id, state, rank, ordering_key, ready_at,"
    " attempt, dead_reason, updated_at)"
)
#: One row of each, as values (event rows and delivery rows are tuples in this order).
EVENT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
DELIVERY_ROW = "(?, ?, ?, ?, ?, ?, 0, 0, ?)"
#: Rows inserted by one statement at most; shorter chunks are powers of two, so
#: that few distinct statements reach the driver's statement cache.
INSERT_CHUNK = 64
_LIVE_DEDUP_SQL = "SELECT dedup_id, event_id FROM dedup WHERE expires_at > ?"
_SUBSCRIPTION_COLUMNS = tuple(column.name for column in _s.columns)
_SUBSCRIPTIONS_SQL = f"SELECT {', '.join(_SUBSCRIPTION_COLUMNS)} FROM subscriptions"
#: Subscriptions as last read, by their row: a transaction that reads the same row
#: again (PostgreSQL reads them in every write transaction) reuses the object.
_known_subscriptions: dict[tuple[Any, ...], Subscription] = {}
KNOWN_SUBSCRIPTIONS_MAX = 10_000
_UPSERT_DEDUP_SQL = (
    "INSERT INTO dedup (dedup_id, event_id, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (dedup_id) DO UPDATE"
    " SET event_id = excluded.event_id, expires_at = excluded.expires_at"
)
#: Most dedup ids looked up by one statement.
DEDUP_CHUNK = 500
_FAIL_SQL = (
    "UPDATE deliveries SET state = ?, ready_at = ?, history = ?, last_error = ?,"
    " dead_reason = ?, lease_expires_at = NULL, updated_at = ? WHERE id = ?"
)
#: Most ack ids matched by one statement (two bound parameters each).
ACK_CHUNK = 2000


@functools.cache
def values_sql(insert: str, row: str, rows: int, placeholder: str = "?") -> str:
    """`insert` of `rows` rows of the shape `row`, with the driver's placeholder."""
    sql = f"{insert} VALUES {', '.join([row] * rows)}"
    return sql if placeholder == "?" else sql.replace("?", placeholder)


def flat(rows: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Rows' values in one list, as a statement of many rows takes them."""
    return [value for row in rows for value in row]


def _chunks(rows: list[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    """`rows` in chunks of `INSERT_CHUNK`, then of decreasing powers of two."""
    start, size = 0, INSERT_CHUNK
    while start < len(rows):
        while start + size > len(rows):
            size //= 2
        yield rows[start : start + size]
        start += size


class SqlTx:
    """The operations of one transaction on one connection."""

    _deliveries = _d
    #: The driver's placeholder for a bound parameter.
    _placeholder: ClassVar[str] = "?"

    def __init__(
        self, conn: sa.Connection, subscriptions: dict[int, Subscription] | None = None
    ) -> None:
        self.conn = conn
        self._subscriptions = subscriptions
        #: Set when this transaction created, changed or deleted a subscription.
        self.subscriptions_changed = False

    def _cursor(self) -> Any:
        """A cursor of the driver's own, inside this transaction."""
        return self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]

    def _sql(self, text: str) -> str:
        return text if self._placeholder == "?" else text.replace("?", self._placeholder)

    def _insert_rows(
        self, event_rows: list[tuple[Any, ...]], delivery_rows: list[tuple[Any, ...]]
    ) -> None:
        """Insert event and delivery rows, up to `INSERT_CHUNK` rows per statement.

        Not `executemany`, which steps once per row: SQLite's driver lets go of the
        interpreter lock around every step, and with the event loop busy the
        committer then waits for the lock again after every row (a publish of 100
        events fanned out to ten subscriptions took 1,100 such waits). A dialect
        with a cheaper bulk form overrides.
        """
        cursor = self._cursor()
        for insert, row, rows in (
            (INSERT_EVENTS, EVENT_ROW, event_rows),
            (INSERT_DELIVERIES, DELIVERY_ROW, delivery_rows),
        ):
            for chunk in _chunks(rows):
                sql = values_sql(insert, row, len(chunk), self._placeholder)
                cursor.execute(sql, flat(chunk))
        cursor.close()

    def _claim_sql(self) -> str:
        """Lease up to N ready deliveries, best first, returning them. Dialects override."""
        raise NotImplementedError

    def _ack_statement(self, pairs: Sequence[AckId], now_us: int) -> tuple[str, list[Any]]:
        """Acknowledge the live leases among these ack ids, returning their rows.

        The statement returns `id, attempt, subscription_id, ordering_key` of
        each row it settled. Dialects override.
        """
        raise NotImplementedError

    # -- dialect hooks -------------------------------------------------------

    def _locked(self, query: sa.Select[Any]) -> sa.Select[Any]:
        """Lock rows read before an update, where the dialect needs it."""
        return query

    def _lock_ordering_key(self, subscription_id: int, key: str) -> None:
        """Serialise transactions that move one ordering key. Dialects override."""

    def _lock_subscription(self, subscription_id: int) -> None:
        """Serialise transactions that lease for one subscription. Dialects override."""

    def _lock_dedup_ids(self, dedup_ids: Sequence[str]) -> None:
        """Serialise transactions that publish under the same dedup ids. Dialects override."""

    # -- events --------------------------------------------------------------

    def event_insert_many(self, params: EventInsertParams) -> list[PublishOutcome]:
        """Store events and their deliveries; duplicates store nothing."""
        now = params.now_us
        dedup_ids = sorted({d.dedup_id for d in params.drafts if d.dedup_id})
        if dedup_ids:
            # Two brokers publishing one dedup id at once: the second waits, then sees it.
            self._lock_dedup_ids(dedup_ids)
        existing = self._live_dedup_ids(dedup_ids, now)
        subscriptions = list(self._subscriptions_by_id().values())
        event_rows: list[tuple[Any, ...]] = []
        delivery_rows: list[tuple[Any, ...]] = []
        dedup_rows: list[tuple[str, str, int]] = []
        outcomes: list[PublishOutcome] = []
        ordered_keys: set[OrderedKey] = set()
        for draft in params.drafts:
            if draft.dedup_id:
                first = existing.get(draft.dedup_id)
                if first is not None:
                    outcomes.append(PublishOutcome(first, duplicate=True))
                    continue
                existing[draft.dedup_id] = draft.event_id
                dedup_rows.append((draft.dedup_id, draft.event_id, now + params.dedup_window_us))
            deliver_at = max(draft.deliver_at_us, now)
            event_rows.append(
                (
                    draft.event_id,
                    draft.name,
                    draft.payload,
                    draft.content_type,
                    json.dumps(dict(draft.headers)) if draft.headers else None,
                    draft.dedup_id,
                    draft.priority,
                    draft.ordering_key,
                    now,
                    deliver_at,
                    draft.delay_us,
                )
            )
            scheduled = deliver_at > now
            state = int(DeliveryState.SCHEDULED if scheduled else DeliveryState.READY)
            ready_ids: set[int] = set()
            for sub in subscriptions:
                if not matches(sub.filters, draft.name):
                    continue
                delivery_rows.append(
                    (
                        sub.id,
                        draft.event_id,
                        state,
                        -draft.priority,
                        draft.ordering_key if sub.ordered else None,
                        deliver_at,
                        now,
                    )
                )
                ready_ids.add(sub.id)
                if sub.ordered and draft.ordering_key:
                    ordered_keys.add((sub.id, draft.ordering_key))
            outcomes.append(
                PublishOutcome(
                    draft.event_id,
                    duplicate=False,
                    ready_subscription_ids=frozenset() if scheduled else frozenset(ready_ids),
                    next_scheduled_us=deliver_at if scheduled and ready_ids else None,
                    matched=len(ready_ids),
                )
            )
        for subscription_id, key in sorted(ordered_keys):
            # Taken before the rows exist, so that a key's deliveries are numbered in
            # the order their transactions commit, whichever broker wrote them.
            self._lock_ordering_key(subscription_id, key)
        if dedup_rows:
            # A row left for one of these ids is past its window (a live one made the
            # publish a duplicate above, under the ids' locks): it is replaced.
            with closing(self._cursor()) as cursor:
                cursor.executemany(self._sql(_UPSERT_DEDUP_SQL), dedup_rows)
        if event_rows:
            self._insert_rows(event_rows, delivery_rows)
        if ordered_keys:
            self._gate(ordered_keys, now)
        return outcomes

    def _live_dedup_ids(self, dedup_ids: list[str], now: int) -> dict[str, str]:
        """The event id of each of these dedup ids still inside its window."""
        found: dict[str, str] = {}
        with closing(self._cursor()) as cursor:
            for start in range(0, len(dedup_ids), DEDUP_CHUNK):
                chunk = dedup_ids[start : start + DEDUP_CHUNK]
                marks = ", ".join("?" * len(chunk))
                cursor.execute(
                    self._sql(f"{_LIVE_DEDUP_SQL} AND dedup_id IN ({marks})"), [now, *chunk]
                )
                found.update(cursor.fetchall())
        return found

    def event_get(self, event_id: str) -> StoredEvent | None:
        """One stored event."""
        row = self.conn.execute(sa.select(_e).where(_e.c.id == event_id)).first()
        return _event_from_row(row) if row is not None else None

    def event_count(self) -> int:
        """How many events are stored."""
        return int(self.conn.execute(sa.select(sa.func.count()).select_from(_e)).scalar_one())

    def event_get_many(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        """Stored events by id (ids not stored are left out)."""
        ids = list(set(event_ids))
        if not ids:
            return {}
        rows = self.conn.execute(sa.select(_e).where(_e.c.id.in_(ids)))
        return {row.id: _event_from_row(row) for row in rows}

    # -- leasing -------------------------------------------------------------

    def delivery_lease(self, params: DeliveryLeaseParams) -> dict[str, list[LeaseClaim]]:
        """Lease ready deliveries, at most what each consumer asks for."""
        sub = self._subscriptions_by_id().get(params.subscription_id)
        if sub is None:
            return {}
        budget = sum(r.count for r in params.requests)
        if sub.max_in_flight > 0:
            # Count and claim under one lock, or two brokers could each fill the last slot.
            self._lock_subscription(sub.id)
            in_flight = self.conn.execute(
                sa.select(sa.func.count())
                .select_from(_d)
                .where(_d.c.subscription_id == sub.id, _d.c.state == DeliveryState.IN_FLIGHT)
            ).scalar_one()
            budget = min(budget, sub.max_in_flight - int(in_flight))
        now = params.now_us
        expires = now + sub.ack_deadline_us
        claimed: list[tuple[str, Any]] = []
        shares = share_credit([r.count for r in params.requests], budget)
        cursor = self._cursor()
        claim = self._claim_sql()
        for request, count in zip(params.requests, shares, strict=True):
            if count <= 0:
                continue
            cursor.execute(claim, (now, expires, request.consumer, now, sub.id, count))
            rows = [_Claimed(*row) for row in cursor.fetchall()]
            claimed.extend((request.consumer, row) for row in rows)
            if len(rows) < count:
                break  # nothing more is ready
        cursor.close()
        leased: dict[str, list[LeaseClaim]] = {}
        for consumer, row in sorted(claimed, key=lambda c: (c[1].rank, c[1].id)):
            leased.setdefault(consumer, []).append(
                LeaseClaim(str(AckId(row.id, row.attempt)), row.event_id, row.attempt, expires)
            )
        return leased

    def _live_leases(
        self, ack_ids: Sequence[str], unexpired_at_us: int | None = None
    ) -> tuple[dict[int, Any], list[str], list[str]]:
        """Rows of the live leases named, and the ack ids applied and not applied.

        With `unexpired_at_us`, a lease whose deadline has passed by then is not
        live, whether or not a reaper has got to it yet: a late ack, nack or
        extension has no effect (the reaper's own expiry passes None).
        """
        parsed = {text: AckId.parse(text) for text in ack_ids}
        wanted = {a.delivery_id for a in parsed.values() if a is not None}
        rows: dict[int, Any] = {}
        if wanted:
            query = sa.select(*_SETTLE_COLUMNS).where(
                _d.c.id.in_(wanted), _d.c.state == DeliveryState.IN_FLIGHT
            )
            if unexpired_at_us is not None:
                query = query.where(_d.c.lease_expires_at > unexpired_at_us)
            rows = {row.id: row for row in self.conn.execute(self._locked(query))}
        applied: list[str] = []
        not_applied: list[str] = []
        live: dict[int, Any] = {}
        for text, ack in parsed.items():
            row = rows.get(ack.delivery_id) if ack is not None else None
            if ack is not None and row is not None and row.attempt == ack.attempt:
                live[row.id] = row
                applied.append(text)
            else:
                not_applied.append(text)
        return live, applied, not_applied

    def delivery_ack(self, params: DeliveryAckParams) -> SettleOutcome:
        """Acknowledge live leases; others are reported not applied.

        One statement per chunk both finds and settles them: a lease is live
        while its row is in flight at the ack id's attempt and its deadline has
        not passed.
        """
        parsed = {text: AckId.parse(text) for text in params.ack_ids}
        pairs = sorted({a for a in parsed.values() if a is not None}, key=_ack_order)
        live: dict[int, _Acked] = {}
        if pairs:
            cursor = self._cursor()
            for start in range(0, len(pairs), ACK_CHUNK):
                chunk = pairs[start : start + ACK_CHUNK]
                cursor.execute(*self._ack_statement(chunk, params.now_us))
                live.update((row[0], _Acked(*row)) for row in cursor.fetchall())
            cursor.close()
        applied: list[str] = []
        not_applied: list[str] = []
        for text, ack in parsed.items():
            row = live.get(ack.delivery_id) if ack is not None else None
            if ack is not None and row is not None and row.attempt == ack.attempt:
                applied.append(text)
            else:
                not_applied.append(text)
        keys = {(r.subscription_id, r.ordering_key) for r in live.values() if r.ordering_key}
        ready, next_scheduled = self._gate(keys, params.now_us) if keys else (set(), None)
        ready |= self._slots_freed(live.values())
        return SettleOutcome(tuple(applied), tuple(not_applied), frozenset(ready), next_scheduled)

    def _slots_freed(self, rows: Iterable[Any]) -> set[int]:
        """Subscriptions with a concurrency limit that settling these leases makes room in."""
        subs = self._subscriptions_by_id()
        return {
            row.subscription_id
            for row in rows
            if (sub := subs.get(row.subscription_id)) is not None and sub.max_in_flight > 0
        }

    def delivery_failing(self, params: DeliveryFailingParams) -> FailingLeases:
        """The live leases among these ack ids, locked until the transaction ends."""
        live, applied, not_applied = self._live_leases(params.ack_ids, params.unexpired_at_us)
        leases = [
            FailingLease(
                delivery_id=row.id,
                attempt=row.attempt,
                subscription_id=row.subscription_id,
                leased_at_us=row.leased_at,
                consumer=row.consumer or "",
                history=tuple(_history_from_json(row.history)),
                ordering_key=row.ordering_key,
            )
            for row in live.values()
        ]
        return FailingLeases(leases, tuple(applied), tuple(not_applied))

    def delivery_fail(self, params: DeliveryFailParams) -> SettleOutcome:
        """Write retried or dead deliveries; says which subscriptions may deliver more."""
        if not params.changes:
            return SettleOutcome((), ())
        now = params.now_us
        cursor = self._cursor()
        cursor.executemany(
            self._sql(_FAIL_SQL),
            [
                (
                    int(change.state),
                    change.ready_at_us,
                    _history_to_json(change.history),
                    change.error,
                    int(change.dead_reason),
                    now,
                    change.delivery_id,
                )
                for change in params.changes
            ],
        )
        cursor.close()
        ready_subs = {c.subscription_id for c in params.changes if c.state == DeliveryState.READY}
        scheduled = [c.ready_at_us for c in params.changes if c.state == DeliveryState.SCHEDULED]
        next_scheduled = min(scheduled, default=None)
        dead_keys = {
            (c.subscription_id, c.ordering_key)
            for c in params.changes
            if c.state == DeliveryState.DEAD and c.ordering_key
        }
        if dead_keys:
            unblocked, due = self._gate(dead_keys, now)
            ready_subs |= unblocked
            next_scheduled = _earliest(next_scheduled, due)
        ready_subs |= self._slots_freed(params.changes)
        return SettleOutcome((), (), frozenset(ready_subs), next_scheduled)

    def delivery_extend(self, params: DeliveryExtendParams) -> SettleOutcome:
        """Extend live leases."""
        live, applied, not_applied = self._live_leases(params.ack_ids, params.now_us)
        if live:
            self.conn.execute(
                sa.update(_d)
                .where(_d.c.id.in_(list(live)))
                .values(lease_expires_at=params.now_us + params.extension_us)
            )
        return SettleOutcome(tuple(applied), tuple(not_applied))

    def delivery_expired_list(self, params: DeliveryExpiredListParams) -> list[AckId]:
        """Leases whose deadline has passed."""
        rows = self.conn.execute(
            sa.select(_d.c.id, _d.c.attempt)
            .where(_d.c.state == DeliveryState.IN_FLIGHT, _d.c.lease_expires_at <= params.now_us)
            .order_by(_d.c.lease_expires_at)
            .limit(params.limit)
        )
        return [AckId(row.id, row.attempt) for row in rows]

    def delivery_live_leases(self, ack_ids: Sequence[str]) -> set[str]:
        """Which of these ack ids are still live leases (in flight, same attempt)."""
        parsed = {text: AckId.parse(text) for text in ack_ids}
        wanted = {a.delivery_id for a in parsed.values() if a is not None}
        if not wanted:
            return set()
        attempts = {
            row.id: row.attempt
            for row in self.conn.execute(
                sa.select(_d.c.id, _d.c.attempt).where(
                    _d.c.id.in_(wanted), _d.c.state == DeliveryState.IN_FLIGHT
                )
            )
        }
        return {
            text
            for text, ack in parsed.items()
            if ack is not None and attempts.get(ack.delivery_id) == ack.attempt
        }

    # -- API keys ------------------------------------------------------------

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
        return _api_key_from_row(row) if row is not None else None

    def api_key_list(self) -> list[ApiKey]:
        """Every API key, oldest first."""
        rows = self.conn.execute(sa.select(_k).order_by(_k.c.created_at, _k.c.id))
        return [_api_key_from_row(row) for row in rows]

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

    def delivery_promote(self, params: DeliveryPromoteParams) -> PromoteOutcome:
        """Make due scheduled deliveries ready."""
        due = (
            sa.select(_d.c.id)
            .where(_d.c.state == DeliveryState.SCHEDULED, _d.c.ready_at <= params.now_us)
            .limit(params.limit)
        )
        rows = self.conn.execute(
            sa.update(_d)
            .where(_d.c.id.in_(due.scalar_subquery()), _d.c.state == DeliveryState.SCHEDULED)
            .values(state=DeliveryState.READY, updated_at=params.now_us)
            .returning(_d.c.subscription_id)
        ).all()
        next_due = self.conn.execute(
            sa.select(sa.func.min(_d.c.ready_at)).where(_d.c.state == DeliveryState.SCHEDULED)
        ).scalar_one()
        return PromoteOutcome(
            frozenset(row.subscription_id for row in rows),
            len(rows),
            int(next_due) if next_due is not None else None,
        )

    # -- ordering keys ---------------------------------------------------------

    def _gate(self, keys: Iterable[OrderedKey], now: int) -> tuple[set[int], int | None]:
        """Let only the earliest open delivery of each ordering key move.

        The first delivery of a key that is not yet acked or dead holds the key:
        it is ready, scheduled or in flight; every later one is BLOCKED until it
        is settled. Returns the subscriptions with a delivery made ready, and the
        earliest time one made scheduled becomes due.
        """
        ready: set[int] = set()
        next_due: int | None = None
        for subscription_id, key in sorted(set(keys)):
            self._lock_ordering_key(subscription_id, key)
            rows = self.conn.execute(
                sa.select(_d.c.id, _d.c.state, _d.c.ready_at)
                .where(
                    _d.c.subscription_id == subscription_id,
                    _d.c.ordering_key == key,
                    _d.c.state.in_(_OPEN_STATES),
                )
                .order_by(_d.c.id)
            ).all()
            if not rows:
                continue
            head = rows[0]
            if head.state == DeliveryState.BLOCKED:
                if head.ready_at <= now:
                    state = DeliveryState.READY
                    ready.add(subscription_id)
                else:
                    state = DeliveryState.SCHEDULED
                    next_due = _earliest(next_due, head.ready_at)
                self.conn.execute(
                    sa.update(_d).where(_d.c.id == head.id).values(state=state, updated_at=now)
                )
            waiting = [
                r.id for r in rows[1:] if r.state in (DeliveryState.READY, DeliveryState.SCHEDULED)
            ]
            if waiting:
                self.conn.execute(
                    sa.update(_d)
                    .where(_d.c.id.in_(waiting))
                    .values(state=DeliveryState.BLOCKED, updated_at=now)
                )
        return ready, next_due

    def _keys_of(self, delivery_ids: Sequence[int]) -> set[OrderedKey]:
        if not delivery_ids:
            return set()
        rows = self.conn.execute(
            sa.select(_d.c.subscription_id, _d.c.ordering_key).where(
                _d.c.id.in_(delivery_ids), _d.c.ordering_key.is_not(None)
            )
        )
        return {(row.subscription_id, row.ordering_key) for row in rows}

    # -- dead letters, replay, retention ----------------------------------------

    def delivery_redrive(self, params: DeliveryRedriveParams) -> int:
        """Make dead letters ready again, attempts counted afresh; returns how many."""
        query = (
            sa.select(_d.c.id)
            .where(
                _d.c.subscription_id == params.subscription_id,
                _d.c.state == DeliveryState.DEAD,
            )
            .order_by(_d.c.id)
            .limit(params.limit)
        )
        if params.event_ids:
            query = query.where(_d.c.event_id.in_(list(params.event_ids)))
        if params.reason is not None:
            query = query.where(_d.c.dead_reason == params.reason)
        if params.name is not None:
            query = query.where(
                _d.c.event_id.in_(sa.select(_e.c.id).where(_e.c.name == params.name))
            )
        ids = [row.id for row in self.conn.execute(self._locked(query))]
        if ids:
            self.conn.execute(
                sa.update(_d)
                .where(_d.c.id.in_(ids))
                .values(
                    state=DeliveryState.READY,
                    ready_at=params.now_us,
                    attempt=0,
                    dead_reason=DeadReason.NONE,
                    lease_expires_at=None,
                    updated_at=params.now_us,
                )
            )
            self._gate(self._keys_of(ids), params.now_us)
        return len(ids)

    def subscription_backfill(self, params: SubscriptionBackfillParams) -> int:
        """Add deliveries for matching stored events that have none; returns how many."""
        sub = self._subscriptions_by_id().get(params.subscription_id)
        if sub is None:
            return 0
        now = params.now_us
        added = 0
        keys: set[OrderedKey] = set()
        cursor = (params.since_us, "")
        while True:
            events = self.conn.execute(
                sa.select(
                    _e.c.id,
                    _e.c.name,
                    _e.c.priority,
                    _e.c.ordering_key,
                    _e.c.deliver_at,
                    _e.c.published_at,
                )
                .where(sa.tuple_(_e.c.published_at, _e.c.id) > sa.tuple_(*cursor))
                .order_by(_e.c.published_at, _e.c.id)
                .limit(BACKFILL_PAGE)
            ).all()
            if not events:
                break
            cursor = (events[-1].published_at, events[-1].id)
            matching = [e for e in events if matches(sub.filters, e.name)]
            have = (
                set(
                    self.conn.execute(
                        sa.select(_d.c.event_id).where(
                            _d.c.subscription_id == sub.id,
                            _d.c.event_id.in_([e.id for e in matching]),
                        )
                    ).scalars()
                )
                if matching
                else set()
            )
            rows = [
                {
                    "subscription_id": sub.id,
                    "event_id": e.id,
                    "state": DeliveryState.SCHEDULED if e.deliver_at > now else DeliveryState.READY,
                    "rank": -e.priority,
                    "ordering_key": e.ordering_key if sub.ordered else None,
                    "ready_at": max(e.deliver_at, now),
                    "attempt": 0,
                    "dead_reason": DeadReason.NONE,
                    "updated_at": now,
                }
                for e in matching
                if e.id not in have
            ]
            if rows:
                self.conn.execute(sa.insert(_d), rows)
                added += len(rows)
                keys |= {(sub.id, r["ordering_key"]) for r in rows if r["ordering_key"]}
        if keys:
            self._gate(keys, now)
        return added

    def subscription_seek(self, params: SubscriptionSeekParams) -> SeekOutcome:
        """Replay from a time: later events delivered again, earlier ones skipped."""
        now = params.now_us
        sub_id = params.subscription_id
        before = sa.select(_e.c.id).where(_e.c.published_at < params.time_us)
        since = sa.select(_e.c.id).where(_e.c.published_at >= params.time_us)
        skipped = self.conn.execute(
            sa.update(_d)
            .where(
                _d.c.subscription_id == sub_id,
                _d.c.state.in_(
                    (DeliveryState.SCHEDULED, DeliveryState.READY, DeliveryState.BLOCKED)
                ),
                _d.c.event_id.in_(before),
            )
            .values(state=DeliveryState.ACKED, updated_at=now)
        ).rowcount
        replay_ids = [
            row.id
            for row in self.conn.execute(
                sa.select(_d.c.id).where(
                    _d.c.subscription_id == sub_id,
                    _d.c.state.in_((DeliveryState.ACKED, DeliveryState.DEAD)),
                    _d.c.event_id.in_(since),
                )
            )
        ]
        if replay_ids:
            self.conn.execute(
                sa.update(_d)
                .where(_d.c.id.in_(replay_ids))
                .values(
                    state=DeliveryState.READY,
                    ready_at=now,
                    attempt=0,
                    dead_reason=DeadReason.NONE,
                    last_error=None,
                    history=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
        added = self.subscription_backfill(SubscriptionBackfillParams(sub_id, params.time_us, now))
        self._gate(self._keys_of(replay_ids), now)
        return SeekOutcome(replayed=len(replay_ids) + added, skipped=int(skipped))

    def maintenance(self, params: MaintenanceParams) -> MaintenanceOutcome:
        """Apply maximum ages and retention, a bounded number of rows at a time."""
        now = params.now_us
        expired_ids: list[int] = []
        deleted = 0
        for sub in self._subscriptions_by_id().values():
            if sub.max_age_us:
                old = sa.select(_e.c.id).where(_e.c.published_at < now - sub.max_age_us)
                expired_ids += [
                    row.id
                    for row in self.conn.execute(
                        sa.select(_d.c.id)
                        .where(
                            _d.c.subscription_id == sub.id,
                            _d.c.state.in_(
                                (
                                    DeliveryState.SCHEDULED,
                                    DeliveryState.READY,
                                    DeliveryState.BLOCKED,
                                )
                            ),
                            _d.c.event_id.in_(old),
                        )
                        .limit(params.limit)
                    )
                ]
            done = (
                sa.select(_d.c.id)
                .where(
                    _d.c.subscription_id == sub.id,
                    _d.c.state.in_((DeliveryState.ACKED, DeliveryState.DEAD)),
                    _d.c.updated_at < now - sub.retention_us,
                )
                .limit(params.limit)
            )
            deleted += self.conn.execute(
                sa.delete(_d).where(_d.c.id.in_(done.scalar_subquery()))
            ).rowcount
        if expired_ids:
            self.conn.execute(
                sa.update(_d)
                .where(_d.c.id.in_(expired_ids))
                .values(
                    state=DeliveryState.DEAD,
                    dead_reason=DeadReason.EXPIRED,
                    updated_at=now,
                )
            )
            self._gate(self._keys_of(expired_ids), now)
        orphaned = (
            sa.select(_e.c.id)
            .where(
                _e.c.published_at < now - params.event_retention_us,
                ~sa.exists().where(_d.c.event_id == _e.c.id),
            )
            .limit(params.limit)
        )
        events_deleted = self.conn.execute(
            sa.delete(_e).where(_e.c.id.in_(orphaned.scalar_subquery()))
        ).rowcount
        return MaintenanceOutcome(len(expired_ids), int(deleted), int(events_deleted))

    # -- inspection ----------------------------------------------------------

    def delivery_list_for_event(self, event_id: str) -> list[DeliveryInfo]:
        """An event's delivery in each subscription."""
        rows = self.conn.execute(
            sa.select(_d, _s.c.name.label("subscription_name"))
            .join(_s, _s.c.id == _d.c.subscription_id)
            .where(_d.c.event_id == event_id)
            .order_by(_s.c.name)
        )
        return [_delivery_info_from_row(row) for row in rows]

    def dead_letter_list(self, params: DeadLetterListParams) -> list[DeadLetter]:
        """A page of dead letters, oldest first."""
        query = (
            sa.select(_d, _s.c.name.label("subscription_name"))
            .join(_s, _s.c.id == _d.c.subscription_id)
            .where(
                _d.c.subscription_id == params.subscription_id,
                _d.c.state == DeliveryState.DEAD,
                _d.c.id > params.after_delivery_id,
            )
            .order_by(_d.c.id)
            .limit(params.limit)
        )
        if params.reason is not None:
            query = query.where(_d.c.dead_reason == params.reason)
        if params.name is not None:
            query = query.where(
                _d.c.event_id.in_(sa.select(_e.c.id).where(_e.c.name == params.name))
            )
        rows = self.conn.execute(query).all()
        events = self.event_get_many({row.event_id for row in rows})
        return [
            DeadLetter(row.id, events[row.event_id], _delivery_info_from_row(row)) for row in rows
        ]

    # -- subscriptions -------------------------------------------------------

    def _subscriptions_by_id(self) -> dict[int, Subscription]:
        if self._subscriptions is None:
            with closing(self._cursor()) as cursor:
                cursor.execute(_SUBSCRIPTIONS_SQL)
                rows = cursor.fetchall()
            self._subscriptions = {}
            for row in rows:
                key = tuple(row)
                sub = _known_subscriptions.get(key)
                if sub is None:
                    if len(_known_subscriptions) >= KNOWN_SUBSCRIPTIONS_MAX:
                        _known_subscriptions.clear()
                    sub = _subscription_from_row(_SubscriptionRow(*key))
                    _known_subscriptions[key] = sub
                self._subscriptions[sub.id] = sub
        return self._subscriptions

    def subscription_create(self, subscription: Subscription) -> Subscription:
        """Create a subscription; raises SubscriptionExistsError."""
        if self.subscription_get(subscription.name) is not None:
            raise SubscriptionExistsError(subscription.name)
        values = _subscription_values(subscription)
        try:
            new_id = self.conn.execute(
                sa.insert(_s).values(**values).returning(_s.c.id)
            ).scalar_one()
        except sa_exc.IntegrityError as error:
            raise SubscriptionExistsError(subscription.name) from error
        self._subscriptions = None
        self.subscriptions_changed = True
        created = self.subscription_get_by_id(int(new_id))
        assert created is not None
        if created.start_position is StartPosition.BEGINNING:
            self.subscription_backfill(
                SubscriptionBackfillParams(created.id, 0, created.created_at_us)
            )
        elif created.start_position is StartPosition.TIME:
            self.subscription_backfill(
                SubscriptionBackfillParams(created.id, created.start_time_us, created.created_at_us)
            )
        return created

    def subscription_get(self, name: str) -> Subscription | None:
        """One subscription by name."""
        row = self.conn.execute(sa.select(_s).where(_s.c.name == name)).first()
        return _subscription_from_row(row) if row is not None else None

    def subscription_get_by_id(self, subscription_id: int) -> Subscription | None:
        """One subscription by id (from the subscriptions this transaction has read)."""
        return self._subscriptions_by_id().get(subscription_id)

    def subscription_list(self, after_name: str, limit: int) -> list[Subscription]:
        """Subscriptions by name, after a name."""
        rows = self.conn.execute(
            sa.select(_s).where(_s.c.name > after_name).order_by(_s.c.name).limit(limit)
        )
        return [_subscription_from_row(row) for row in rows]

    def subscription_update(self, params: SubscriptionUpdateParams) -> Subscription | None:
        """Replace a subscription's settings; None when it does not exist."""
        sub = params.subscription
        values = _subscription_values(sub)
        for fixed in ("name", "created_at", "start_position", "start_time"):
            values.pop(fixed)
        result = self.conn.execute(sa.update(_s).where(_s.c.name == sub.name).values(**values))
        self._subscriptions = None
        self.subscriptions_changed = True
        if result.rowcount == 0:
            return None
        return self.subscription_get(sub.name)

    def subscription_delete(self, name: str) -> bool:
        """Delete a subscription and its deliveries; False when it did not exist."""
        sub = self.subscription_get(name)
        if sub is None:
            return False
        self.conn.execute(sa.delete(_d).where(_d.c.subscription_id == sub.id))
        self.conn.execute(sa.delete(_s).where(_s.c.id == sub.id))
        self._subscriptions = None
        self.subscriptions_changed = True
        return True

    def subscription_counts(self, name: str | None) -> list[SubscriptionCounts]:
        """Delivery counts per subscription (one, or all)."""
        subs = [s for s in self._subscriptions_by_id().values() if name is None or s.name == name]
        ids = [s.id for s in subs]
        counts: dict[tuple[int, int], int] = {}
        oldest: dict[int, int] = {}
        if ids:
            rows = self.conn.execute(
                sa.select(_d.c.subscription_id, _d.c.state, sa.func.count())
                .where(_d.c.subscription_id.in_(ids))
                .group_by(_d.c.subscription_id, _d.c.state)
            )
            counts = {(row[0], row[1]): int(row[2]) for row in rows}
            rows = self.conn.execute(
                sa.select(_d.c.subscription_id, sa.func.min(_d.c.ready_at))
                .where(_d.c.subscription_id.in_(ids), _d.c.state == DeliveryState.READY)
                .group_by(_d.c.subscription_id)
            )
            oldest = {row[0]: int(row[1]) for row in rows}
        return [
            SubscriptionCounts(
                subscription=s.name,
                scheduled=counts.get((s.id, DeliveryState.SCHEDULED), 0),
                ready=counts.get((s.id, DeliveryState.READY), 0),
                in_flight=counts.get((s.id, DeliveryState.IN_FLIGHT), 0),
                acked=counts.get((s.id, DeliveryState.ACKED), 0),
                dead=counts.get((s.id, DeliveryState.DEAD), 0),
                oldest_waiting_us=oldest.get(s.id),
            )
            for s in sorted(subs, key=lambda s: s.name)
        ]

    def dedup_prune(self, now_us: int, limit: int) -> int:
        """Forget dedup ids whose window has passed."""
        expired = sa.select(_dd.c.dedup_id).where(_dd.c.expires_at <= now_us).limit(limit)
        result = self.conn.execute(
            sa.delete(_dd).where(_dd.c.dedup_id.in_(expired.scalar_subquery()))
        )
        return int(result.rowcount)


class SqlStorage:
    """A database reached through SQLAlchemy; dialects subclass it."""

    dialect: ClassVar[str]
    max_concurrent_writers: int = 1
    tx_class: ClassVar[type[SqlTx]]
    #: Keep the subscriptions between transactions (sound only where every write
    #: to the database goes through this object: one process, one writer).
    caches_subscriptions: ClassVar[bool] = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.write_engine, self.read_engine = self._create_engines(url)
        self._subscriptions_cache: dict[int, Subscription] | None = None

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
            tx = self.tx_class(conn, self._subscriptions_cache)
            yield tx
        if self.caches_subscriptions:  # committed: what it read or wrote is the truth now
            self._subscriptions_cache = None if tx.subscriptions_changed else tx._subscriptions

    @contextmanager
    def read(self) -> Iterator[SqlTx]:
        """A read-only transaction."""
        with storage_errors(), self.read_engine.connect() as conn:
            yield self.tx_class(conn, self._subscriptions_cache)

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
    hot statements run on the driver's cursor raise.
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


# -- rows to domain ----------------------------------------------------------


def _earliest(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _api_key_from_row(row: Any) -> ApiKey:
    return ApiKey(
        key_id=row.id,
        name=row.name,
        secret_sha256=row.secret_sha256,
        scopes=frozenset(Scope(s) for s in row.scopes.split(",") if s),
        patterns=tuple(row.patterns.split("\n")) if row.patterns else (),
        created_at_us=row.created_at,
        revoked_at_us=row.revoked_at,
        publish_rate=row.publish_rate,
    )


def _event_from_row(row: Any) -> StoredEvent:
    return StoredEvent(
        event_id=row.id,
        name=row.name,
        payload=bytes(row.payload),
        content_type=row.content_type,
        headers=json.loads(row.headers) if row.headers else {},
        dedup_id=row.dedup_id,
        priority=row.priority,
        ordering_key=row.ordering_key,
        published_at_us=row.published_at,
        deliver_at_us=row.deliver_at,
        delay_us=row.delay_us,
    )


_SubscriptionRow = NamedTuple(  # type: ignore[misc]
    "_SubscriptionRow", [(name, Any) for name in _SUBSCRIPTION_COLUMNS]
)


def _subscription_from_row(row: Any) -> Subscription:
    return Subscription(
        name=row.name,
        filters=tuple(json.loads(row.filters)),
        ack_deadline_us=row.ack_deadline_us,
        max_attempts=row.max_attempts,
        min_backoff_us=row.min_backoff_us,
        max_backoff_us=row.max_backoff_us,
        max_in_flight=row.max_in_flight,
        ordered=bool(row.ordered),
        retention_us=row.retention_us,
        start_position=StartPosition(row.start_position),
        start_time_us=row.start_time,
        created_at_us=row.created_at,
        id=row.id,
        max_age_us=row.max_age_us,
        retry_delays_us=tuple(json.loads(row.retry_delays)) if row.retry_delays else (),
    )


def _subscription_values(sub: Subscription) -> dict[str, Any]:
    return {
        "name": sub.name,
        "filters": json.dumps(list(sub.filters)),
        "ack_deadline_us": sub.ack_deadline_us,
        "max_attempts": sub.max_attempts,
        "min_backoff_us": sub.min_backoff_us,
        "max_backoff_us": sub.max_backoff_us,
        "max_in_flight": sub.max_in_flight,
        "ordered": sub.ordered,
        "retention_us": sub.retention_us,
        "start_position": int(sub.start_position),
        "start_time": sub.start_time_us,
        "created_at": sub.created_at_us,
        "max_age_us": sub.max_age_us,
        "retry_delays": json.dumps(list(sub.retry_delays_us)) if sub.retry_delays_us else None,
    }


def _delivery_info_from_row(row: Any) -> DeliveryInfo:
    state = DeliveryState(row.state)
    next_time: int | None = None
    if state in (DeliveryState.SCHEDULED, DeliveryState.READY):
        next_time = row.ready_at
    elif state is DeliveryState.IN_FLIGHT:
        next_time = row.lease_expires_at
    return DeliveryInfo(
        subscription=row.subscription_name,
        state=state,
        attempts=row.attempt,
        next_time_us=next_time,
        consumer=row.consumer or "",
        dead_reason=DeadReason(row.dead_reason),
        last_error=row.last_error or "",
        history=tuple(_history_from_json(row.history)),
        ordering_key=row.ordering_key,
        updated_at_us=row.updated_at,
    )


def _history_from_json(text: str | None) -> list[AttemptRecord]:
    if not text:
        return []
    return [
        AttemptRecord(
            attempt=item["attempt"],
            delivered_at_us=item["delivered_at"],
            ended_at_us=item["ended_at"],
            consumer=item["consumer"],
            outcome=AttemptOutcome(item["outcome"]),
            error=item.get("error", ""),
        )
        for item in json.loads(text)
    ]


def _history_to_json(history: Sequence[AttemptRecord]) -> str:
    return json.dumps(
        [
            {
                "attempt": h.attempt,
                "delivered_at": h.delivered_at_us,
                "ended_at": h.ended_at_us,
                "consumer": h.consumer,
                "outcome": int(h.outcome),
                "error": h.error,
            }
            for h in history
        ]
    )
