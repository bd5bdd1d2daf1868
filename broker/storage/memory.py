"""Storage in memory: the engine's tests run on it in milliseconds.

The same interface as the databases, one writer at a time: a write works on
a copy of the state and makes it the state on commit, so a transaction that
fails leaves nothing behind and readers always see the last commit. Positions
are places in the log (`seq`), as on SQLite. Nothing survives the process.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import ClassVar

from broker.delivery.failure import FailingLease
from broker.delivery.ordering import OPEN_STATES, header_key
from broker.delivery.records import (
    Claimed,
    DeliveryKey,
    KeyedDelivery,
    LogEntry,
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
    AttemptRecord,
    DeadReason,
    DeliveryInfo,
    DeliveryState,
    LegacyAckId,
    StartPosition,
    StoredEvent,
    Subscription,
)
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
    SubscriptionExistsError,
)


@dataclass(frozen=True, slots=True)
class _Row:
    """A delivery row."""

    id: int
    subscription_id: int
    event_id: str
    seq: int
    state: DeliveryState
    rank: int
    ordering_key: str | None
    ready_at: int
    attempt: int
    via_log: bool
    updated_at: int
    leased_at: int | None = None
    lease_expires_at: int | None = None
    consumer: str | None = None
    last_error: str | None = None
    dead_reason: DeadReason = DeadReason.NONE
    history: tuple[AttemptRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class _Cursor:
    """A subscription's position (the last seq passed) and its start."""

    seq: int
    start_seq: int
    start_from: int


@dataclass
class _State:
    """Everything stored; a write transaction works on a copy."""

    events: dict[int, StoredEvent] = field(default_factory=dict)
    seqs: list[int] = field(default_factory=list)
    seq_of: dict[str, int] = field(default_factory=dict)
    next_seq: int = 1
    dedup: dict[str, tuple[str, int]] = field(default_factory=dict)
    subscriptions: dict[int, Subscription] = field(default_factory=dict)
    next_subscription_id: int = 1
    cursors: dict[int, _Cursor] = field(default_factory=dict)
    rows: dict[DeliveryKey, _Row] = field(default_factory=dict)
    next_row_id: int = 1
    api_keys: dict[str, ApiKey] = field(default_factory=dict)

    def copy(self) -> _State:
        """A copy to write on (records are immutable, so the containers suffice)."""
        return _State(
            events=dict(self.events),
            seqs=list(self.seqs),
            seq_of=dict(self.seq_of),
            next_seq=self.next_seq,
            dedup=dict(self.dedup),
            subscriptions=dict(self.subscriptions),
            next_subscription_id=self.next_subscription_id,
            cursors=dict(self.cursors),
            rows=dict(self.rows),
            next_row_id=self.next_row_id,
            api_keys=dict(self.api_keys),
        )


class MemoryTx:
    """The reads and writes of one transaction, on a state of its own."""

    def __init__(self, state: _State) -> None:
        self.s = state

    # -- events and the log ------------------------------------------------------

    def event_append(self, params: EventAppendParams) -> None:
        """Add events to the log in order, and the rows that refer to them."""
        s = self.s
        for event in params.events:
            seq = s.next_seq
            s.next_seq += 1
            s.events[seq] = event
            s.seqs.append(seq)
            s.seq_of[event.event_id] = seq
        self._insert(params.rows, via_log=False)

    def event_get(self, event_id: str) -> StoredEvent | None:
        """One stored event."""
        seq = self.s.seq_of.get(event_id)
        return self.s.events[seq] if seq is not None else None

    def event_get_many(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        """Stored events by id."""
        found = {}
        for event_id in event_ids:
            event = self.event_get(event_id)
            if event is not None:
                found[event_id] = event
        return found

    def event_count(self) -> int:
        """How many events are stored."""
        return len(self.s.events)

    def event_old_list(self, params: OldEventsParams) -> list[tuple[int, OldEvent]]:
        """Old events no row refers to, with who still waits for them."""
        s = self.s
        referred = {row.event_id for row in s.rows.values()}
        found: list[tuple[int, OldEvent]] = []
        for seq in s.seqs[bisect.bisect_right(s.seqs, params.after_seq) :]:
            event = s.events[seq]
            if event.published_at_us >= params.published_before_us or event.event_id in referred:
                continue
            waiting = frozenset(
                sid
                for sid, cursor in s.cursors.items()
                if seq > cursor.seq and self._listed(cursor, seq, event)
            )
            found.append(
                (seq, OldEvent(event.event_id, event.name, event.published_at_us, waiting))
            )
            if len(found) >= params.limit:
                break
        return found

    def event_delete(self, event_ids: Sequence[str]) -> int:
        """Delete events."""
        s = self.s
        deleted = 0
        for event_id in event_ids:
            seq = s.seq_of.pop(event_id, None)
            if seq is not None:
                del s.events[seq]
                s.seqs.remove(seq)
                deleted += 1
        return deleted

    def dedup_lock(self, dedup_ids: Sequence[str]) -> None:
        """One writer: nothing to serialise."""

    def dedup_find(self, params: DedupParams) -> dict[str, str]:
        """The event id of each dedup id still inside its window."""
        found = {}
        for dedup_id in params.dedup_ids:
            entry = self.s.dedup.get(dedup_id)
            if entry is not None and entry[1] > params.now_us:
                found[dedup_id] = entry[0]
        return found

    def dedup_put(self, rows: Sequence[tuple[str, str, int]]) -> None:
        """Store dedup ids, replacing any past their window."""
        for dedup_id, event_id, expires in rows:
            self.s.dedup[dedup_id] = (event_id, expires)

    def dedup_prune(self, now_us: int, limit: int) -> int:
        """Forget dedup ids whose window has passed."""
        gone = [d for d, (_, expires) in self.s.dedup.items() if expires <= now_us][:limit]
        for dedup_id in gone:
            del self.s.dedup[dedup_id]
        return len(gone)

    def cursor_lock(self, subscription_id: int, *, wait: bool = False) -> Position | None:
        """The position (one writer: never held by another transaction)."""
        cursor = self.s.cursors.get(subscription_id)
        return Position(cursor.seq) if cursor is not None else None

    def log_scan(self, params: LogScanParams) -> LogScan:
        """Events past the position, in log order."""
        s = self.s
        after = _seq(params.position)
        start = bisect.bisect_right(s.seqs, after)
        seqs = s.seqs[start : start + params.limit]
        entries = []
        for seq in seqs:
            e = s.events[seq]
            entries.append(
                LogEntry(
                    seq,
                    e.event_id,
                    e.name,
                    e.priority,
                    header_key(e.headers, params.key_header)
                    if params.key_header
                    else e.ordering_key,
                    e.published_at_us,
                    e.deliver_at_us,
                    DeliveryKey(params.subscription_id, seq) in s.rows,
                    Position(seq),
                )
            )
        end = seqs[-1] if seqs else after
        return LogScan(entries, Position(end), start + len(seqs) >= len(s.seqs))

    def log_advance(self, subscription_id: int, position: Position) -> None:
        """Move a subscription's position."""
        cursor = self.s.cursors[subscription_id]
        self.s.cursors[subscription_id] = replace(cursor, seq=_seq(position))

    def log_seek(self, subscription_id: int, time_us: int) -> None:
        """Move the position to just before the first event published at or after the time."""
        cursor = self.s.cursors[subscription_id]
        self.s.cursors[subscription_id] = replace(cursor, seq=self._before(time_us))

    def _before(self, time_us: int) -> int:
        for seq in self.s.seqs:
            if self.s.events[seq].published_at_us >= time_us:
                return seq - 1
        return self.s.next_seq - 1

    def log_passed(self, event_id: str, subscription_ids: Sequence[int]) -> dict[int, bool]:
        """Whether each subscription's position has passed the event (left out: not its)."""
        seq = self.s.seq_of.get(event_id)
        if seq is None:
            return {}
        event = self.s.events[seq]
        found = {}
        for sid in subscription_ids:
            cursor = self.s.cursors.get(sid)
            if cursor is not None and self._listed(cursor, seq, event):
                found[sid] = seq <= cursor.seq
        return found

    @staticmethod
    def _listed(cursor: _Cursor, seq: int, event: StoredEvent) -> bool:
        return seq > cursor.start_seq and event.published_at_us >= cursor.start_from

    def log_tally(self, params: LogTallyParams) -> dict[int, list[NameTally]]:
        """Subscriptions' events without a row, passed or waiting, counted by name."""
        s = self.s
        found: dict[int, list[NameTally]] = {}
        for sid, since in params.since_us.items():
            cursor = s.cursors.get(sid)
            if cursor is None:
                continue
            tallies: dict[str, list[int]] = {}
            oldest: dict[str, int] = {}
            for seq in s.seqs:
                event = s.events[seq]
                if not self._listed(cursor, seq, event) or (seq <= cursor.seq) != params.passed:
                    continue
                if not since <= event.published_at_us < params.published_before_us:
                    continue
                if DeliveryKey(sid, seq) in s.rows:
                    continue
                tally = tallies.setdefault(event.name, [0, 0])
                tally[0] += 1
                if event.deliver_at_us > params.now_us:
                    tally[1] += 1
                else:
                    due = event.deliver_at_us
                    oldest[event.name] = min(oldest.get(event.name, due), due)
            found[sid] = [
                NameTally(name, n, scheduled, oldest.get(name))
                for name, (n, scheduled) in tallies.items()
            ]
        return found

    # -- delivery rows ------------------------------------------------------------

    def delivery_insert(self, rows: Sequence[NewDelivery]) -> None:
        """Write rows made by a lease or a scan (the position has passed their events)."""
        self._insert(rows, via_log=True)

    def _insert(self, rows: Sequence[NewDelivery], *, via_log: bool) -> None:
        s = self.s
        for new in rows:
            seq = new.seq if new.seq is not None else s.seq_of[new.event_id]
            key = DeliveryKey(new.subscription_id, seq)
            if key in s.rows:
                raise ValueError(f"delivery {key} exists")
            s.rows[key] = _Row(
                id=s.next_row_id,
                subscription_id=new.subscription_id,
                event_id=new.event_id,
                seq=seq,
                state=new.state,
                rank=new.rank,
                ordering_key=new.ordering_key,
                ready_at=new.ready_at_us,
                attempt=new.attempt,
                via_log=via_log,
                updated_at=new.leased_at_us or new.ready_at_us,
                leased_at=new.leased_at_us,
                lease_expires_at=new.lease_expires_at_us,
                consumer=new.consumer,
                dead_reason=new.dead_reason,
            )
            s.next_row_id += 1

    def _of(self, subscription_id: int) -> Iterator[_Row]:
        return (row for row in self.s.rows.values() if row.subscription_id == subscription_id)

    def delivery_ready_list(self, subscription_id: int, limit: int) -> list[ReadyDelivery]:
        """Ready rows in delivery order."""
        ready = sorted(
            (r for r in self._of(subscription_id) if r.state is DeliveryState.READY),
            key=lambda r: (r.rank, r.seq),
        )
        return [ReadyDelivery(r.seq, r.rank, r.event_id) for r in ready[:limit]]

    def delivery_in_flight_count(self, subscription_id: int) -> int:
        """How many deliveries are leased."""
        return sum(1 for r in self._of(subscription_id) if r.state is DeliveryState.IN_FLIGHT)

    def delivery_claim(self, params: ClaimParams) -> list[Claimed]:
        """Lease ready rows to consumers."""
        claimed = []
        for claim in params.claims:
            key = DeliveryKey(params.subscription_id, claim.seq)
            row = self.s.rows.get(key)
            if row is None or row.state is not DeliveryState.READY:
                continue
            self.s.rows[key] = replace(
                row,
                state=DeliveryState.IN_FLIGHT,
                attempt=row.attempt + 1,
                leased_at=params.now_us,
                lease_expires_at=params.expires_at_us,
                consumer=claim.consumer,
                updated_at=params.now_us,
            )
            claimed.append(Claimed(row.seq, row.event_id, row.attempt + 1))
        return claimed

    def _live(self, ack: AckId, unexpired_at: int | None) -> _Row | None:
        row = self.s.rows.get(DeliveryKey(ack.subscription_id, ack.seq))
        if row is None or row.state is not DeliveryState.IN_FLIGHT or row.attempt != ack.attempt:
            return None
        if unexpired_at is not None and (row.lease_expires_at or 0) <= unexpired_at:
            return None
        return row

    def delivery_ack(self, params: AckParams) -> list[Settled]:
        """Acknowledge live leases; a first attempt leased from the log leaves no row."""
        settled = []
        for ack in params.ack_ids:
            row = self._live(ack, params.now_us)
            if row is None:
                continue
            key = DeliveryKey(row.subscription_id, row.seq)
            if row.via_log and row.attempt == 1 and not row.history:
                del self.s.rows[key]
            else:
                self.s.rows[key] = replace(
                    row, state=DeliveryState.ACKED, lease_expires_at=None, updated_at=params.now_us
                )
            settled.append(Settled(key, row.attempt, row.ordering_key))
        return settled

    def delivery_failing(self, params: FailingParams) -> list[FailingLease]:
        """The live leases among these ack ids."""
        leases = []
        for ack in params.ack_ids:
            row = self._live(ack, params.unexpired_at_us)
            if row is not None:
                leases.append(
                    FailingLease(
                        key=DeliveryKey(row.subscription_id, row.seq),
                        attempt=row.attempt,
                        leased_at_us=row.leased_at,
                        consumer=row.consumer or "",
                        history=row.history,
                        ordering_key=row.ordering_key,
                    )
                )
        return leases

    def delivery_fail(self, params: FailParams) -> None:
        """Write retried or dead deliveries."""
        for change in params.changes:
            row = self.s.rows[change.key]
            self.s.rows[change.key] = replace(
                row,
                state=change.state,
                ready_at=change.ready_at_us,
                history=change.history,
                last_error=change.error,
                dead_reason=change.dead_reason,
                lease_expires_at=None,
                updated_at=params.now_us,
            )

    def delivery_extend(self, params: ExtendParams) -> list[AckId]:
        """Extend live leases."""
        extended = []
        for ack in params.ack_ids:
            row = self._live(ack, params.now_us)
            if row is not None:
                key = DeliveryKey(row.subscription_id, row.seq)
                self.s.rows[key] = replace(row, lease_expires_at=params.until_us)
                extended.append(ack)
        return extended

    def delivery_expired_list(self, now_us: int, limit: int) -> list[AckId]:
        """Leases whose deadline has passed, earliest first."""
        expired = sorted(
            (
                r
                for r in self.s.rows.values()
                if r.state is DeliveryState.IN_FLIGHT and (r.lease_expires_at or 0) <= now_us
            ),
            key=lambda r: r.lease_expires_at or 0,
        )
        return [AckId(r.subscription_id, r.seq, r.attempt) for r in expired[:limit]]

    def delivery_live(self, ack_ids: Sequence[AckId]) -> set[AckId]:
        """Which ack ids are still live leases."""
        return {ack for ack in ack_ids if self._live(ack, None) is not None}

    def delivery_resolve(self, legacy: Sequence[LegacyAckId]) -> dict[LegacyAckId, AckId]:
        """Ack ids of deliveries named by row id and attempt."""
        by_id = {row.id: row for row in self.s.rows.values()}
        found = {}
        for old in legacy:
            row = by_id.get(old.delivery_id)
            if row is not None:
                found[old] = AckId(row.subscription_id, row.seq, old.attempt)
        return found

    def delivery_promote(self, params: PromoteParams) -> PromoteOutcome:
        """Make due scheduled rows ready."""
        due = sorted(
            (
                r
                for r in self.s.rows.values()
                if r.state is DeliveryState.SCHEDULED and r.ready_at <= params.now_us
            ),
            key=lambda r: r.ready_at,
        )[: params.limit]
        for row in due:
            key = DeliveryKey(row.subscription_id, row.seq)
            self.s.rows[key] = replace(row, state=DeliveryState.READY, updated_at=params.now_us)
        later = [r.ready_at for r in self.s.rows.values() if r.state is DeliveryState.SCHEDULED]
        return PromoteOutcome(
            frozenset(r.subscription_id for r in due),
            len(due),
            min(later, default=None),
            tuple(
                (DeliveryKey(r.subscription_id, r.seq), r.ordering_key)
                for r in due
                if r.ordering_key is not None
            ),
        )

    def ordering_key_lock(self, subscription_id: int, key: str) -> None:
        """One writer: nothing to serialise."""

    def delivery_keyed_list(
        self, subscription_id: int, key: str, blocked_limit: int | None = None
    ) -> list[KeyedDelivery]:
        """A key's open deliveries: those not blocked, and the first blocked ones, in log order."""
        rows = sorted(
            (
                r
                for r in self._of(subscription_id)
                if r.ordering_key == key and r.state in OPEN_STATES
            ),
            key=lambda r: r.seq,
        )
        found: list[KeyedDelivery] = []
        blocked = 0
        for r in rows:
            if r.state is DeliveryState.BLOCKED:
                if blocked_limit is not None and blocked >= blocked_limit:
                    continue
                blocked += 1
            found.append(KeyedDelivery(r.seq, r.state, r.ready_at))
        return found

    def delivery_blocked_keys(self, subscription_id: int) -> list[str]:
        """The keys of a subscription that have blocked deliveries, sorted."""
        return sorted(
            {
                r.ordering_key
                for r in self._of(subscription_id)
                if r.state is DeliveryState.BLOCKED and r.ordering_key is not None
            }
        )

    def delivery_set_states(self, changes: Sequence[StateChange], now_us: int) -> None:
        """Move rows to other states."""
        for change in changes:
            row = self.s.rows[change.key]
            self.s.rows[change.key] = replace(
                row,
                state=change.state,
                dead_reason=change.dead_reason
                if change.state is DeliveryState.DEAD
                else row.dead_reason,
                updated_at=now_us,
            )

    def delivery_restart(self, keys: Sequence[DeliveryKey], now_us: int) -> None:
        """Dead rows ready again as new first attempts, history kept."""
        for key in keys:
            row = self.s.rows[key]
            self.s.rows[key] = replace(
                row,
                state=DeliveryState.READY,
                ready_at=now_us,
                attempt=0,
                dead_reason=DeadReason.NONE,
                lease_expires_at=None,
                updated_at=now_us,
            )

    def delivery_delete(self, keys: Sequence[DeliveryKey]) -> None:
        """Forget rows."""
        for key in keys:
            self.s.rows.pop(key, None)

    def delivery_dead_select(self, params: DeadSelectParams) -> list[DeliveryKey]:
        """Dead letters to redrive, oldest first."""
        rows = sorted(
            (r for r in self._of(params.subscription_id) if r.state is DeliveryState.DEAD),
            key=lambda r: r.id,
        )
        keys = []
        for row in rows:
            event = self.event_get(row.event_id)
            if params.event_ids and row.event_id not in params.event_ids:
                continue
            if params.reason is not None and row.dead_reason != params.reason:
                continue
            if params.name is not None and (event is None or event.name != params.name):
                continue
            keys.append(DeliveryKey(row.subscription_id, row.seq))
            if len(keys) >= params.limit:
                break
        return keys

    def delivery_seek_list(self, subscription_id: int) -> list[SeekRow]:
        """A subscription's rows, with their events' publish times."""
        return [
            SeekRow(
                DeliveryKey(r.subscription_id, r.seq),
                r.state,
                self.s.events[r.seq].published_at_us,
            )
            for r in self._of(subscription_id)
        ]

    def delivery_waiting_list(
        self, subscription_id: int, published_before_us: int, limit: int
    ) -> list[DeliveryKey]:
        """Waiting rows of events published before a time."""
        waiting = (DeliveryState.SCHEDULED, DeliveryState.READY, DeliveryState.BLOCKED)
        keys = [
            DeliveryKey(r.subscription_id, r.seq)
            for r in self._of(subscription_id)
            if r.state in waiting and self.s.events[r.seq].published_at_us < published_before_us
        ]
        return sorted(keys)[:limit]

    def delivery_keys_of(self, keys: Sequence[DeliveryKey]) -> set[tuple[int, str]]:
        """The ordering keys these rows hold or wait for."""
        found = set()
        for key in keys:
            row = self.s.rows.get(key)
            if row is not None and row.ordering_key is not None:
                found.add((row.subscription_id, row.ordering_key))
        return found

    def delivery_settled_delete(self, params: SettledDeleteParams) -> int:
        """Delete acked and dead rows past retention whose events the position passed."""
        cursor = self.s.cursors.get(params.subscription_id)
        done = (DeliveryState.ACKED, DeliveryState.DEAD)
        gone = [
            DeliveryKey(r.subscription_id, r.seq)
            for r in self._of(params.subscription_id)
            if r.state in done
            and r.updated_at < params.changed_before_us
            and cursor is not None
            and r.seq <= cursor.seq
        ][: params.limit]
        self.delivery_delete(gone)
        return len(gone)

    def delivery_orphans_delete(self, limit: int) -> int:
        """Delete rows of subscriptions that are gone."""
        gone = [k for k in self.s.rows if k.subscription_id not in self.s.subscriptions][:limit]
        self.delivery_delete(gone)
        return len(gone)

    def _info(self, row: _Row) -> DeliveryInfo:
        next_time: int | None = None
        if row.state in (DeliveryState.SCHEDULED, DeliveryState.READY):
            next_time = row.ready_at
        elif row.state is DeliveryState.IN_FLIGHT:
            next_time = row.lease_expires_at
        return DeliveryInfo(
            subscription=self.s.subscriptions[row.subscription_id].name,
            state=row.state,
            attempts=row.attempt,
            next_time_us=next_time,
            consumer=row.consumer or "",
            dead_reason=row.dead_reason,
            last_error=row.last_error or "",
            history=row.history,
            ordering_key=row.ordering_key,
            updated_at_us=row.updated_at,
        )

    def delivery_list_for_event(self, event_id: str) -> list[DeliveryInfo]:
        """An event's delivery rows."""
        rows = [r for r in self.s.rows.values() if r.event_id == event_id]
        return sorted((self._info(r) for r in rows), key=lambda i: i.subscription)

    def delivery_counts(self, subscription_id: int) -> RowCounts:
        """Rows by state, and the oldest ready one."""
        by_state: dict[DeliveryState, int] = {}
        oldest: int | None = None
        for row in self._of(subscription_id):
            by_state[row.state] = by_state.get(row.state, 0) + 1
            if row.state is DeliveryState.READY:
                oldest = row.ready_at if oldest is None else min(oldest, row.ready_at)
        return RowCounts(by_state, oldest)

    def dead_letter_list(self, params: DeadLetterListParams) -> list[DeadLetter]:
        """A page of dead letters, oldest first."""
        rows = sorted(
            (
                r
                for r in self._of(params.subscription_id)
                if r.state is DeliveryState.DEAD and r.id > params.after_delivery_id
            ),
            key=lambda r: r.id,
        )
        letters = []
        for row in rows:
            event = self.s.events[row.seq]
            if params.reason is not None and row.dead_reason != params.reason:
                continue
            if params.name is not None and event.name != params.name:
                continue
            letters.append(DeadLetter(row.id, event, self._info(row)))
            if len(letters) >= params.limit:
                break
        return letters

    # -- subscriptions -------------------------------------------------------------

    def subscriptions_by_id(self, *, fresh: bool = False) -> dict[int, Subscription]:
        """Every subscription, by id (always fresh: nothing else writes)."""
        return self.s.subscriptions

    def subscription_create(self, subscription: Subscription) -> Subscription:
        """Create a subscription and its position at its start."""
        s = self.s
        if self.subscription_get(subscription.name) is not None:
            raise SubscriptionExistsError(subscription.name)
        created = replace(subscription, id=s.next_subscription_id)
        s.next_subscription_id += 1
        s.subscriptions = {**s.subscriptions, created.id: created}
        head = s.next_seq - 1
        if created.start_position is StartPosition.NEW:
            s.cursors[created.id] = _Cursor(head, head, 0)
        else:
            start = created.start_time_us if created.start_position is StartPosition.TIME else 0
            s.cursors[created.id] = _Cursor(self._before(start), 0, start)
        return created

    def subscription_get(self, name: str) -> Subscription | None:
        """One subscription by name."""
        return next((sub for sub in self.s.subscriptions.values() if sub.name == name), None)

    def subscription_list(self, after_name: str, limit: int) -> list[Subscription]:
        """Subscriptions by name, after a name."""
        subs = sorted(
            (sub for sub in self.s.subscriptions.values() if sub.name > after_name),
            key=lambda sub: sub.name,
        )
        return subs[:limit]

    def subscription_update(self, subscription: Subscription) -> Subscription | None:
        """Replace a subscription's settings."""
        old = self.subscription_get(subscription.name)
        if old is None:
            return None
        new = replace(
            subscription,
            id=old.id,
            created_at_us=old.created_at_us,
            start_position=old.start_position,
            start_time_us=old.start_time_us,
        )
        self.s.subscriptions = {**self.s.subscriptions, old.id: new}
        return new

    def subscription_delete(self, name: str) -> bool:
        """Delete a subscription, its position and its rows."""
        sub = self.subscription_get(name)
        if sub is None:
            return False
        self.s.subscriptions = {k: v for k, v in self.s.subscriptions.items() if k != sub.id}
        self.s.cursors.pop(sub.id, None)
        for key in [k for k in self.s.rows if k.subscription_id == sub.id]:
            del self.s.rows[key]
        return True

    # -- API keys ---------------------------------------------------------------------

    def api_key_create(self, key: ApiKey) -> None:
        """Store a new API key."""
        self.s.api_keys[key.key_id] = key

    def api_key_get(self, key_id: str) -> ApiKey | None:
        """One API key by id."""
        return self.s.api_keys.get(key_id)

    def api_key_list(self) -> list[ApiKey]:
        """Every API key, oldest first."""
        return sorted(self.s.api_keys.values(), key=lambda k: (k.created_at_us, k.key_id))

    def api_key_revoke(self, key_id: str, now_us: int) -> bool:
        """Revoke a key."""
        key = self.s.api_keys.get(key_id)
        if key is None or key.revoked_at_us is not None:
            return False
        self.s.api_keys[key_id] = dataclasses.replace(key, revoked_at_us=now_us)
        return True

    def api_key_active_count(self) -> int:
        """How many keys are not revoked."""
        return sum(1 for k in self.s.api_keys.values() if k.revoked_at_us is None)


def _seq(position: Position) -> int:
    assert isinstance(position, int)
    return position


class MemoryStorage:
    """State in memory, one writer at a time."""

    dialect: ClassVar[str] = "memory"
    max_concurrent_writers = 1
    reads_own_log = True

    def __init__(self) -> None:
        self._state = _State()
        self._writer = threading.Lock()

    def migrate(self) -> None:
        """Nothing to create."""

    @contextmanager
    def write(self, *, keep: bool = False) -> Iterator[MemoryTx]:
        """A transaction on a copy of the state, made the state when it ends without error."""
        with self._writer:
            tx = MemoryTx(self._state.copy())
            yield tx
            self._state = tx.s

    @contextmanager
    def read(self) -> Iterator[MemoryTx]:
        """The last committed state (never written through: writes work on copies)."""
        yield MemoryTx(self._state)

    def notifier(self) -> Notifier | None:
        """One process: no other broker to tell."""
        return None

    def close(self) -> None:
        """Nothing to release."""
