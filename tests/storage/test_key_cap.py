"""The cap per key (max_in_flight_per_key), in memory, on SQLite and on PostgreSQL.

The same operations the engine runs: a key's deliveries past its cap are
blocked, slots free on ack, nack, expiry and dead letters, other keys flow.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection
from typing import Any

from broker.domain import (
    DeliveryState,
    EventDraft,
    KeyWait,
    LeaseRequest,
    StartPosition,
    StoredEvent,
    Subscription,
)
from broker.engine.operations import lease as leasing
from broker.engine.operations import replay, settle
from broker.engine.operations.subscriptions import update
from broker.storage import Storage
from tests.storage.test_storage import (
    T0,
    S,
    ack,
    create,
    deliveries,
    draft,
    expired,
    fail,
    lease,
    lease_events,
    leased,
    lowest,
    maintain,
    promote,
    publish,
    redrive,
    run_together,
    states,
    sub,
)


def capped(cap: int, **settings: Any) -> Subscription:
    """A subscription with a cap per key (and at most 5 attempts)."""
    return dataclasses.replace(sub(max_attempts=5), max_in_flight_per_key=cap, **settings)


def keyed(key: str, **kwargs: Any) -> EventDraft:
    return draft("user.x", ordering_key=key, **kwargs)


def headed(key: str) -> EventDraft:
    return dataclasses.replace(draft("user.x"), headers={"customer": key})


def _nothing(event_ids: Collection[str]) -> dict[str, StoredEvent]:
    return {}


def lease_keeping(storage: Storage, sub_id: int, count: int, consumer: str) -> list[str]:
    """Lease as a dispatcher does, keeping what a contended lease took (ready rows) too."""
    got: list[str] = []
    while True:
        with storage.write() as tx:
            result = leasing.lease(tx, T0, sub_id, [LeaseRequest(consumer, count)], _nothing)
        got += [d.ack_id for d in result.leased.get(consumer, [])]
        if not result.contended:
            return got


def in_flight_by_key(storage: Storage, event_keys: dict[str, str], sub_name: str) -> Counter[str]:
    """How many deliveries of each key are in flight now."""
    found: Counter[str] = Counter()
    for event_id, key in event_keys.items():
        if deliveries(storage, event_id)[sub_name].state is DeliveryState.IN_FLIGHT:
            found[key] += 1
    return found


def test_a_key_never_has_more_than_its_cap_in_flight_while_others_flow(storage: Storage) -> None:
    s = create(storage, capped(2))
    a = publish(storage, *[keyed("a") for _ in range(6)])
    b = publish(storage, *[keyed("b") for _ in range(6)])
    loose = publish(storage, draft("user.x"), draft("user.x"))  # no key: not capped
    first = leased(storage, s.id, 100, consumer="c")["c"]
    got = Counter(d.event.ordering_key for d in first)
    assert got == {"a": 2, "b": 2, None: 2}
    assert {d.event.event_id for d in first} == {*a[:2], *b[:2], *loose}
    assert states(storage, a[2]) == {"billing": DeliveryState.BLOCKED}
    assert lease(storage, s.id, 100) == []  # every key at its cap, credit or not
    # Acking one of a lets exactly the next a through; b stays where it is.
    by_event = {d.event.event_id: d.ack_id for d in first}
    ack(storage, [by_event[a[0]]])
    assert lease_events(storage, s.id) == [a[2]]
    assert lease(storage, s.id, 100) == []
    ack(storage, [by_event[b[0]], by_event[b[1]]])
    assert sorted(lease_events(storage, s.id)) == sorted(b[2:4])


def test_nacked_expired_and_dead_leases_free_their_slot(storage: Storage) -> None:
    s = create(storage, capped(1, max_attempts=2))
    k = publish(storage, *[keyed("k") for _ in range(4)])
    (first,) = lease(storage, s.id, 10)
    # A retry backing off holds no slot: the next one goes meanwhile.
    fail(storage, [first], delay_us=10 * S)
    (second,) = leased(storage, s.id, 10, consumer="c", now=T0 + S)["c"]
    assert second.event.event_id == k[1]
    # Come due, the retry waits for the slot, first in line (log order).
    due = T0 + 10 * S
    promote(storage, due)
    assert states(storage, k[0]) == {"billing": DeliveryState.BLOCKED}
    assert deliveries(storage, k[0], due)["billing"].key_wait == KeyWait("k", 1, 1)
    assert lease(storage, s.id, 10, now=due) == []
    ack(storage, [second.ack_id], now=due)
    (again,) = leased(storage, s.id, 10, consumer="c", now=due)["c"]
    assert (again.event.event_id, again.attempt) == (k[0], 2)
    # Its second attempt fails for good: dead, the slot frees.
    fail(storage, [again.ack_id], now=due)
    assert states(storage, k[0]) == {"billing": DeliveryState.DEAD}
    (third,) = leased(storage, s.id, 10, consumer="c", now=due)["c"]
    assert third.event.event_id == k[2]
    # Its lease expires: the reaper fails it, and its retry backs off without the slot.
    late = due + 31 * S
    assert expired(storage, late) == [third.ack_id]
    with storage.write() as tx:
        settle.expire(tx, late, 100, lowest)
    assert lease_events(storage, s.id, late) == [k[3]]


def test_a_ready_retry_keeps_its_slot_and_a_delayed_event_takes_none_until_due(
    storage: Storage,
) -> None:
    s = create(storage, capped(1))
    later = T0 + 60 * S
    k1, k2, delayed = publish(storage, keyed("k"), keyed("k"), keyed("k", deliver_at=later))
    assert states(storage, delayed) == {"billing": DeliveryState.SCHEDULED}
    (first,) = lease(storage, s.id, 10)
    fail(storage, [first])  # ready again at once: still its key's one in flight or ready
    assert lease_events(storage, s.id) == [k1]
    assert states(storage, k2) == {"billing": DeliveryState.BLOCKED}


def test_the_key_can_come_from_a_header(storage: Storage) -> None:
    s = create(storage, capped(1, key_header="customer"))
    c1 = publish(storage, headed("42"), headed("42"), headed("7"))
    ignored = publish(storage, keyed("42"))  # its ordering key is not this subscription's key
    got = lease_events(storage, s.id)
    assert sorted(got) == sorted([c1[0], c1[2], *ignored])
    info = deliveries(storage, c1[1])["billing"]
    assert info.state is DeliveryState.BLOCKED
    assert info.ordering_key == "42"
    assert info.key_wait == KeyWait("42", 1, 1)


def test_old_events_read_from_the_log_are_keyed_by_their_header(storage: Storage) -> None:
    events = publish(storage, headed("9"), headed("9"), headed("9"), now=T0 - S)
    s = create(storage, capped(2, key_header="customer", start_position=StartPosition.BEGINNING))
    lease_events(storage, s.id)  # the scan gives the keyed events their rows
    got = lease_events(storage, s.id)
    assert sorted(got) == sorted(events[:2])
    assert deliveries(storage, events[2])["billing"].key_wait == KeyWait("9", 2, 2)


def test_get_event_says_what_holds_the_key(storage: Storage) -> None:
    s = create(storage, capped(3))
    ids = publish(storage, *[keyed("customer-42") for _ in range(4)])
    lease(storage, s.id, 2)
    info = deliveries(storage, ids[3])["billing"]
    assert info.state is DeliveryState.BLOCKED
    assert info.key_wait == KeyWait("customer-42", 3, 3)  # two in flight, one ready: 3 slots held
    assert deliveries(storage, ids[0])["billing"].key_wait is None


def test_a_raised_cap_lets_blocked_deliveries_through_and_a_lowered_one_drains(
    storage: Storage,
) -> None:
    s = create(storage, capped(1))
    k = publish(storage, *[keyed("k") for _ in range(5)])
    (first,) = lease(storage, s.id, 10)
    with storage.write() as tx:
        outcome = update(tx, T0, dataclasses.replace(s, max_in_flight_per_key=3))
    assert outcome.ready
    assert sorted(lease_events(storage, s.id)) == sorted(k[1:3])
    with storage.write() as tx:
        update(tx, T0, dataclasses.replace(s, max_in_flight_per_key=2))
    ack(storage, [first])  # 2 still in flight: at the new cap, nothing moves
    assert lease(storage, s.id, 10) == []
    with storage.write() as tx:
        update(tx, T0, dataclasses.replace(s, max_in_flight_per_key=0))
    assert sorted(lease_events(storage, s.id)) == sorted(k[3:])


def test_a_redriven_dead_letter_waits_for_a_free_slot(storage: Storage) -> None:
    s = create(storage, capped(1, max_attempts=1))
    k = publish(storage, keyed("k"), keyed("k"))
    (first,) = lease(storage, s.id, 10)
    fail(storage, [first])  # dead: k[1] goes through
    (second,) = lease(storage, s.id, 10)
    assert redrive(storage, s.id) == 1
    assert states(storage, k[0]) == {"billing": DeliveryState.BLOCKED}
    assert lease(storage, s.id, 10) == []
    ack(storage, [second])
    assert lease_events(storage, s.id) == [k[0]]


def test_competing_leasers_and_ackers_never_pass_the_cap(storage: Storage) -> None:
    s = create(storage, capped(2))
    keys = {}
    for key in ("a", "b", "c"):
        for event_id in publish(storage, *[keyed(key) for _ in range(8)]):
            keys[event_id] = key
    held: list[str] = []
    for _ in range(14):
        got = run_together(4, lambda i: lease_keeping(storage, s.id, 10, f"c{i}"))
        held += [ack_id for part in got for ack_id in part]
        assert all(n <= 2 for n in in_flight_by_key(storage, keys, "billing").values())
        if not held:
            break
        # Ack half of what is held, from several threads at once.
        now, held = held[: max(len(held) // 2, 1)], held[max(len(held) // 2, 1) :]
        acked = run_together(len(now), lambda i, now=now: ack(storage, [now[i]]))
        assert all(outcome.not_applied == () for outcome in acked)
    ack(storage, held)
    while rest := lease(storage, s.id, 100):
        assert all(n <= 2 for n in in_flight_by_key(storage, keys, "billing").values())
        ack(storage, rest)
    assert {deliveries(storage, e)["billing"].state for e in keys} == {DeliveryState.ACKED}


def test_events_too_old_are_dead_lettered_under_their_header_key(storage: Storage) -> None:
    (old,) = publish(storage, headed("5"), now=T0 - 2 * 3600 * S)
    s = create(
        storage,
        capped(
            1, key_header="customer", start_position=StartPosition.BEGINNING, max_age_us=3600 * S
        ),
    )
    assert maintain(storage, T0).expired == 1
    info = deliveries(storage, old)["billing"]
    assert (info.state, info.ordering_key) == (DeliveryState.DEAD, "5")
    assert redrive(storage, s.id) == 1
    assert lease_events(storage, s.id) == [old]


def test_a_seek_past_the_deliveries_holding_a_key_lets_the_next_through(
    storage: Storage,
) -> None:
    s = create(storage, capped(1))
    (skipped,) = publish(storage, keyed("k", deliver_at=T0 - 2 * S), now=T0 - 2 * S)
    (kept,) = publish(storage, keyed("k", deliver_at=T0 - S), now=T0 - S)
    assert states(storage, kept) == {"billing": DeliveryState.BLOCKED}
    with storage.write() as tx:
        replay.seek(tx, T0, s.id, T0 - S)
    assert states(storage, skipped) == {"billing": DeliveryState.ACKED}
    assert lease_events(storage, s.id) == [kept]


def test_a_backlog_longer_than_the_gates_window_is_served_in_publish_order(
    storage: Storage,
) -> None:
    s = create(storage, capped(2))
    backlog = publish(storage, *[keyed("big") for _ in range(80)])
    served: list[str] = []
    while got := leased(storage, s.id, 100, consumer="c").get("c", []):
        assert len(got) <= 2
        served += sorted((d.event.event_id for d in got), key=backlog.index)
        ack(storage, [d.ack_id for d in got])
    assert served == backlog


def test_delayed_events_filling_the_window_do_not_hold_back_a_due_one(storage: Storage) -> None:
    s = create(storage, capped(1))
    later = T0 + 100 * S
    *delayed, due = publish(storage, *[keyed("k", deliver_at=later) for _ in range(40)], keyed("k"))
    assert lease_events(storage, s.id) == [due]
    assert states(storage, delayed[-1]) == {"billing": DeliveryState.SCHEDULED}
