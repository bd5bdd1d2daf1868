"""One storage suite, run in memory, on SQLite and on PostgreSQL alike.

Each test drives storage through the operations the engine runs (storage's
facts, the delivery decisions, storage's writes), in transactions of its own.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

import pytest
from ulid import ULID

from broker.delivery.failure import Failure
from broker.delivery.records import NewDelivery
from broker.domain import (
    AckId,
    ApiKey,
    AttemptOutcome,
    DeadReason,
    DeliveryInfo,
    DeliveryState,
    EventDraft,
    LeasedDelivery,
    LeaseRequest,
    Scope,
    SettleOutcome,
    StartPosition,
    StoredEvent,
    Subscription,
    SubscriptionCounts,
)
from broker.engine.operations import inspect, replay, settle
from broker.engine.operations import lease as leasing
from broker.engine.operations import publish as publishing
from broker.engine.operations.replay import RedriveSelection, SeekOutcome
from broker.engine.operations.upkeep import UpkeepOutcome, upkeep
from broker.storage import Storage
from broker.storage.interface import DeadLetterListParams, SubscriptionExistsError

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
    ordering_key: str | None = None,
) -> EventDraft:
    return EventDraft(
        event_id=str(ULID()),
        name=name,
        payload=payload,
        content_type="application/json",
        headers={"h": "v"},
        dedup_id=dedup_id,
        priority=priority,
        ordering_key=ordering_key,
        deliver_at_us=deliver_at,
        delay_us=max(deliver_at - T0, 0),
    )


def ordered_draft(key: str, name: str = "user.x", **kwargs: Any) -> EventDraft:
    return draft(name, ordering_key=key, **kwargs)


def publish(storage: Storage, *drafts: EventDraft, now: int = T0) -> list[str]:
    with storage.write() as tx:
        outcomes = publishing.publish(tx, now, drafts, WINDOW)
    return [o.event_id for o in outcomes]


def create(storage: Storage, subscription: Subscription) -> Subscription:
    with storage.write() as tx:
        return tx.subscription_create(subscription)


def _nothing(event_ids: Collection[str]) -> dict[str, StoredEvent]:
    return {}


def leased(
    storage: Storage,
    sub_id: int,
    count: int,
    *,
    consumer: str = "c1",
    now: int = T0,
    requests: Sequence[LeaseRequest] | None = None,
) -> dict[str, list[LeasedDelivery]]:
    """Lease as a dispatcher does: again while another transaction holds the position."""
    asked = list(requests) if requests is not None else [LeaseRequest(consumer, count)]
    while True:
        with storage.write() as tx:
            result = leasing.lease(tx, now, sub_id, asked, _nothing)
        if not result.contended:
            return result.leased


def lease(
    storage: Storage, sub_id: int, count: int, *, consumer: str = "c1", now: int = T0
) -> list[str]:
    got = leased(storage, sub_id, count, consumer=consumer, now=now)
    return [d.ack_id for d in got.get(consumer, [])]


def lease_events(storage: Storage, sub_id: int, now: int = T0) -> list[str]:
    got = leased(storage, sub_id, 100, consumer="c", now=now)
    return [d.event.event_id for d in got.get("c", [])]


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
        return settle.fail(tx, now, ack_ids, Failure(outcome, **kwargs), lowest)


def ack(storage: Storage, ack_ids: Sequence[str], now: int = T0) -> SettleOutcome:
    with storage.write() as tx:
        return settle.ack(tx, now, ack_ids)


def extend(storage: Storage, ack_ids: Sequence[str], extension: int, now: int) -> SettleOutcome:
    with storage.write() as tx:
        return settle.extend(tx, now, ack_ids, extension)


def expired(storage: Storage, now: int) -> list[str]:
    with storage.read() as tx:
        return [str(a) for a in tx.delivery_expired_list(now, 100)]


def promote(storage: Storage, now: int) -> Any:
    with storage.write() as tx:
        return settle.promote(tx, now, 100)


def deliveries(storage: Storage, event_id: str, now: int = T0) -> dict[str, DeliveryInfo]:
    with storage.read() as tx:
        _, infos = inspect.event_deliveries(tx, now, event_id)
    return {d.subscription: d for d in infos}


def states(storage: Storage, event_id: str, now: int = T0) -> dict[str, DeliveryState]:
    return {name: d.state for name, d in deliveries(storage, event_id, now).items()}


def counts(storage: Storage, name: str, now: int = T0) -> SubscriptionCounts:
    with storage.read() as tx:
        (found,) = inspect.counts(tx, now, name)
    return found


def seek(storage: Storage, sub_id: int, time_us: int, now: int) -> SeekOutcome:
    with storage.write() as tx:
        return replay.seek(tx, now, sub_id, time_us)


def redrive(storage: Storage, sub_id: int, now: int = T0, **selection: Any) -> int:
    with storage.write() as tx:
        return replay.redrive(tx, now, sub_id, RedriveSelection(**selection), 100)


def maintain(storage: Storage, now: int, event_retention: int = 3600 * S) -> UpkeepOutcome:
    with storage.write() as tx:
        return upkeep(tx, now, event_retention, 1000)


def event_count(storage: Storage) -> int:
    with storage.read() as tx:
        return tx.event_count()


def test_publish_fans_out_to_every_matching_subscription(storage: Storage) -> None:
    a = create(storage, sub("a", "user.*"))
    b = create(storage, sub("b", "user.>"))
    create(storage, sub("c", "order.*"))
    (event_id,) = publish(storage, draft("user.joined"))
    assert states(storage, event_id) == {"a": DeliveryState.READY, "b": DeliveryState.READY}
    assert lease(storage, a.id, 10) and lease(storage, b.id, 10)


def test_a_plain_event_is_stored_once_and_read_from_the_log_by_each_subscription(
    storage: Storage,
) -> None:
    subs = [create(storage, sub(f"s{i}", "user.*")) for i in range(10)]
    event_ids = publish(storage, *[draft() for _ in range(5)])
    with storage.read() as tx:  # no row anywhere: the log serves them all
        assert all(not tx.delivery_counts(s.id).by_state for s in subs)
    assert {s.name: counts(storage, s.name).ready for s in subs} == {s.name: 5 for s in subs}
    for s in subs:
        assert lease_events(storage, s.id) == event_ids
        assert lease_events(storage, s.id) == []


def test_a_large_publish_stores_every_event_and_delivery_once(storage: Storage) -> None:
    """Counts that are not multiples of any statement's row count (SQLite inserts in chunks)."""
    a = create(storage, sub("a", "user.*"))
    b = create(storage, sub("b", "user.>"))
    drafts = [draft(payload=b'{"n":%d}' % i, priority=i % 7) for i in range(203)]
    event_ids = publish(storage, *drafts)
    assert event_ids == [d.event_id for d in drafts]
    by_priority = sorted(drafts, key=lambda d: -d.priority)  # stable: publish order within
    for subscription in (a, b):
        got = leased(storage, subscription.id, 500)
        assert [d.event.event_id for d in got["c1"]] == [d.event_id for d in by_priority]
    assert event_count(storage) == 203
    with storage.read() as tx:
        for d in (drafts[0], drafts[64], drafts[-1]):
            event = tx.event_get(d.event_id)
            assert event is not None
            assert (event.payload, event.priority) == (d.payload, d.priority)


def test_unmatched_event_is_stored_and_delivered_to_nobody(storage: Storage) -> None:
    create(storage, sub("a", "user.*"))
    (event_id,) = publish(storage, draft("nobody.cares"))
    with storage.read() as tx:
        event, infos = inspect.event_deliveries(tx, T0, event_id)
    assert event is not None and event.name == "nobody.cares"
    assert event.headers == {"h": "v"}
    assert infos == []


def test_duplicate_id_inside_window_stores_nothing(storage: Storage) -> None:
    s = create(storage, sub())
    first = draft(dedup_id="order-1")
    second = draft(dedup_id="order-1")
    with storage.write() as tx:
        outcomes = publishing.publish(tx, T0, [first, second], WINDOW)
    assert [o.duplicate for o in outcomes] == [False, True]
    assert outcomes[1].event_id == first.event_id
    with storage.write() as tx:
        again = publishing.publish(tx, T0 + S, [draft(dedup_id="order-1")], WINDOW)
    assert again[0].duplicate and again[0].event_id == first.event_id
    assert event_count(storage) == 1
    assert len(lease(storage, s.id, 10)) == 1


def test_duplicate_id_after_window_is_new(storage: Storage) -> None:
    create(storage, sub())
    publish(storage, draft(dedup_id="x"))
    with storage.write() as tx:
        (outcome,) = publishing.publish(tx, T0 + WINDOW + S, [draft(dedup_id="x")], WINDOW)
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
    got = leased(storage, s.id, 10, consumer="c")["c"]
    assert [d.event.event_id for d in got] == [ids[1], ids[4], ids[0], ids[2], ids[3]]
    assert all(d.attempt == 1 and d.ack_deadline_us == T0 + 30 * S for d in got)


def test_a_priority_overtakes_a_backlog_in_the_log(storage: Storage) -> None:
    s = create(storage, sub())
    backlog = publish(storage, *[draft() for _ in range(50)])
    (urgent,) = publish(storage, draft(priority=5))
    got = lease_events(storage, s.id)
    assert got[0] == urgent and got[1:] == backlog


def test_lease_splits_what_it_takes_evenly_between_consumers(storage: Storage) -> None:
    s = create(storage, sub())
    publish(storage, *[draft() for _ in range(5)])
    got = leased(storage, s.id, 0, requests=[LeaseRequest("a", 10), LeaseRequest("b", 10)])
    assert (len(got["a"]), len(got["b"])) == (3, 2)


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
    assert lease(storage, s.id, 10) == []  # the scan gives it a scheduled row
    assert states(storage, event_id) == {"billing": DeliveryState.SCHEDULED}
    early = promote(storage, T0 + 59 * S)
    assert early.promoted == 0 and early.next_scheduled_us == T0 + 60 * S
    due = promote(storage, T0 + 60 * S)
    assert due.promoted == 1 and due.ready_subscription_ids == {s.id}
    assert due.next_scheduled_us is None
    assert len(lease(storage, s.id, 10, now=T0 + 60 * S)) == 1


def test_a_delayed_event_reached_after_its_time_is_leased_at_once(storage: Storage) -> None:
    s = create(storage, sub())
    (event_id,) = publish(storage, draft(deliver_at=T0 + 60 * S))
    assert lease_events(storage, s.id, now=T0 + 61 * S) == [event_id]


def test_ack_applies_once_and_reports_unknown_ids(storage: Storage) -> None:
    s = create(storage, sub())
    (event_id,) = publish(storage, draft())
    (ack_id,) = lease(storage, s.id, 1)
    huge = ["1-99999999999999999999", "99999999999999999999-1", f"{s.id}-1-99999999999999999999"]
    outcome = ack(storage, [ack_id, "999-1", f"{s.id}-999-1", "garbage", *huge])
    assert fail(storage, huge).not_applied == tuple(huge)
    assert extend(storage, huge, S, T0).not_applied == tuple(huge)
    assert set(outcome.not_applied) == {"999-1", f"{s.id}-999-1", "garbage", *huge}
    assert outcome.applied == (ack_id,)
    assert ack(storage, [ack_id]).not_applied == (ack_id,)
    assert states(storage, event_id) == {"billing": DeliveryState.ACKED}
    assert deliveries(storage, event_id)["billing"].attempts == 1


def test_late_ack_of_expired_lease_has_no_effect(storage: Storage) -> None:
    s = create(storage, sub(ack_deadline_us=10 * S))
    (event_id,) = publish(storage, draft())
    (first,) = lease(storage, s.id, 1)
    assert expired(storage, T0 + 9 * S) == []
    assert expired(storage, T0 + 10 * S) == [first]
    fail(storage, [first], T0 + 10 * S, outcome=AttemptOutcome.EXPIRED)
    (second,) = lease(storage, s.id, 1, consumer="c2", now=T0 + 11 * S)
    first_id, second_id = AckId.parse(first), AckId.parse(second)
    assert isinstance(first_id, AckId) and isinstance(second_id, AckId)
    assert second_id == first_id._replace(attempt=2)
    assert ack(storage, [first], T0 + 12 * S).not_applied == (first,)
    assert states(storage, event_id) == {"billing": DeliveryState.IN_FLIGHT}


def test_ack_nack_or_extend_after_the_deadline_has_no_effect_before_the_reaper_runs(
    storage: Storage,
) -> None:
    s = create(storage, sub(ack_deadline_us=10 * S))
    event_ids = publish(storage, draft(), draft(), draft())
    acked, nacked, extended = lease(storage, s.id, 3)
    late = T0 + 10 * S  # the deadline itself: the lease is over
    late_ack = ack(storage, [acked], late)
    late_extend = extend(storage, [extended], 60 * S, late)
    nack = fail(storage, [nacked], late, error="too late")
    assert late_ack.not_applied == (acked,) and late_ack.applied == ()
    assert late_extend.not_applied == (extended,)
    assert nack.not_applied == (nacked,)
    assert {e: states(storage, e)["billing"] for e in event_ids} == dict.fromkeys(
        event_ids, DeliveryState.IN_FLIGHT
    )
    # the reaper still finds all three, with their attempt
    assert sorted(expired(storage, late)) == sorted([acked, nacked, extended])
    assert ack(storage, [acked], late - 1).applied == (acked,)  # a microsecond earlier: in time


def test_nack_backs_off_then_dead_letters_after_max_attempts(storage: Storage) -> None:
    s = create(storage, sub(max_attempts=2))
    (event_id,) = publish(storage, draft())
    (first,) = lease(storage, s.id, 1)
    outcome = fail(storage, [first], error="boom", delay_us=5 * S)
    assert states(storage, event_id) == {"billing": DeliveryState.SCHEDULED}
    assert outcome.next_scheduled_us == T0 + 5 * S
    promote(storage, T0 + 5 * S)
    (second,) = lease(storage, s.id, 1, now=T0 + 5 * S)
    fail(storage, [second], T0 + 6 * S, error="boom again")
    info = deliveries(storage, event_id)["billing"]
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


def test_a_retried_delivery_acked_keeps_its_attempts_and_history(storage: Storage) -> None:
    s = create(storage, sub(max_attempts=5))
    (event_id,) = publish(storage, draft())
    fail(storage, lease(storage, s.id, 1), error="flaky")
    (second,) = lease(storage, s.id, 1)
    assert ack(storage, [second]).applied == (second,)
    info = deliveries(storage, event_id)["billing"]
    assert (info.state, info.attempts) == (DeliveryState.ACKED, 2)
    assert [h.error for h in info.history] == ["flaky"]


def test_terminal_nack_and_explicit_delay(storage: Storage) -> None:
    s = create(storage, sub(max_attempts=10))
    dead_id, delayed_id = publish(storage, draft(), draft())
    first, second = lease(storage, s.id, 2)
    fail(storage, [first], terminal=True, error="bad data")
    fail(storage, [second], delay_us=30 * S)
    assert states(storage, dead_id) == {"billing": DeliveryState.DEAD}
    delayed = deliveries(storage, delayed_id)["billing"]
    assert deliveries(storage, dead_id)["billing"].dead_reason is DeadReason.NACKED_TERMINAL
    assert delayed.state is DeliveryState.SCHEDULED and delayed.next_time_us == T0 + 30 * S


def test_release_makes_ready_at_once_with_attempt_counted(storage: Storage) -> None:
    s = create(storage, sub())
    (event_id,) = publish(storage, draft())
    (first,) = lease(storage, s.id, 1)
    outcome = fail(storage, [first], outcome=AttemptOutcome.RELEASED, immediate=True)
    assert outcome.ready_subscription_ids == {s.id}
    assert states(storage, event_id) == {"billing": DeliveryState.READY}
    assert leased(storage, s.id, 1, consumer="c2")["c2"][0].attempt == 2


def test_extend_moves_the_deadline(storage: Storage) -> None:
    s = create(storage, sub(ack_deadline_us=10 * S))
    publish(storage, draft())
    (ack_id,) = lease(storage, s.id, 1)
    outcome = extend(storage, [ack_id, "1-99"], 60 * S, T0 + 5 * S)
    assert outcome.applied == (ack_id,) and outcome.not_applied == ("1-99",)
    assert expired(storage, T0 + 30 * S) == []
    assert len(expired(storage, T0 + 65 * S)) == 1


def test_subscription_crud(storage: Storage) -> None:
    created = create(storage, sub("a"))
    with pytest.raises(SubscriptionExistsError):
        create(storage, sub("a"))
    create(storage, sub("b"))
    with storage.write() as tx:
        updated = tx.subscription_update(sub("a", "order.>", max_attempts=7))
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
        assert [c.subscription for c in inspect.counts(tx, T0, None)] == ["b"]


def test_counts_per_state(storage: Storage) -> None:
    s = create(storage, sub())
    publish(storage, draft(), draft(), draft(), draft(deliver_at=T0 + 60 * S))
    first, second = lease(storage, s.id, 2)
    ack(storage, [first])
    fail(storage, [second], terminal=True)
    found = counts(storage, "billing")
    assert (found.scheduled, found.ready, found.in_flight, found.acked, found.dead) == (
        1,
        1,
        0,
        1,
        1,
    )
    assert found.oldest_waiting_us == T0


def test_dedup_prune_forgets_expired_ids(storage: Storage) -> None:
    publish(storage, draft(dedup_id="a"), draft(dedup_id="b"))
    with storage.write() as tx:
        assert tx.dedup_prune(T0 + WINDOW - 1, 10) == 0
    with storage.write() as tx:
        assert tx.dedup_prune(T0 + WINDOW, 10) == 2


def test_a_failed_transaction_leaves_nothing_behind(storage: Storage) -> None:
    s = create(storage, sub())

    def insert_then_fail() -> None:
        with storage.write() as tx:
            publishing.publish(tx, T0, [draft(), draft(priority=3)], WINDOW)
            raise RuntimeError("rollback")

    with pytest.raises(RuntimeError):
        insert_then_fail()
    assert event_count(storage) == 0
    assert counts(storage, "billing").ready == 0
    (event_id,) = publish(storage, draft())  # the log goes on where it was
    assert lease_events(storage, s.id) == [event_id]


def test_competing_leasers_never_share_a_delivery(storage: Storage) -> None:
    s = create(storage, sub())
    total = 400
    publish(storage, *[draft() for _ in range(total)])
    got: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def leaser(index: int) -> None:
        start.wait()
        while True:
            part = lease(storage, s.id, 7, consumer=f"c{index}")
            if not part:
                return
            got[index].extend(part)

    threads = [threading.Thread(target=leaser, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [ack_id for part in got for ack_id in part]
    assert [a for a, n in Counter(everything).items() if n > 1] == []
    assert len(everything) == total


def test_lease_takes_known_events_from_memory_and_reads_the_rest(storage: Storage) -> None:
    s = create(storage, sub())
    first, second = draft(priority=1), draft(priority=1)  # rows: their events are read by id
    publish(storage, first, second)
    with storage.read() as tx:
        stored = tx.event_get(first.event_id)
    assert stored is not None
    remembered = dataclasses.replace(stored, payload=b'{"from":"memory"}')
    asked: list[set[str]] = []

    def known(ids: Collection[str]) -> dict[str, StoredEvent]:
        asked.append(set(ids))
        return {first.event_id: remembered}

    with storage.write() as tx:
        result = leasing.lease(tx, T0, s.id, [LeaseRequest("c1", 10)], known)
    payloads = {d.event.event_id: d.event.payload for d in result.leased["c1"]}
    assert asked == [{first.event_id, second.event_id}]
    assert payloads == {first.event_id: b'{"from":"memory"}', second.event_id: b'{"n":1}'}
    assert {d.subscription for d in result.leased["c1"]} == {s.name}


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
        got = run_together(4, lambda i: lease(storage, s.id, 5, consumer=f"c{i}"))
        together = [ack_id for part in got for ack_id in part]
        assert len(together) == 5, got
        ack(storage, together)


def test_concurrent_publishes_of_one_dedup_id_store_one_event(storage: Storage) -> None:
    create(storage, sub())
    for round_ in range(5):
        ids = run_together(4, lambda i, r=round_: publish(storage, draft(dedup_id=f"order-{r}")))
        assert len({event_id for (event_id,) in ids}) == 1, ids
    assert event_count(storage) == 5
    assert counts(storage, "billing").ready == 5


def test_redrive_makes_dead_letters_ready_as_new_attempts(storage: Storage) -> None:
    s = create(storage, sub(max_attempts=1))
    ids = publish(storage, draft("user.a"), draft("user.b"), draft("user.b"))
    fail(storage, lease(storage, s.id, 3), error="boom")
    assert redrive(storage, s.id, name="user.a") == 1
    assert states(storage, ids[0]) == {"billing": DeliveryState.READY}
    assert redrive(storage, s.id, event_ids=(ids[1],)) == 1
    assert redrive(storage, s.id) == 1
    got = leased(storage, s.id, 10, consumer="c")["c"]
    assert sorted(d.event.event_id for d in got) == sorted(ids)
    assert {d.attempt for d in got} == {1}
    assert [h.error for h in deliveries(storage, ids[0])["billing"].history] == ["boom"]


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
    assert lease_events(storage, beginning.id) == [old[0], recent[0]]
    assert lease_events(storage, timed.id) == [recent[0]]
    assert lease_events(storage, new.id) == []
    assert states(storage, old[0]) == {"b": DeliveryState.IN_FLIGHT}


def test_seek_back_replays_and_seek_forward_skips(storage: Storage) -> None:
    s = create(storage, sub())
    first = publish(storage, draft(deliver_at=T0 - 20 * S), now=T0 - 20 * S)
    second = publish(storage, draft(deliver_at=T0 - 10 * S), now=T0 - 10 * S)
    ack(storage, lease(storage, s.id, 10, now=T0 - 5 * S), T0 - 5 * S)
    third = publish(storage, draft(deliver_at=T0 - 2 * S), now=T0 - 2 * S)
    back = seek(storage, s.id, T0 - 15 * S, T0)
    assert (back.replayed, back.skipped) == (1, 0)
    assert sorted(lease_events(storage, s.id)) == sorted(second + third)
    fourth = publish(storage, draft(), now=T0)
    forward = seek(storage, s.id, T0 + S, T0 + S)
    assert forward.skipped == 1 and forward.replayed == 0
    assert states(storage, fourth[0]) == {"billing": DeliveryState.ACKED}
    assert states(storage, first[0]) == {"billing": DeliveryState.ACKED}


def test_seek_replays_a_dead_letter_afresh(storage: Storage) -> None:
    s = create(storage, sub(max_attempts=1))
    (event_id,) = publish(storage, draft())
    fail(storage, lease(storage, s.id, 1), error="boom")
    assert seek(storage, s.id, T0, T0 + S).replayed == 1
    (again,) = leased(storage, s.id, 1, now=T0 + S)["c1"]
    assert (again.event.event_id, again.attempt) == (event_id, 1)
    assert deliveries(storage, event_id, T0 + S)["billing"].history == ()


def test_maximum_age_dead_letters_and_retention_deletes(storage: Storage) -> None:
    create(storage, sub("aged", max_age_us=60 * S))
    kept = create(storage, sub("kept", retention_us=10 * S, max_attempts=5))
    old = publish(storage, draft(deliver_at=T0 - 120 * S), now=T0 - 120 * S)[0]
    young = publish(storage, draft())[0]
    retried = lease(storage, kept.id, 10, now=T0)
    fail(storage, retried, T0)  # retried, then acked: they keep their rows
    ack(storage, lease(storage, kept.id, 10, now=T0), T0)
    outcome = maintain(storage, T0)
    assert outcome.expired == 1 and outcome.deliveries_deleted == 0
    assert deliveries(storage, old)["aged"].dead_reason is DeadReason.EXPIRED
    assert states(storage, young)["aged"] is DeliveryState.READY
    assert states(storage, young)["kept"] is DeliveryState.ACKED
    outcome = maintain(storage, T0 + 11 * S)
    assert outcome.deliveries_deleted == 2  # both acked in "kept", past its 10 s
    assert "kept" not in states(storage, young, T0 + 11 * S)
    outcome = maintain(storage, T0 + 7200 * S)
    assert outcome.events_deleted == 0  # "aged" still holds or waits for both
    with storage.write() as tx:
        tx.subscription_delete("aged")
    outcome = maintain(storage, T0 + 7200 * S)
    assert outcome.events_deleted == 2
    assert event_count(storage) == 0


def test_retention_keeps_what_a_subscription_has_not_reached(storage: Storage) -> None:
    s = create(storage, sub(retention_us=10 * S))
    waiting = publish(storage, draft(), now=T0 - 7200 * S)
    assert maintain(storage, T0).events_deleted == 0
    assert lease_events(storage, s.id) == waiting


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
    first = leased(storage, s.id, 100, consumer="c")["c"]
    assert sorted(d.event.event_id for d in first) == sorted([a1, b1])  # priority waits its turn
    assert states(storage, a3) == {"billing": DeliveryState.BLOCKED}
    by_event = {d.event.event_id: d.ack_id for d in first}
    ack(storage, [by_event[a1]])
    (second,) = leased(storage, s.id, 100, consumer="c")["c"]
    assert second.event.event_id == a2
    fail(storage, [second.ack_id], terminal=True)  # dead also frees the key
    assert lease_events(storage, s.id) == [a3]


def test_ordered_key_waits_for_a_retry_of_its_head(storage: Storage) -> None:
    s = create(storage, dataclasses.replace(sub(max_attempts=5), ordered=True))
    k1, k2 = publish(storage, ordered_draft("k"), ordered_draft("k"))
    (first,) = lease(storage, s.id, 10)
    fail(storage, [first], delay_us=30 * S)
    assert lease(storage, s.id, 10) == []  # k2 stays behind k1's retry
    assert states(storage, k2) == {"billing": DeliveryState.BLOCKED}
    promote(storage, T0 + 30 * S)
    assert lease_events(storage, s.id, T0 + 30 * S) == [k1]
    assert states(storage, k1) == {"billing": DeliveryState.IN_FLIGHT}


def test_an_ordered_subscription_reading_old_events_gates_their_keys(storage: Storage) -> None:
    k1, k2 = publish(storage, ordered_draft("k"), ordered_draft("k"), now=T0 - S)
    s = create(
        storage,
        dataclasses.replace(sub(), ordered=True, start_position=StartPosition.BEGINNING),
    )
    assert lease_events(storage, s.id) == []  # the scan gave the keyed events their rows
    assert states(storage, k2) == {"billing": DeliveryState.BLOCKED}
    (first,) = leased(storage, s.id, 10, consumer="c")["c"]
    assert first.event.event_id == k1


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
    assert counts(storage, "billing").ready == 1
    assert len(lease(storage, s.id, 100)) == 1


def test_an_event_whose_transaction_commits_late_is_not_skipped(storage: Storage) -> None:
    """A transaction that stored its event first but commits last: the position waits for it."""
    if storage.max_concurrent_writers < 2:
        pytest.skip("one writer at a time: transactions commit in the order they write")
    s = create(storage, sub())
    stored = threading.Event()
    release = threading.Event()
    late: list[str] = []

    def slow_publisher() -> None:
        with storage.write() as tx:
            late.extend(o.event_id for o in publishing.publish(tx, T0, [draft()], WINDOW))
            stored.set()
            assert release.wait(30)

    thread = threading.Thread(target=slow_publisher)
    thread.start()
    try:
        assert stored.wait(30)
        early = publish(storage, draft())
        assert lease_events(storage, s.id) == early  # the other is not committed yet
    finally:
        release.set()
        thread.join()
    assert lease_events(storage, s.id) == late
    assert lease_events(storage, s.id) == []


def test_a_publish_leases_its_own_new_events_in_its_transaction(storage: Storage) -> None:
    """What a standing request relies on: the log shows a transaction its own new events."""
    s = create(storage, sub())
    for _ in range(3):  # again and again: each lease starts from where the last one left
        with storage.write() as tx:
            (outcome,) = publishing.publish(tx, T0, [draft()], WINDOW)
            result = leasing.lease(tx, T0, s.id, [LeaseRequest("c", 5)], _nothing)
        assert [d.event.event_id for d in result.leased["c"]] == [outcome.event_id]
    assert lease_events(storage, s.id) == []


def test_events_stored_after_a_lease_in_the_same_transaction_are_read_later(
    storage: Storage,
) -> None:
    """Group commit runs many operations in one transaction: a lease, then a publish.

    The lease must not count the events its own transaction stores after it as
    passed: they are read by the next lease, however the log orders them
    against other transactions' events.
    """
    s = create(storage, sub())
    for _ in range(3):
        with storage.write() as tx:
            (first,) = publishing.publish(tx, T0, [draft()], WINDOW)
            result = leasing.lease(tx, T0, s.id, [LeaseRequest("c", 5)], _nothing)
            (later,) = publishing.publish(tx, T0, [draft()], WINDOW)
        assert [d.event.event_id for d in result.leased["c"]] == [first.event_id]
        assert lease_events(storage, s.id) == [later.event_id]
    with storage.write() as tx:
        tx.event_count()  # a transaction that has written nothing yet leases
        assert not leasing.lease(tx, T0, s.id, [LeaseRequest("c", 5)], _nothing).leased
        (written,) = publishing.publish(tx, T0, [draft()], WINDOW)
    assert lease_events(storage, s.id) == [written.event_id]
    assert lease_events(storage, s.id) == []


def test_a_lease_while_another_holds_the_position_takes_the_ready_rows(storage: Storage) -> None:
    """A broker stuck mid-lease holds the log, not the retries: those go to the others."""
    if storage.max_concurrent_writers < 2:
        pytest.skip("one writer at a time: no lease runs beside another")
    s = create(storage, sub())
    first, second = publish(storage, draft(), draft())
    retry = lease(storage, s.id, 1)
    fail(storage, retry)  # ready again, as a row
    holding = threading.Event()
    release = threading.Event()

    def stuck_lease() -> None:
        with storage.write() as tx:
            assert tx.cursor_lock(s.id) is not None
            holding.set()
            assert release.wait(30)

    thread = threading.Thread(target=stuck_lease)
    thread.start()
    try:
        assert holding.wait(30)
        with storage.write() as tx:
            result = leasing.lease(tx, T0, s.id, [LeaseRequest("c", 10)], _nothing)
        assert result.contended
        assert [d.event.event_id for d in result.leased["c"]] == [first]
    finally:
        release.set()
        thread.join()
    assert lease_events(storage, s.id) == [second]


def test_upkeep_deletes_rows_of_a_subscription_that_is_gone(storage: Storage) -> None:
    """A broker that had not heard of a deletion yet may still write a row for it."""
    s = create(storage, sub())
    publish(storage, draft(priority=1))  # a row at once
    with storage.write() as tx:
        tx.subscription_delete("billing")
    with storage.write() as tx:  # as a broker routing with the list it read before
        publishing.publish(tx, T0, [], WINDOW)
        tx.delivery_insert(
            [NewDelivery(s.id, "01J000000000000000000000ZZ", 1, DeliveryState.READY, 0, None, T0)]
        )
    assert maintain(storage, T0).deliveries_deleted == 1
    assert maintain(storage, T0).deliveries_deleted == 0
