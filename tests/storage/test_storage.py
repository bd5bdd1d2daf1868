"""One storage suite, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from ulid import ULID

from broker.domain import (
    AckId,
    ApiKey,
    AttemptOutcome,
    DeadReason,
    DeliveryState,
    EventDraft,
    LeaseRequest,
    Scope,
    SettleOutcome,
    StartPosition,
    Subscription,
)
from broker.engine.operations import fail_leases, lease_deliveries
from broker.storage import Storage
from broker.storage.interface import (
    DeadLetterListParams,
    DeliveryAckParams,
    DeliveryExpiredListParams,
    DeliveryExtendParams,
    DeliveryLeaseParams,
    DeliveryPromoteParams,
    DeliveryRedriveParams,
    EventInsertParams,
    MaintenanceParams,
    SubscriptionExistsError,
    SubscriptionSeekParams,
    SubscriptionUpdateParams,
)
from broker.storage.migrate import alembic_config
from broker.storage.schema import metadata
from broker.storage.sql import SqlStorage
from broker.transitions import Failure

S = 1_000_000
T0 = 1_800_000_000 * S
WINDOW = 24 * 3600 * S


def sub(name: str = "billing", *filters: str, **overrides: int) -> Subscription:
    values: dict[str, int] = {
        "ack_deadline_us": 30 * S,
        "max_attempts": 3,
        "min_backoff_us": 1 * S,
        "max_backoff_us": 60 * S,
        "max_in_flight": 0,
        "retention_us": 7 * 24 * 3600 * S,
    } | overrides
    return Subscription(
        name=name,
        filters=filters or ("user.*",),
        ordered=False,
        start_position=StartPosition.NEW,
        created_at_us=T0,
        ack_deadline_us=values["ack_deadline_us"],
        max_attempts=values["max_attempts"],
        min_backoff_us=values["min_backoff_us"],
        max_backoff_us=values["max_backoff_us"],
        max_in_flight=values["max_in_flight"],
        retention_us=values["retention_us"],
        max_age_us=values.get("max_age_us", 0),
    )


def draft(
    name: str = "user.joined",
    *,
    dedup_id: str | None = None,
    priority: int = 0,
    deliver_at: int = T0,
    payload: bytes = b'{"n":1}',
) -> EventDraft:
    return EventDraft(
        event_id=str(ULID()),
        name=name,
        payload=payload,
        content_type="application/json",
        headers={"h": "v"},
        dedup_id=dedup_id,
        priority=priority,
        ordering_key=None,
        deliver_at_us=deliver_at,
        delay_us=max(deliver_at - T0, 0),
    )


def publish(storage: Storage, *drafts: EventDraft, now: int = T0) -> list[str]:
    with storage.write() as tx:
        outcomes = tx.event_insert_many(EventInsertParams(drafts, now, WINDOW))
    return [o.event_id for o in outcomes]


def create(storage: Storage, subscription: Subscription) -> Subscription:
    with storage.write() as tx:
        return tx.subscription_create(subscription)


def lease(
    storage: Storage, sub_id: int, count: int, *, consumer: str = "c1", now: int = T0
) -> list[str]:
    with storage.write() as tx:
        leased = tx.delivery_lease(
            DeliveryLeaseParams(sub_id, [LeaseRequest(consumer, count)], now)
        )
    return [d.ack_id for d in leased.get(consumer, [])]


def lowest(low: int, high: int) -> int:
    """A backoff draw without jitter: the low end."""
    return low


def fail(
    storage: Storage,
    ack_ids: Sequence[str],
    now: int = T0,
    *,
    outcome: AttemptOutcome = AttemptOutcome.NACKED,
    **kwargs: Any,
) -> SettleOutcome:
    """Fail leases as the engine does: storage finds them, the decisions say what they become.

    Without a `delay_us`, a retry is ready at once (the backoff is the decisions' to test).
    """
    kwargs.setdefault("delay_us", 0)
    with storage.write() as tx:
        return fail_leases(tx, now, ack_ids, Failure(outcome, **kwargs), lowest)


def states(storage: Storage, event_id: str) -> dict[str, DeliveryState]:
    with storage.read() as tx:
        return {d.subscription: d.state for d in tx.delivery_list_for_event(event_id)}


def test_migrations_produce_the_declared_schema(storage: Storage) -> None:
    assert isinstance(storage, SqlStorage)
    with storage.write_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_migrate_twice_is_a_no_op(storage: Storage) -> None:
    storage.migrate()
    assert isinstance(storage, SqlStorage)
    with storage.read_engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert version == "0003"


def test_publish_fans_out_to_every_matching_subscription(storage: Storage) -> None:
    a = create(storage, sub("a", "user.*"))
    b = create(storage, sub("b", "user.>"))
    create(storage, sub("c", "order.*"))
    (event_id,) = publish(storage, draft("user.joined"))
    assert states(storage, event_id) == {"a": DeliveryState.READY, "b": DeliveryState.READY}
    assert lease(storage, a.id, 10) and lease(storage, b.id, 10)


def test_a_large_publish_stores_every_event_and_delivery_once(storage: Storage) -> None:
    """Counts that are not multiples of any statement's row count (SQLite inserts in chunks)."""
    a = create(storage, sub("a", "user.*"))
    b = create(storage, sub("b", "user.>"))
    drafts = [draft(payload=b'{"n":%d}' % i, priority=i % 7) for i in range(203)]
    event_ids = publish(storage, *drafts)
    assert event_ids == [d.event_id for d in drafts]
    by_priority = sorted(drafts, key=lambda d: -d.priority)  # stable: publish order within
    for subscription in (a, b):
        with storage.write() as tx:
            leased = tx.delivery_lease(
                DeliveryLeaseParams(subscription.id, [LeaseRequest("c1", 500)], T0)
            )
        assert [c.event_id for c in leased["c1"]] == [d.event_id for d in by_priority]
    with storage.read() as tx:
        assert tx.event_count() == 203
        for d in (drafts[0], drafts[64], drafts[-1]):
            event = tx.event_get(d.event_id)
            assert event is not None
            assert (event.payload, event.priority) == (d.payload, d.priority)


def test_unmatched_event_is_stored_and_delivered_to_nobody(storage: Storage) -> None:
    create(storage, sub("a", "user.*"))
    (event_id,) = publish(storage, draft("nobody.cares"))
    with storage.read() as tx:
        event = tx.event_get(event_id)
        deliveries = tx.delivery_list_for_event(event_id)
    assert event is not None and event.name == "nobody.cares"
    assert event.headers == {"h": "v"}
    assert deliveries == []


def test_duplicate_id_inside_window_stores_nothing(storage: Storage) -> None:
    s = create(storage, sub())
    first = draft(dedup_id="order-1")
    second = draft(dedup_id="order-1")
    with storage.write() as tx:
        outcomes = tx.event_insert_many(EventInsertParams([first, second], T0, WINDOW))
    assert [o.duplicate for o in outcomes] == [False, True]
    assert outcomes[1].event_id == first.event_id
    with storage.write() as tx:
        again = tx.event_insert_many(EventInsertParams([draft(dedup_id="order-1")], T0 + S, WINDOW))
    assert again[0].duplicate and again[0].event_id == first.event_id
    with storage.read() as tx:
        assert tx.event_count() == 1
    assert len(lease(storage, s.id, 10)) == 1


def test_duplicate_id_after_window_is_new(storage: Storage) -> None:
    create(storage, sub())
    publish(storage, draft(dedup_id="x"))
    later = T0 + WINDOW + S
    with storage.write() as tx:
        (outcome,) = tx.event_insert_many(EventInsertParams([draft(dedup_id="x")], later, WINDOW))
    assert not outcome.duplicate


def test_lease_takes_higher_priority_first_then_publish_order(storage: Storage) -> None:
    s = create(storage, sub())
    ids = publish(
        storage,
        draft(priority=0),
        draft(priority=10),
        draft(priority=0),
        draft(priority=-5),
        draft(priority=10),
    )
    with storage.write() as tx:
        leased = tx.delivery_lease(DeliveryLeaseParams(s.id, [LeaseRequest("c", 10)], T0))
    order = [d.event_id for d in leased["c"]]
    assert order == [ids[1], ids[4], ids[0], ids[2], ids[3]]
    assert all(d.attempt == 1 and d.ack_deadline_us == T0 + 30 * S for d in leased["c"])


def test_lease_respects_count_and_max_in_flight(storage: Storage) -> None:
    s = create(storage, sub(max_in_flight=3))
    publish(storage, *[draft() for _ in range(10)])
    assert len(lease(storage, s.id, 2)) == 2
    assert len(lease(storage, s.id, 5)) == 1  # 3 in flight at most
    assert lease(storage, s.id, 5) == []


def test_scheduled_delivery_waits_until_promoted(storage: Storage) -> None:
    s = create(storage, sub())
    (event_id,) = publish(storage, draft(deliver_at=T0 + 60 * S))
    assert states(storage, event_id) == {"billing": DeliveryState.SCHEDULED}
    assert lease(storage, s.id, 10) == []
    with storage.write() as tx:
        early = tx.delivery_promote(DeliveryPromoteParams(T0 + 59 * S, 100))
    assert early.promoted == 0 and early.next_scheduled_us == T0 + 60 * S
    with storage.write() as tx:
        due = tx.delivery_promote(DeliveryPromoteParams(T0 + 60 * S, 100))
    assert due.promoted == 1 and due.ready_subscription_ids == {s.id}
    assert due.next_scheduled_us is None
    assert len(lease(storage, s.id, 10, now=T0 + 60 * S)) == 1


def test_ack_applies_once_and_reports_unknown_ids(storage: Storage) -> None:
    s = create(storage, sub())
    (event_id,) = publish(storage, draft())
    (ack_id,) = lease(storage, s.id, 1)
    huge = ["1-99999999999999999999", "99999999999999999999-1"]  # beyond any BIGINT
    with storage.write() as tx:
        outcome = tx.delivery_ack(DeliveryAckParams([ack_id, "999-1", "garbage", *huge], T0))
        extended = tx.delivery_extend(DeliveryExtendParams(huge, S, T0))
    assert fail(storage, huge).not_applied == tuple(huge)
    assert extended.not_applied == tuple(huge)
    assert set(outcome.not_applied) == {"999-1", "garbage", *huge}
    assert outcome.applied == (ack_id,)
    with storage.write() as tx:
        again = tx.delivery_ack(DeliveryAckParams([ack_id], T0))
    assert again.not_applied == (ack_id,)
    assert states(storage, event_id) == {"billing": DeliveryState.ACKED}


def test_late_ack_of_expired_lease_has_no_effect(storage: Storage) -> None:
    s = create(storage, sub(ack_deadline_us=10 * S))
    (event_id,) = publish(storage, draft())
    (first,) = lease(storage, s.id, 1)
    with storage.read() as tx:
        assert tx.delivery_expired_list(DeliveryExpiredListParams(T0 + 9 * S, 10)) == []
    with storage.read() as tx:
        expired = tx.delivery_expired_list(DeliveryExpiredListParams(T0 + 10 * S, 10))
    assert [str(a) for a in expired] == [first]
    fail(storage, [first], T0 + 10 * S, outcome=AttemptOutcome.EXPIRED)
    (second,) = lease(storage, s.id, 1, consumer="c2", now=T0 + 11 * S)
    assert AckId.parse(second) == AckId(AckId.parse(first).delivery_id, 2)  # type: ignore[union-attr]
    with storage.write() as tx:
        late = tx.delivery_ack(DeliveryAckParams([first], T0 + 12 * S))
    assert late.not_applied == (first,)
    assert states(storage, event_id) == {"billing": DeliveryState.IN_FLIGHT}


def test_ack_nack_or_extend_after_the_deadline_has_no_effect_before_the_reaper_runs(
    storage: Storage,
) -> None:
    s = create(storage, sub(ack_deadline_us=10 * S))
    event_ids = publish(storage, draft(), draft(), draft())
    acked, nacked, extended = lease(storage, s.id, 3)
    late = T0 + 10 * S  # the deadline itself: the lease is over
    with storage.write() as tx:
        ack = tx.delivery_ack(DeliveryAckParams([acked], late))
        extend = tx.delivery_extend(DeliveryExtendParams([extended], 60 * S, late))
    nack = fail(storage, [nacked], late, error="too late")
    assert ack.not_applied == (acked,) and ack.applied == ()
    assert extend.not_applied == (extended,)
    assert nack.not_applied == (nacked,)
    assert {e: states(storage, e)["billing"] for e in event_ids} == dict.fromkeys(
        event_ids, DeliveryState.IN_FLIGHT
    )
    with storage.read() as tx:  # the reaper still finds all three, with their attempt
        expired = tx.delivery_expired_list(DeliveryExpiredListParams(late, 10))
    assert sorted(str(a) for a in expired) == sorted([acked, nacked, extended])
    with storage.write() as tx:  # one microsecond earlier, the same ack was in time
        assert tx.delivery_ack(DeliveryAckParams([acked], late - 1)).applied == (acked,)


def test_nack_backs_off_then_dead_letters_after_max_attempts(storage: Storage) -> None:
    s = create(storage, sub(max_attempts=2))
    (event_id,) = publish(storage, draft())
    (first,) = lease(storage, s.id, 1)
    outcome = fail(storage, [first], error="boom", delay_us=5 * S)
    assert states(storage, event_id) == {"billing": DeliveryState.SCHEDULED}
    assert outcome.next_scheduled_us == T0 + 5 * S
    with storage.write() as tx:
        tx.delivery_promote(DeliveryPromoteParams(T0 + 5 * S, 100))
    (second,) = lease(storage, s.id, 1, now=T0 + 5 * S)
    fail(storage, [second], T0 + 6 * S, error="boom again")
    with storage.read() as tx:
        (info,) = tx.delivery_list_for_event(event_id)
    assert info.state is DeliveryState.DEAD
    assert info.dead_reason is DeadReason.ATTEMPTS_EXHAUSTED
    assert info.attempts == 2 and info.last_error == "boom again"
    assert [(h.attempt, h.outcome, h.error) for h in info.history] == [
        (1, AttemptOutcome.NACKED, "boom"),
        (2, AttemptOutcome.NACKED, "boom again"),
    ]
    with storage.read() as tx:
        letters = tx.dead_letter_list(DeadLetterListParams(s.id, 0, 10))
    assert [d.event.event_id for d in letters] == [event_id]


def test_terminal_nack_and_explicit_delay(storage: Storage) -> None:
    s = create(storage, sub(max_attempts=10))
    dead_id, delayed_id = publish(storage, draft(), draft())
    first, second = lease(storage, s.id, 2)
    fail(storage, [first], terminal=True, error="bad data")
    fail(storage, [second], delay_us=30 * S)
    assert states(storage, dead_id) == {"billing": DeliveryState.DEAD}
    with storage.read() as tx:
        (delayed,) = tx.delivery_list_for_event(delayed_id)
        (dead,) = tx.delivery_list_for_event(dead_id)
    assert dead.dead_reason is DeadReason.NACKED_TERMINAL
    assert delayed.state is DeliveryState.SCHEDULED and delayed.next_time_us == T0 + 30 * S


def test_release_makes_ready_at_once_with_attempt_counted(storage: Storage) -> None:
    s = create(storage, sub())
    (event_id,) = publish(storage, draft())
    (first,) = lease(storage, s.id, 1)
    outcome = fail(storage, [first], outcome=AttemptOutcome.RELEASED, immediate=True)
    assert outcome.ready_subscription_ids == {s.id}
    assert states(storage, event_id) == {"billing": DeliveryState.READY}
    with storage.write() as tx:
        leased = tx.delivery_lease(DeliveryLeaseParams(s.id, [LeaseRequest("c2", 1)], T0))
    assert leased["c2"][0].attempt == 2


def test_extend_moves_the_deadline(storage: Storage) -> None:
    s = create(storage, sub(ack_deadline_us=10 * S))
    publish(storage, draft())
    (ack_id,) = lease(storage, s.id, 1)
    with storage.write() as tx:
        outcome = tx.delivery_extend(DeliveryExtendParams([ack_id, "1-99"], 60 * S, T0 + 5 * S))
    assert outcome.applied == (ack_id,) and outcome.not_applied == ("1-99",)
    with storage.read() as tx:
        assert tx.delivery_expired_list(DeliveryExpiredListParams(T0 + 30 * S, 10)) == []
        assert len(tx.delivery_expired_list(DeliveryExpiredListParams(T0 + 65 * S, 10))) == 1


def test_subscription_crud(storage: Storage) -> None:
    created = create(storage, sub("a"))
    with pytest.raises(SubscriptionExistsError):
        create(storage, sub("a"))
    create(storage, sub("b"))
    with storage.write() as tx:
        updated = tx.subscription_update(
            SubscriptionUpdateParams(sub("a", "order.>", max_attempts=7))
        )
    assert updated is not None and updated.id == created.id
    assert updated.filters == ("order.>",) and updated.max_attempts == 7
    with storage.read() as tx:
        assert [s.name for s in tx.subscription_list("", 10)] == ["a", "b"]
        assert [s.name for s in tx.subscription_list("a", 10)] == ["b"]
    publish(storage, draft("order.created"))
    with storage.write() as tx:
        assert tx.subscription_delete("a")
        assert not tx.subscription_delete("a")
    with storage.read() as tx:
        assert tx.subscription_get("a") is None
        assert tx.subscription_counts(None)[0].subscription == "b"


def test_counts_per_state(storage: Storage) -> None:
    s = create(storage, sub())
    publish(storage, draft(), draft(), draft(), draft(deliver_at=T0 + 60 * S))
    first, second = lease(storage, s.id, 2)
    with storage.write() as tx:
        tx.delivery_ack(DeliveryAckParams([first], T0))
    fail(storage, [second], terminal=True)
    with storage.read() as tx:
        (counts,) = tx.subscription_counts("billing")
    assert (counts.scheduled, counts.ready, counts.in_flight, counts.acked, counts.dead) == (
        1,
        1,
        0,
        1,
        1,
    )
    assert counts.oldest_waiting_us == T0


def test_dedup_prune_forgets_expired_ids(storage: Storage) -> None:
    publish(storage, draft(dedup_id="a"), draft(dedup_id="b"))
    with storage.write() as tx:
        assert tx.dedup_prune(T0 + WINDOW - 1, 10) == 0
    with storage.write() as tx:
        assert tx.dedup_prune(T0 + WINDOW, 10) == 2


def test_a_failed_transaction_leaves_nothing_behind(storage: Storage) -> None:
    create(storage, sub())

    def insert_then_fail() -> None:
        with storage.write() as tx:
            tx.event_insert_many(EventInsertParams([draft()], T0, WINDOW))
            raise RuntimeError("rollback")

    with pytest.raises(RuntimeError):
        insert_then_fail()
    with storage.read() as tx:
        assert tx.event_count() == 0
        assert tx.subscription_counts(None)[0].ready == 0


def test_competing_leasers_never_share_a_delivery(storage: Storage) -> None:
    s = create(storage, sub())
    total = 400
    publish(storage, *[draft() for _ in range(total)])
    leased: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def leaser(index: int) -> None:
        start.wait()
        while True:
            got = lease(storage, s.id, 7, consumer=f"c{index}")
            if not got:
                return
            leased[index].extend(got)

    threads = [threading.Thread(target=leaser, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [ack for part in leased for ack in part]
    duplicates = [ack for ack, n in Counter(everything).items() if n > 1]
    assert duplicates == []
    assert len(everything) == total


def test_lease_takes_known_events_from_memory_and_reads_the_rest(storage: Storage) -> None:
    s = create(storage, sub())
    first, second = draft(), draft()
    publish(storage, first, second)
    remembered = dataclasses.replace(
        storage_event(storage, first.event_id), payload=b'{"from":"memory"}'
    )
    asked: list[set[str]] = []

    def known(ids: Any) -> dict[str, Any]:
        asked.append(set(ids))
        return {first.event_id: remembered}

    with storage.write() as tx:
        leased = lease_deliveries(tx, T0, s.name, s.id, [LeaseRequest("c1", 10)], known)
    payloads = {d.event.event_id: d.event.payload for d in leased["c1"]}
    assert asked == [{first.event_id, second.event_id}]
    assert payloads == {first.event_id: b'{"from":"memory"}', second.event_id: b'{"n":1}'}
    assert {d.subscription for d in leased["c1"]} == {s.name}


def storage_event(storage: Storage, event_id: str) -> Any:
    with storage.read() as tx:
        return tx.event_get(event_id)


def test_api_keys_are_stored_listed_and_revoked(storage: Storage) -> None:
    key = ApiKey(
        key_id="k1",
        name="billing service",
        secret_sha256="ab" * 32,
        scopes=frozenset({Scope.PUBLISH, Scope.SUBSCRIBE}),
        patterns=("order.*", "billing"),
        publish_rate=500,
        created_at_us=T0,
    )
    other = dataclasses.replace(key, key_id="k2", scopes=frozenset({Scope.ADMIN}), patterns=())
    with storage.write() as tx:
        assert tx.api_key_active_count() == 0
        tx.api_key_create(key)
        tx.api_key_create(other)
    with storage.read() as tx:
        assert tx.api_key_get("k1") == key
        assert tx.api_key_get("nope") is None
        assert [k.key_id for k in tx.api_key_list()] == ["k1", "k2"]
        assert tx.api_key_active_count() == 2
    with storage.write() as tx:
        assert tx.api_key_revoke("k1", T0 + S)
        assert not tx.api_key_revoke("k1", T0 + 2 * S)
        assert not tx.api_key_revoke("nope", T0)
    with storage.read() as tx:
        revoked = tx.api_key_get("k1")
        assert revoked is not None and revoked.revoked_at_us == T0 + S
        assert tx.api_key_active_count() == 1


def run_together(count: int, work: Any) -> list[Any]:
    """Run `work(index)` in `count` threads released at once; return their results."""
    start = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        start.wait()
        results[index] = work(index)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_competing_leasers_never_pass_max_in_flight(storage: Storage) -> None:
    s = create(storage, sub(max_in_flight=5))
    publish(storage, *[draft() for _ in range(200)])
    for _ in range(10):
        leased = run_together(4, lambda i: lease(storage, s.id, 5, consumer=f"c{i}"))
        together = [ack_id for part in leased for ack_id in part]
        assert len(together) == 5, leased
        ack(storage, together)


def test_concurrent_publishes_of_one_dedup_id_store_one_event(storage: Storage) -> None:
    create(storage, sub())
    for round_ in range(5):
        ids = run_together(4, lambda i, r=round_: publish(storage, draft(dedup_id=f"order-{r}")))
        assert len({event_id for (event_id,) in ids}) == 1, ids
    with storage.read() as tx:
        assert tx.event_count() == 5
        (counts,) = tx.subscription_counts("billing")
    assert counts.ready == 5


def ordered_draft(key: str, name: str = "user.x", **kwargs: Any) -> EventDraft:
    return dataclasses.replace(draft(name, **kwargs), ordering_key=key)


def ack(storage: Storage, ack_ids: Sequence[str], now: int = T0) -> None:
    with storage.write() as tx:
        tx.delivery_ack(DeliveryAckParams(ack_ids, now))


def test_redrive_makes_dead_letters_ready_as_new_attempts(storage: Storage) -> None:
    s = create(storage, sub(max_attempts=1))
    ids = publish(storage, draft("user.a"), draft("user.b"), draft("user.b"))
    fail(storage, lease(storage, s.id, 3), error="boom")
    with storage.write() as tx:
        by_name = tx.delivery_redrive(DeliveryRedriveParams(s.id, T0, 100, name="user.a"))
    assert by_name == 1
    assert states(storage, ids[0]) == {"billing": DeliveryState.READY}
    with storage.write() as tx:
        one = tx.delivery_redrive(DeliveryRedriveParams(s.id, T0, 100, event_ids=[ids[1]]))
        rest = tx.delivery_redrive(DeliveryRedriveParams(s.id, T0, 100))
    assert (one, rest) == (1, 1)
    with storage.write() as tx:
        leased = tx.delivery_lease(DeliveryLeaseParams(s.id, [LeaseRequest("c", 10)], T0))
    assert sorted(d.event_id for d in leased["c"]) == sorted(ids)
    assert {d.attempt for d in leased["c"]} == {1}
    with storage.read() as tx:
        (info,) = tx.delivery_list_for_event(ids[0])
    assert [h.error for h in info.history] == ["boom"]  # the history is kept


def test_start_from_the_beginning_or_a_time(storage: Storage) -> None:
    old = publish(storage, draft("user.old"), now=T0 - 100 * S)
    recent = publish(storage, draft("user.recent"), draft("order.x"), now=T0 - 10 * S)
    beginning = create(
        storage, dataclasses.replace(sub("b"), start_position=StartPosition.BEGINNING)
    )
    timed = create(
        storage,
        dataclasses.replace(sub("t"), start_position=StartPosition.TIME, start_time_us=T0 - 50 * S),
    )
    new = create(storage, sub("n"))
    assert sorted(lease_events(storage, beginning.id)) == sorted([old[0], recent[0]])
    assert lease_events(storage, timed.id) == [recent[0]]
    assert lease_events(storage, new.id) == []


def lease_events(storage: Storage, sub_id: int) -> list[str]:
    with storage.write() as tx:
        leased = tx.delivery_lease(DeliveryLeaseParams(sub_id, [LeaseRequest("c", 100)], T0))
    return [d.event_id for d in leased.get("c", [])]


def test_seek_back_replays_and_seek_forward_skips(storage: Storage) -> None:
    s = create(storage, sub())
    first = publish(storage, draft(deliver_at=T0 - 20 * S), now=T0 - 20 * S)
    second = publish(storage, draft(deliver_at=T0 - 10 * S), now=T0 - 10 * S)
    ack(storage, lease(storage, s.id, 10, now=T0 - 5 * S), T0 - 5 * S)
    third = publish(storage, draft(deliver_at=T0 - 2 * S), now=T0 - 2 * S)
    with storage.write() as tx:
        back = tx.subscription_seek(SubscriptionSeekParams(s.id, T0 - 15 * S, T0))
    assert (back.replayed, back.skipped) == (1, 0)
    assert sorted(lease_events(storage, s.id)) == sorted(second + third)
    fourth = publish(storage, draft(), now=T0)
    with storage.write() as tx:
        forward = tx.subscription_seek(SubscriptionSeekParams(s.id, T0 + S, T0 + S))
    assert forward.skipped == 1 and forward.replayed == 0
    assert states(storage, fourth[0]) == {"billing": DeliveryState.ACKED}
    assert states(storage, first[0]) == {"billing": DeliveryState.ACKED}


def test_maximum_age_dead_letters_and_retention_deletes(storage: Storage) -> None:
    create(storage, sub("aged", max_age_us=60 * S))
    kept = create(storage, sub("kept", retention_us=10 * S))
    old = publish(storage, draft(deliver_at=T0 - 120 * S), now=T0 - 120 * S)[0]
    young = publish(storage, draft())[0]
    ack(storage, lease(storage, kept.id, 10, now=T0), T0)
    with storage.write() as tx:
        outcome = tx.maintenance(MaintenanceParams(T0, 3600 * S, 1000))
    assert outcome.expired == 1 and outcome.deliveries_deleted == 0
    with storage.read() as tx:
        dead = {d.subscription: d for d in tx.delivery_list_for_event(old)}
    assert dead["aged"].dead_reason is DeadReason.EXPIRED
    assert states(storage, young)["aged"] is DeliveryState.READY
    later = T0 + 11 * S
    with storage.write() as tx:
        outcome = tx.maintenance(MaintenanceParams(later, 3600 * S, 1000))
    assert outcome.deliveries_deleted == 2  # both acked in "kept", past its 10 s
    with storage.write() as tx:
        outcome = tx.maintenance(MaintenanceParams(T0 + 7200 * S, 3600 * S, 1000))
    assert outcome.events_deleted == 0  # "aged" still holds deliveries of both
    with storage.write() as tx:
        tx.subscription_delete("aged")
    with storage.write() as tx:
        outcome = tx.maintenance(MaintenanceParams(T0 + 7200 * S, 3600 * S, 1000))
    assert outcome.events_deleted == 2
    with storage.read() as tx:
        assert tx.event_count() == 0


def test_ordered_keys_deliver_one_at_a_time_in_publish_order(storage: Storage) -> None:
    s = create(storage, dataclasses.replace(sub(max_attempts=1), ordered=True))
    a1, a2, b1, a3 = publish(
        storage,
        ordered_draft("a"),
        ordered_draft("a", priority=50),
        ordered_draft("b"),
        ordered_draft("a"),
    )
    assert states(storage, a2) == {"billing": DeliveryState.BLOCKED}
    first = lease_events(storage, s.id)
    assert sorted(first) == sorted([a1, b1])  # priority does not jump the key's queue
    # acking a1 lets a2 go; a3 still waits
    with storage.read() as tx:
        infos = {e: tx.delivery_list_for_event(e)[0] for e in (a1, a2, a3)}
    assert infos[a3].state is DeliveryState.BLOCKED
    ack_ids = ack_ids_for(storage, s.id)
    ack(storage, [ack_ids[a1]])
    assert lease_events(storage, s.id) == [a2]
    fail(storage, [ack_ids_for(storage, s.id)[a2]], terminal=True)  # dead also frees the key
    assert lease_events(storage, s.id) == [a3]


def ack_ids_for(storage: Storage, sub_id: int) -> dict[str, str]:
    """Ack ids of the in-flight deliveries, by event id."""
    with storage.read() as tx:
        expired = tx.delivery_expired_list(DeliveryExpiredListParams(T0 + 10**9 * S, 1000))
    result = {}
    for ack_id in expired:
        for event_id in _event_of_delivery(storage, ack_id.delivery_id):
            result[event_id] = str(ack_id)
    return result


def _event_of_delivery(storage: Storage, delivery_id: int) -> list[str]:
    assert isinstance(storage, SqlStorage)
    with storage.read_engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT event_id FROM deliveries WHERE id = :id"), {"id": delivery_id}
            ).scalars()
        )


def test_ordered_key_waits_for_a_retry_of_its_head(storage: Storage) -> None:
    s = create(storage, dataclasses.replace(sub(max_attempts=5), ordered=True))
    k1, k2 = publish(storage, ordered_draft("k"), ordered_draft("k"))
    (first,) = lease(storage, s.id, 10)
    fail(storage, [first], delay_us=30 * S)
    assert lease(storage, s.id, 10) == []  # k2 stays behind k1's retry
    assert states(storage, k2) == {"billing": DeliveryState.BLOCKED}
    with storage.write() as tx:
        tx.delivery_promote(DeliveryPromoteParams(T0 + 30 * S, 100))
    assert lease_events(storage, s.id) == [k1]
    assert states(storage, k1) == {"billing": DeliveryState.IN_FLIGHT}


def test_concurrent_publishers_never_open_a_key_twice(storage: Storage) -> None:
    s = create(storage, dataclasses.replace(sub(), ordered=True))
    start = threading.Barrier(4)

    def publisher() -> None:
        start.wait()
        for _ in range(10):
            publish(storage, ordered_draft("shared"))

    threads = [threading.Thread(target=publisher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with storage.read() as tx:
        (counts,) = tx.subscription_counts("billing")
    assert counts.ready == 1
    assert len(lease(storage, s.id, 100)) == 1


def test_a_newer_broker_upgrades_an_older_database_in_place(storage: Storage) -> None:
    assert isinstance(storage, SqlStorage)
    with storage.write_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")
    with storage.write_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO subscriptions (name, filters, ack_deadline_us, max_attempts,"
                " min_backoff_us, max_backoff_us, max_in_flight, ordered, retention_us,"
                " start_position, start_time, created_at)"
                " VALUES ('old', '[\"user.*\"]', 30000000, 20, 1000000, 600000000, 0,"
                " false, 604800000000, 1, 0, 0)"
            )
        )
    storage.migrate()
    with storage.read() as tx:
        old = tx.subscription_get("old")
    assert old is not None
    assert old.filters == ("user.*",) and old.max_age_us == 0 and old.retry_delays_us == ()
    publish(storage, draft("user.joined"))
    assert len(lease(storage, old.id, 10)) == 1
