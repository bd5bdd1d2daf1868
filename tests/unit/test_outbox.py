"""`publish_in`'s arguments as the SQL function gets them, on any DB-API connection."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any

import pytest

from eventbroker.outbox import publish_in


class FakeCursor:
    """Records the statement and answers one row, as a DB-API cursor does."""

    def __init__(self, calls: list[tuple[str, list[Any]]]) -> None:
        self._calls = calls

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def execute(self, sql: str, params: list[Any]) -> None:
        self._calls.append((sql, params))

    def fetchone(self) -> tuple[str, bool]:
        return ("01JFAKE", False)


class FakeConnection:
    """A DB-API connection that only has cursors."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any]]] = []

    def cursor(self) -> FakeCursor:
        return FakeCursor(self.calls)


@dataclasses.dataclass
class Signup:
    user: str
    day: date


def test_arguments_are_passed_as_text_and_integers_every_driver_takes() -> None:
    conn = FakeConnection()
    result = publish_in(
        conn,
        "user.joined",
        Signup("ada", date(2026, 1, 2)),
        id="signup-ada",
        delay="1h30m",
        priority=5,
        ordering_key="ada",
        headers={"source": "web"},
    )
    assert (result.event_id, result.duplicate) == ("01JFAKE", False)
    ((sql, params),) = conn.calls
    assert sql == (
        "SELECT event_id, duplicate FROM eventbroker.publish(%s::text, %s::text::jsonb,"
        " %s::text::jsonb, %s::integer, %s::text::interval, %s::text::timestamptz, %s::text,"
        " %s::text)"
    )
    name, data, headers, priority, delay, deliver_at, dedup_id, key = params
    assert name == "user.joined" and priority == 5 and (dedup_id, key) == ("signup-ada", "ada")
    assert json.loads(data) == {"user": "ada", "day": "2026-01-02"}
    assert json.loads(headers) == {"source": "web"}
    assert (delay, deliver_at) == ("5400000000 microseconds", None)


def test_an_absolute_time_goes_as_deliver_at_and_no_data_as_null() -> None:
    conn = FakeConnection()
    publish_in(conn, "report.due", delay=datetime(2027, 1, 1, 9, 30))  # naive: UTC
    ((_, params),) = conn.calls
    assert params[1] is None and params[2] is None
    assert (params[4], params[5]) == (None, "2027-01-01T09:30:00+00:00")
    publish_in(conn, "report.due", delay=timedelta(milliseconds=1500))
    assert conn.calls[1][1][4] == "1500000 microseconds"
    assert datetime.fromisoformat(params[5]) == datetime(2027, 1, 1, 9, 30, tzinfo=UTC)


def test_what_the_client_cannot_read_is_refused_before_anything_is_sent() -> None:
    conn = FakeConnection()
    with pytest.raises(ValueError, match="delay"):
        publish_in(conn, "x", delay="400 days")
    with pytest.raises(ValueError, match="not JSON"):
        publish_in(conn, "x", float("nan"))
    assert conn.calls == []
