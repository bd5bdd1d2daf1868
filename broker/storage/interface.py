"""The storage interface the delivery engine and the API are written against.

Events are stored once, in an append-only log; each subscription has a
position in it (how far it has read) and delivery rows only for the
deliveries the log cannot serve alone (see `broker.delivery`). Storage reads
these facts and writes the changes the decisions return: it decides nothing.

One implementation per database dialect (`sqlite.py`, `postgres.py`) and one
in memory (`memory.py`, for the engine's tests) satisfy it, and one test suite
runs against each. Methods are noun-first, take one params object where they
take several values, and are given the current time rather than reading the
clock, so tests can move time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from broker.delivery.failure import AfterFailure, FailingLease
from broker.delivery.records import (
    Claim,
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
    DeadReason,
    DeliveryInfo,
    LegacyAckId,
    StoredEvent,
    Subscription,
)


class StorageUnavailableError(Exception):
    """The database cannot be reached or cannot write now (disk full, locked, down)."""


class StorageFullError(StorageUnavailableError):
    """The database has no room to write (a full disk, or a size cap)."""


class StorageConflictError(StorageUnavailableError):
    """Two transactions collided (a deadlock or serialization failure); running again works."""


class SubscriptionExistsError(Exception):
    """A subscription of that name already exists."""


@dataclass(frozen=True, slots=True)
class EventAppendParams:
    """Events to add to the log, in order, with the delivery rows they need at once."""

    events: Sequence[StoredEvent]
    rows: Sequence[NewDelivery]


@dataclass(frozen=True, slots=True)
class DedupParams:
    """Dedup ids to look up (those still inside their window at `now_us`)."""

    dedup_ids: Sequence[str]
    now_us: int


@dataclass(frozen=True, slots=True)
class LogScanParams:
    """Read the log past a subscription's position."""

    subscription_id: int
    position: Position
    limit: int
    #: Each entry's key is this header's value instead of its ordering key
    #: (`broker.delivery.ordering.header_key`); empty: the ordering key.
    key_header: str = ""


@dataclass(frozen=True, slots=True)
class LogTallyParams:
    """Count subscriptions' events without a row, by name.

    `passed` picks the events each one's position has passed (acked on their
    first attempt) or not (waiting). For each subscription in `since_us`, only
    events published from that time and before `published_before_us`, and
    since the subscription's start, are counted; `now_us` tells scheduled ones
    apart.
    """

    since_us: Mapping[int, int]
    passed: bool
    published_before_us: int
    now_us: int


@dataclass(frozen=True, slots=True)
class OldEventsParams:
    """Events published before a time that no delivery row refers to, in log order."""

    published_before_us: int
    after_seq: int
    limit: int


@dataclass(frozen=True, slots=True)
class ClaimParams:
    """Lease ready rows of one subscription."""

    subscription_id: int
    claims: Sequence[Claim]
    now_us: int
    expires_at_us: int


@dataclass(frozen=True, slots=True)
class AckParams:
    """Acknowledge leases that are live at `now_us`."""

    ack_ids: Sequence[AckId]
    now_us: int


@dataclass(frozen=True, slots=True)
class FailingParams:
    """Find the live leases among ack ids that are about to fail, and lock them.

    With `unexpired_at_us`, a lease whose deadline has passed by then is not live.
    """

    ack_ids: Sequence[AckId]
    unexpired_at_us: int | None


@dataclass(frozen=True, slots=True)
class FailParams:
    """Write what failing leases become, as `broker.delivery.failure` decided it."""

    changes: Sequence[AfterFailure]
    now_us: int


@dataclass(frozen=True, slots=True)
class ExtendParams:
    """Move the deadlines of leases live at `now_us` to `until_us`."""

    ack_ids: Sequence[AckId]
    until_us: int
    now_us: int


@dataclass(frozen=True, slots=True)
class PromoteParams:
    """Make scheduled deliveries whose time has come ready."""

    now_us: int
    limit: int


@dataclass(frozen=True, slots=True)
class PromoteOutcome:
    """Which subscriptions got ready deliveries, and when the next one is due."""

    ready_subscription_ids: frozenset[int]
    promoted: int
    next_scheduled_us: int | None
    #: The promoted rows that have a key, with it.
    keyed: tuple[tuple[DeliveryKey, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DeadSelectParams:
    """Dead letters of a subscription to redrive, oldest first, locked.

    Empty `event_ids` means every dead letter matching `name` and `reason`.
    """

    subscription_id: int
    limit: int
    event_ids: Sequence[str] = ()
    name: str | None = None
    reason: DeadReason | None = None


@dataclass(frozen=True, slots=True)
class DeadLetterListParams:
    """A page of a subscription's dead letters."""

    subscription_id: int
    after_delivery_id: int
    limit: int
    name: str | None = None
    reason: DeadReason | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered delivery with its event."""

    delivery_id: int
    event: StoredEvent
    info: DeliveryInfo


@dataclass(frozen=True, slots=True)
class SettledDeleteParams:
    """Delete a subscription's acked and dead rows last changed before a time."""

    subscription_id: int
    changed_before_us: int
    limit: int


class StorageTx(Protocol):
    """The reads and writes of one transaction."""

    # -- events and the log ------------------------------------------------------

    def event_append(self, params: EventAppendParams) -> None:
        """Add events to the log in order, and the rows that refer to them."""
        ...

    def event_get(self, event_id: str) -> StoredEvent | None:
        """One stored event."""
        ...

    def event_get_many(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        """Stored events by id (ids not stored are left out)."""
        ...

    def event_count(self) -> int:
        """How many events are stored."""
        ...

    def event_old_list(self, params: OldEventsParams) -> list[tuple[int, OldEvent]]:
        """Old events no row refers to, with their place in the log and who still waits."""
        ...

    def event_delete(self, event_ids: Sequence[str]) -> int:
        """Delete events (and their dedup ids); how many were deleted."""
        ...

    def dedup_lock(self, dedup_ids: Sequence[str]) -> None:
        """Serialise transactions that publish under the same dedup ids (one writer: no-op)."""
        ...

    def dedup_find(self, params: DedupParams) -> dict[str, str]:
        """The event id of each of these dedup ids still inside its window."""
        ...

    def dedup_put(self, rows: Sequence[tuple[str, str, int]]) -> None:
        """Store (dedup id, event id, expires at) rows, replacing any left past their window."""
        ...

    def dedup_prune(self, now_us: int, limit: int) -> int:
        """Forget dedup ids whose window has passed."""
        ...

    def cursor_lock(self, subscription_id: int, *, wait: bool = False) -> Position | None:
        """A subscription's position, locked until the transaction ends.

        None when the subscription is gone, or (unless `wait`) when another
        transaction holds it: it is leasing for the same subscription, try
        again shortly.
        """
        ...

    def log_scan(self, params: LogScanParams) -> LogScan:
        """Up to `limit` events past the position, in log order."""
        ...

    def log_advance(self, subscription_id: int, position: Position) -> None:
        """Move a subscription's position (locked by `cursor_lock`)."""
        ...

    def log_seek(self, subscription_id: int, time_us: int) -> None:
        """Move a subscription's position to a time: what was published before it is passed."""
        ...

    def log_passed(self, event_id: str, subscription_ids: Sequence[int]) -> dict[int, bool]:
        """Whether each subscription's position has passed an event.

        Subscriptions that started after it (it is not theirs) are left out.
        """
        ...

    def log_tally(self, params: LogTallyParams) -> dict[int, list[NameTally]]:
        """Subscriptions' events without a row, passed or waiting, counted by name."""
        ...

    # -- delivery rows ------------------------------------------------------------

    def delivery_insert(self, rows: Sequence[NewDelivery]) -> None:
        """Write new delivery rows (their events are stored)."""
        ...

    def delivery_ready_list(self, subscription_id: int, limit: int) -> list[ReadyDelivery]:
        """Up to `limit` ready rows of a subscription, in delivery order (rank, log order)."""
        ...

    def delivery_in_flight_count(self, subscription_id: int) -> int:
        """How many of a subscription's deliveries are leased now."""
        ...

    def delivery_claim(self, params: ClaimParams) -> list[Claimed]:
        """Lease ready rows to consumers (rows no longer ready are left out)."""
        ...

    def delivery_ack(self, params: AckParams) -> list[Settled]:
        """Acknowledge the live leases among these ack ids; the ones acknowledged.

        A delivery leased from the log and acked on its first attempt with no
        history leaves no row: the log's position says it was acked. Any other
        is kept, acked, with its history.
        """
        ...

    def delivery_failing(self, params: FailingParams) -> list[FailingLease]:
        """The live leases among these ack ids, locked until the transaction ends."""
        ...

    def delivery_fail(self, params: FailParams) -> None:
        """Write retried or dead deliveries."""
        ...

    def delivery_extend(self, params: ExtendParams) -> list[AckId]:
        """Extend the live leases among these ack ids; the ones extended."""
        ...

    def delivery_expired_list(self, now_us: int, limit: int) -> list[AckId]:
        """Leases whose deadline has passed."""
        ...

    def delivery_live(self, ack_ids: Sequence[AckId]) -> set[AckId]:
        """Which of these ack ids are still live leases (in flight, same attempt)."""
        ...

    def delivery_resolve(self, legacy: Sequence[LegacyAckId]) -> dict[LegacyAckId, AckId]:
        """The ack ids of deliveries named by an earlier ack id (row id and attempt)."""
        ...

    def delivery_promote(self, params: PromoteParams) -> PromoteOutcome:
        """Make due scheduled deliveries ready."""
        ...

    def ordering_key_lock(self, subscription_id: int, key: str) -> None:
        """Serialise transactions that move one key of a subscription (one writer: no-op)."""
        ...

    def delivery_keyed_list(
        self, subscription_id: int, key: str, blocked_limit: int | None = None
    ) -> list[KeyedDelivery]:
        """The open deliveries of a key (ordering key or header key), in log order.

        Every one that is not blocked, and the first `blocked_limit` blocked
        ones (None: all of them).
        """
        ...

    def delivery_blocked_keys(self, subscription_id: int) -> list[str]:
        """The keys of a subscription that have blocked deliveries, sorted."""
        ...

    def delivery_set_states(self, changes: Sequence[StateChange], now_us: int) -> None:
        """Move delivery rows to other states."""
        ...

    def delivery_restart(self, keys: Sequence[DeliveryKey], now_us: int) -> None:
        """Make dead rows ready again as new first attempts, keeping their history."""
        ...

    def delivery_delete(self, keys: Sequence[DeliveryKey]) -> None:
        """Forget delivery rows (a seek's replay: the log delivers their events again)."""
        ...

    def delivery_dead_select(self, params: DeadSelectParams) -> list[DeliveryKey]:
        """Dead letters to redrive, oldest first, locked until the transaction ends."""
        ...

    def delivery_seek_list(self, subscription_id: int) -> list[SeekRow]:
        """A subscription's rows that a seek may change, with their events' publish times."""
        ...

    def delivery_waiting_list(
        self, subscription_id: int, published_before_us: int, limit: int
    ) -> list[DeliveryKey]:
        """A subscription's waiting rows (scheduled, ready, blocked) of events published before."""
        ...

    def delivery_keys_of(self, keys: Sequence[DeliveryKey]) -> set[tuple[int, str]]:
        """The ordering keys these rows hold or wait for."""
        ...

    def delivery_settled_delete(self, params: SettledDeleteParams) -> int:
        """Delete acked and dead rows past retention whose events the position passed; how many."""
        ...

    def delivery_orphans_delete(self, limit: int) -> int:
        """Delete rows of subscriptions that are gone (written by a broker not yet told)."""
        ...

    def delivery_list_for_event(self, event_id: str) -> list[DeliveryInfo]:
        """An event's delivery rows, one per subscription that has one."""
        ...

    def delivery_counts(self, subscription_id: int) -> RowCounts:
        """A subscription's rows by state, and its oldest ready one."""
        ...

    def dead_letter_list(self, params: DeadLetterListParams) -> list[DeadLetter]:
        """A page of dead letters, oldest first."""
        ...

    # -- subscriptions -------------------------------------------------------------

    def subscriptions_by_id(self, *, fresh: bool = False) -> dict[int, Subscription]:
        """Every subscription, by id (as read lately; `fresh`: as the database has them now)."""
        ...

    def subscription_create(self, subscription: Subscription) -> Subscription:
        """Create a subscription and its position at its start; raises SubscriptionExistsError."""
        ...

    def subscription_get(self, name: str) -> Subscription | None:
        """One subscription by name."""
        ...

    def subscription_list(self, after_name: str, limit: int) -> list[Subscription]:
        """Subscriptions by name, after a name."""
        ...

    def subscription_update(self, subscription: Subscription) -> Subscription | None:
        """Replace a subscription's settings (name, id and start unchanged); None if gone."""
        ...

    def subscription_delete(self, name: str) -> bool:
        """Delete a subscription, its position and its rows; False when it did not exist."""
        ...

    # -- API keys ---------------------------------------------------------------------

    def api_key_create(self, key: ApiKey) -> None:
        """Store a new API key."""
        ...

    def api_key_get(self, key_id: str) -> ApiKey | None:
        """One API key by id, revoked or not."""
        ...

    def api_key_list(self) -> list[ApiKey]:
        """Every API key, oldest first."""
        ...

    def api_key_revoke(self, key_id: str, now_us: int) -> bool:
        """Revoke a key; False if there is no such key or it was revoked already."""
        ...

    def api_key_active_count(self) -> int:
        """How many keys are not revoked (none: the broker runs without keys)."""
        ...


class Notifier(Protocol):
    """Carries short messages between the broker processes sharing one database."""

    def notify(self, payload: str) -> None:
        """Send a message (at most 7,000 bytes) to every listening broker, this one included.

        Raises:
            StorageUnavailableError: The database cannot be reached.

        """
        ...

    def listen(
        self,
        on_message: Callable[[str], None],
        stop: threading.Event,
        on_listening: Callable[[], None],
    ) -> None:
        """Call `on_message` (on this thread) for each message, until `stop` is set.

        `on_listening` is called once the connection hears messages, before the
        first one: what was sent before then is not heard.

        Raises:
            StorageUnavailableError: The connection was lost; call again to resume.

        """
        ...


class Storage(Protocol):
    """A database the broker keeps its state in."""

    @property
    def dialect(self) -> str:
        """The dialect: "sqlite", "postgresql" or "memory"."""
        ...

    @property
    def max_concurrent_writers(self) -> int:
        """How many transactions may write at once (1 on SQLite)."""
        ...

    @property
    def reads_own_log(self) -> bool:
        """Whether a scan of the log sees events stored earlier in the same transaction.

        Where it does, a publish can lease its own new events (a standing request).
        """
        ...

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest version."""
        ...

    def write(self, *, keep: bool = False) -> AbstractContextManager[StorageTx]:
        """A write transaction, committed durably on leaving without error.

        `keep`: the calling thread writes again and again (a committer's
        worker), so its connection may be kept for it between transactions.
        """
        ...

    def read(self) -> AbstractContextManager[StorageTx]:
        """A read-only transaction."""
        ...

    def notifier(self) -> Notifier | None:
        """Messages between brokers on this database; None where only one broker may run."""
        ...

    def close(self) -> None:
        """Release every connection."""
        ...
