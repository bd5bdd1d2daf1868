"""The storage interface the delivery engine and the API are written against.

One implementation per database dialect (`sqlite.py`, `postgres.py`) satisfies
it, and one test suite runs against every implementation. Methods are
noun-first, take one params object, and are given the current time rather than
reading the clock, so tests can move time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from broker.domain import (
    AckId,
    ApiKey,
    DeadReason,
    DeliveryInfo,
    EventDraft,
    LeaseClaim,
    LeaseRequest,
    PublishOutcome,
    SettleOutcome,
    StoredEvent,
    Subscription,
    SubscriptionCounts,
)
from broker.transitions import AfterFailure, FailingLease


class StorageUnavailableError(Exception):
    """The database cannot be reached or cannot write now (disk full, locked, down)."""


class StorageFullError(StorageUnavailableError):
    """The database has no room to write (a full disk, or a size cap)."""


class StorageConflictError(StorageUnavailableError):
    """Two transactions collided (a deadlock or serialization failure); running again works."""


class SubscriptionExistsError(Exception):
    """A subscription of that name already exists."""


@dataclass(frozen=True, slots=True)
class EventInsertParams:
    """Store events (all or none) and fan each out to matching subscriptions."""

    drafts: Sequence[EventDraft]
    now_us: int
    dedup_window_us: int


@dataclass(frozen=True, slots=True)
class DeliveryLeaseParams:
    """Lease ready deliveries of one subscription to its consumers."""

    subscription_id: int
    requests: Sequence[LeaseRequest]
    now_us: int


@dataclass(frozen=True, slots=True)
class DeliveryAckParams:
    """Acknowledge leases."""

    ack_ids: Sequence[str]
    now_us: int


@dataclass(frozen=True, slots=True)
class DeliveryFailingParams:
    """Find the live leases among ack ids that are about to fail, and lock them.

    With `unexpired_at_us`, a lease whose deadline has passed by then is not live.
    """

    ack_ids: Sequence[str]
    unexpired_at_us: int | None


@dataclass(frozen=True, slots=True)
class FailingLeases:
    """The live leases found, and which ack ids they are (the others are not applied)."""

    leases: list[FailingLease]
    applied: tuple[str, ...]
    not_applied: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeliveryFailParams:
    """Write what failing leases become, as `broker.transitions` decided it."""

    changes: Sequence[AfterFailure]
    now_us: int


@dataclass(frozen=True, slots=True)
class DeliveryExtendParams:
    """Move lease deadlines to now + extension."""

    ack_ids: Sequence[str]
    extension_us: int
    now_us: int


@dataclass(frozen=True, slots=True)
class DeliveryExpiredListParams:
    """Find leases whose deadline has passed."""

    now_us: int
    limit: int


@dataclass(frozen=True, slots=True)
class DeliveryPromoteParams:
    """Make scheduled deliveries whose time has come ready."""

    now_us: int
    limit: int


@dataclass(frozen=True, slots=True)
class PromoteOutcome:
    """Which subscriptions got ready deliveries, and when the next one is due."""

    ready_subscription_ids: frozenset[int]
    promoted: int
    next_scheduled_us: int | None


@dataclass(frozen=True, slots=True)
class SubscriptionUpdateParams:
    """Replace a subscription's settings (name and id unchanged)."""

    subscription: Subscription


@dataclass(frozen=True, slots=True)
class DeadLetterListParams:
    """A page of a subscription's dead letters."""

    subscription_id: int
    after_delivery_id: int
    limit: int
    name: str | None = None
    reason: DeadReason | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRedriveParams:
    """Make dead letters ready again as new attempts (at most `limit` per call).

    Empty `event_ids` means every dead letter matching `name` and `reason`.
    """

    subscription_id: int
    now_us: int
    limit: int
    event_ids: Sequence[str] = ()
    name: str | None = None
    reason: DeadReason | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionBackfillParams:
    """Give a subscription deliveries for stored events published since a time."""

    subscription_id: int
    since_us: int
    now_us: int


@dataclass(frozen=True, slots=True)
class SubscriptionSeekParams:
    """Deliver again what was published since `time_us`; skip what was published before."""

    subscription_id: int
    time_us: int
    now_us: int


@dataclass(frozen=True, slots=True)
class SeekOutcome:
    """How many deliveries a seek made ready again, and how many it skipped."""

    replayed: int
    skipped: int


@dataclass(frozen=True, slots=True)
class MaintenanceParams:
    """Apply maximum ages (dead-letter) and retention (delete), `limit` rows at a time."""

    now_us: int
    event_retention_us: int
    limit: int


@dataclass(frozen=True, slots=True)
class MaintenanceOutcome:
    """What one maintenance pass did."""

    expired: int
    deliveries_deleted: int
    events_deleted: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered delivery with its event."""

    delivery_id: int
    event: StoredEvent
    info: DeliveryInfo


class StorageTx(Protocol):
    """The operations of one transaction."""

    def event_insert_many(self, params: EventInsertParams) -> list[PublishOutcome]:
        """Store events and their deliveries; duplicates store nothing."""
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

    def delivery_lease(self, params: DeliveryLeaseParams) -> dict[str, list[LeaseClaim]]:
        """Lease ready deliveries, at most the count each consumer asks for.

        Honours the subscription's max in flight; never leases one delivery twice
        while its lease is live, even with several brokers on one database.
        """
        ...

    def delivery_ack(self, params: DeliveryAckParams) -> SettleOutcome:
        """Acknowledge live leases; others are reported not applied."""
        ...

    def delivery_failing(self, params: DeliveryFailingParams) -> FailingLeases:
        """The live leases among these ack ids, locked until the transaction ends."""
        ...

    def delivery_fail(self, params: DeliveryFailParams) -> SettleOutcome:
        """Write retried or dead deliveries; says which subscriptions may deliver more."""
        ...

    def delivery_extend(self, params: DeliveryExtendParams) -> SettleOutcome:
        """Extend live leases."""
        ...

    def delivery_expired_list(self, params: DeliveryExpiredListParams) -> list[AckId]:
        """Leases whose deadline has passed."""
        ...

    def delivery_live_leases(self, ack_ids: Sequence[str]) -> set[str]:
        """Which of these ack ids are still live leases (in flight, same attempt)."""
        ...

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

    def delivery_promote(self, params: DeliveryPromoteParams) -> PromoteOutcome:
        """Make due scheduled deliveries ready."""
        ...

    def delivery_list_for_event(self, event_id: str) -> list[DeliveryInfo]:
        """An event's delivery in each subscription."""
        ...

    def dead_letter_list(self, params: DeadLetterListParams) -> list[DeadLetter]:
        """A page of dead letters, oldest first."""
        ...

    def subscription_create(self, subscription: Subscription) -> Subscription:
        """Create a subscription; raises SubscriptionExistsError."""
        ...

    def subscription_get(self, name: str) -> Subscription | None:
        """One subscription by name."""
        ...

    def subscription_get_by_id(self, subscription_id: int) -> Subscription | None:
        """One subscription by id."""
        ...

    def subscription_list(self, after_name: str, limit: int) -> list[Subscription]:
        """Subscriptions by name, after a name."""
        ...

    def subscription_update(self, params: SubscriptionUpdateParams) -> Subscription | None:
        """Replace a subscription's settings; None when it does not exist."""
        ...

    def subscription_delete(self, name: str) -> bool:
        """Delete a subscription and its deliveries; False when it did not exist."""
        ...

    def subscription_counts(self, name: str | None) -> list[SubscriptionCounts]:
        """Delivery counts per subscription (one, or all)."""
        ...

    def dedup_prune(self, now_us: int, limit: int) -> int:
        """Forget dedup ids whose window has passed."""
        ...

    def delivery_redrive(self, params: DeliveryRedriveParams) -> int:
        """Make dead letters ready again, attempts counted afresh; returns how many."""
        ...

    def subscription_backfill(self, params: SubscriptionBackfillParams) -> int:
        """Add deliveries for matching stored events that have none; returns how many."""
        ...

    def subscription_seek(self, params: SubscriptionSeekParams) -> SeekOutcome:
        """Replay from a time: later events delivered again, earlier ones skipped."""
        ...

    def maintenance(self, params: MaintenanceParams) -> MaintenanceOutcome:
        """Apply maximum ages and retention."""
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
        """The dialect: "sqlite" or "postgresql"."""
        ...

    @property
    def max_concurrent_writers(self) -> int:
        """How many transactions may write at once (1 on SQLite)."""
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
