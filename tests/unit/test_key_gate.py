"""The key gate as a pure function: a key's open deliveries in, the state changes out."""

from __future__ import annotations

import dataclasses

from broker.delivery.ordering import event_key, gate, header_key, key_wait
from broker.delivery.records import DeliveryKey, KeyedDelivery, StateChange
from broker.domain import DeliveryState, KeyWait, StartPosition, Subscription

BLOCKED = DeliveryState.BLOCKED
READY = DeliveryState.READY
SCHEDULED = DeliveryState.SCHEDULED
IN_FLIGHT = DeliveryState.IN_FLIGHT
NOW = 1_000


def rows(*states: DeliveryState, ready_at: int = NOW) -> list[KeyedDelivery]:
    return [KeyedDelivery(seq, state, ready_at) for seq, state in enumerate(states, start=1)]


def moved(*pairs: tuple[int, DeliveryState]) -> list[StateChange]:
    return [StateChange(DeliveryKey(7, seq), state) for seq, state in pairs]


def subscription(**settings: object) -> Subscription:
    base = Subscription(
        name="s",
        filters=("a.*",),
        ack_deadline_us=1,
        max_attempts=1,
        min_backoff_us=0,
        max_backoff_us=0,
        max_in_flight=0,
        ordered=False,
        retention_us=1,
        start_position=StartPosition.NEW,
    )
    return dataclasses.replace(base, **settings)  # type: ignore[arg-type]


def test_blocked_deliveries_go_through_in_log_order_while_slots_are_free() -> None:
    decision = gate(7, rows(IN_FLIGHT, BLOCKED, BLOCKED, BLOCKED), 3, NOW)
    assert decision.changes == moved((2, READY), (3, READY))
    assert decision.ready and decision.due_us is None


def test_a_full_key_changes_nothing_and_a_lowered_cap_takes_nothing_back() -> None:
    assert gate(7, rows(IN_FLIGHT, READY, BLOCKED), 2, NOW).changes == []
    assert gate(7, rows(IN_FLIGHT, READY, IN_FLIGHT, BLOCKED), 1, NOW).changes == []


def test_no_cap_lets_everything_through() -> None:
    decision = gate(7, rows(IN_FLIGHT, BLOCKED, BLOCKED), None, NOW)
    assert decision.changes == moved((2, READY), (3, READY))


def test_entering_rows_take_a_free_slot_or_are_blocked() -> None:
    open_rows = rows(READY, IN_FLIGHT, READY)  # 1 and 3 were just made ready
    decision = gate(7, open_rows, 2, NOW, entering={1, 3})
    assert decision.changes == moved((3, BLOCKED))  # 1 takes the free slot, first in line
    assert decision.ready


def test_ordered_a_scheduled_retry_holds_the_slot() -> None:
    open_rows = [KeyedDelivery(1, SCHEDULED, NOW + 5), KeyedDelivery(2, BLOCKED, NOW)]
    assert gate(7, open_rows, 1, NOW, scheduled_holds=True).changes == []
    decision = gate(7, open_rows, 1, NOW, scheduled_holds=False)
    assert decision.changes == moved((2, READY))


def test_under_a_cap_a_delayed_one_waits_for_its_time_without_a_slot() -> None:
    open_rows = [
        KeyedDelivery(1, BLOCKED, NOW + 50),
        KeyedDelivery(2, BLOCKED, NOW),
        KeyedDelivery(3, BLOCKED, NOW),
    ]
    decision = gate(7, open_rows, 1, NOW, scheduled_holds=False)
    assert decision.changes == moved((1, SCHEDULED), (2, READY))
    assert decision.due_us == NOW + 50
    # Ordered: the delayed head holds its key, scheduled, and the rest wait behind it.
    ordered = gate(7, open_rows, 1, NOW, scheduled_holds=True)
    assert ordered.changes == moved((1, SCHEDULED))


def test_key_wait_counts_the_slots_held() -> None:
    capped = subscription(max_in_flight_per_key=2)
    open_rows = rows(IN_FLIGHT, SCHEDULED, READY, BLOCKED)
    assert key_wait(capped, "k", open_rows) == KeyWait("k", 2, 2)
    ordered = subscription(ordered=True)
    assert key_wait(ordered, "k", open_rows) == KeyWait("k", 3, 1, ordered=True)
    assert key_wait(subscription(), "k", open_rows) is None


def test_the_key_comes_from_the_ordering_key_or_a_header() -> None:
    headers = {"tenant": "t1"}
    assert event_key(subscription(), "o", headers) is None  # not keyed
    assert event_key(subscription(max_in_flight_per_key=2), "o", headers) == "o"
    by_header = subscription(max_in_flight_per_key=2, key_header="tenant")
    assert event_key(by_header, "o", headers) == "t1"
    assert event_key(by_header, "o", {}) is None  # no such header: not capped
    long = "x" * 300
    digest = header_key({"tenant": long}, "tenant")
    assert digest is not None and digest.startswith("sha256:") and len(digest) == 71
    assert header_key({"tenant": long + "y"}, "tenant") != digest
