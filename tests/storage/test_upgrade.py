"""A database the previous release made, upgraded in place: nothing waiting is lost.

The fixtures (see `fixtures/README.md`) hold three subscriptions after release
0.1.0 stored seven events: one acked, one leased and in flight, one dead, one
scheduled an hour ahead, two of one ordering key (the second blocked), and one
with a priority, each with its delivery rows of that release.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from broker.domain import DeliveryState
from broker.storage import Storage, open_storage
from broker.storage.interface import DeadLetterListParams
from tests.conftest import sqlite_url
from tests.storage.test_storage import (
    ack,
    draft,
    fail,
    lease_events,
    leased,
    promote,
    publish,
    redrive,
    states,
)

FIXTURES = Path(__file__).parent / "fixtures"
S = 1_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
def upgraded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """The previous release's database, loaded and upgraded by this broker."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
        with sqlite3.connect(tmp_path / "broker.db") as conn:
            conn.executescript((FIXTURES / "previous_release.sqlite.sql").read_text())
    else:
        url = request.getfixturevalue("postgres_url")
        dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(False)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((FIXTURES / "previous_release.postgresql.sql").read_text().encode())
    store = open_storage(url)
    store.migrate()
    try:
        yield store
    finally:
        store.close()


def _fixture() -> dict[str, Any]:
    found: dict[str, Any] = json.loads((FIXTURES / "previous_release.json").read_text())
    return found


def _ids(storage: Storage) -> dict[str, int]:
    with storage.read() as tx:
        return {s.name: s.id for s in tx.subscriptions_by_id().values()}


def test_the_upgrade_keeps_every_state_as_it_was(upgraded: Storage) -> None:
    fixture = _fixture()
    e, now = fixture["event_ids"], fixture["time_us"] + 60 * S
    ready, in_flight = DeliveryState.READY, DeliveryState.IN_FLIGHT
    assert states(upgraded, e["e1"], now) == {
        "orders": DeliveryState.ACKED,
        "audit": ready,
        "keyed": ready,
    }
    assert states(upgraded, e["e2"], now)["orders"] is in_flight
    assert states(upgraded, e["e3"], now)["orders"] is DeliveryState.DEAD
    assert set(states(upgraded, e["e4"], now).values()) == {DeliveryState.SCHEDULED}
    assert states(upgraded, e["e6"], now)["keyed"] is DeliveryState.BLOCKED
    assert states(upgraded, e["e7"], now) == {"audit": ready}


def test_leases_taken_before_the_upgrade_are_still_settled(upgraded: Storage) -> None:
    fixture = _fixture()
    now = fixture["time_us"] + 60 * S
    held = fixture["in_flight_ack_id"]  # an ack id of the previous release
    assert ack(upgraded, [held], now).applied == (held,)
    assert states(upgraded, fixture["event_ids"]["e2"], now)["orders"] is DeliveryState.ACKED


def test_waiting_deliveries_and_dead_letters_are_delivered_once_after_the_upgrade(
    upgraded: Storage,
) -> None:
    fixture = _fixture()
    e, now = fixture["event_ids"], fixture["time_us"] + 60 * S
    subs = _ids(upgraded)
    (after,) = publish(upgraded, draft("order.placed"), now=now)
    audit = lease_events(upgraded, subs["audit"], now)
    assert audit == [e["e7"], e["e1"], e["e2"], e["e3"], e["e5"], e["e6"], after]
    assert lease_events(upgraded, subs["audit"], now) == []
    keyed = leased(upgraded, subs["keyed"], 100, consumer="c", now=now)["c"]
    assert [d.event.event_id for d in keyed] == [e["e1"], e["e2"], e["e3"], e["e5"], after]
    ack(upgraded, [d.ack_id for d in keyed if d.event.event_id == e["e5"]], now)
    assert lease_events(upgraded, subs["keyed"], now) == [e["e6"]]
    with upgraded.read() as tx:
        letters = tx.dead_letter_list(DeadLetterListParams(subs["orders"], 0, 10))
    assert [d.event.event_id for d in letters] == [e["e3"]]
    assert redrive(upgraded, subs["orders"], now) == 1
    orders = lease_events(upgraded, subs["orders"], now)
    assert orders == [e["e3"], e["e5"], e["e6"], after]
    promote(upgraded, fixture["time_us"] + 3600 * S)
    later = fixture["time_us"] + 3601 * S
    assert lease_events(upgraded, subs["orders"], later) == [e["e4"]]
    fail(upgraded, [], later)  # nothing to settle: the call is harmless
