"""Publishing inside your own PostgreSQL transaction: the event commits with your change, or not.

A service whose database is the broker's PostgreSQL server can call
`publish_in(conn, ...)` on the connection (or SQLAlchemy session) of the
transaction that makes its own change. It calls the SQL function
`eventbroker.publish(...)` the broker's migrations installed: the event is
stored if and only if that transaction commits, and consumers see it only
after the commit. No gRPC call is made, so nothing is sent twice and nothing
is lost between "my row is written" and "my event is published".

The arguments are `Client.publish`'s: `data` is turned into JSON as a publish
does it (dataclasses, pydantic models, dates and UUIDs as strings) and
`delay` follows the client's one rule for lengths of time (a number is
seconds; `"5m"`, `timedelta`, an absolute `datetime`...). The broker checks
everything else and refuses bad input with SQLSTATE 22023 naming the argument,
which the connection raises as its own error (and your transaction is then
aborted, as after any failed statement).

Works with a psycopg 3 connection (or any DB-API connection with `%s`
parameters), a SQLAlchemy `Connection` or `Session`, and through
`publish_in_async` with their asyncio twins and asyncpg's connections; no
database library is needed to import this module.
See docs/outbox.md for the grant the calling role needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from eventbroker import _models
from eventbroker import _tracing as tracing
from eventbroker.durations import parse_delay
from eventbroker.types import DelayLike, EventSpec, PublishResult

__all__ = ["publish_in", "publish_in_async"]

_ARGUMENTS = (
    "name",
    "data",
    "headers",
    "priority",
    "delay",
    "deliver_at",
    "idempotency_id",
    "ordering_key",
)
#: Every argument's type, so that the one function is found whatever a driver sends.
_TYPES = ("text", "jsonb", "jsonb", "integer", "interval", "timestamptz", "text", "text")
#: How each argument is sent: JSON, intervals and times as text, read by the server
#: (a driver that types parameters itself, as asyncpg does, would want its own types).
_SENT_AS = tuple("integer" if t == "integer" else "text" for t in _TYPES)
#: For DB-API connections (psycopg's `%s` placeholders).
_DBAPI_SQL = (
    "SELECT event_id, duplicate FROM eventbroker.publish("
    + ", ".join(
        f"%s::{sent}" + (f"::{t}" if t != sent else "")
        for sent, t in zip(_SENT_AS, _TYPES, strict=True)
    )
    + ")"
)
#: For asyncpg's own connections (numbered parameters).
_NUMBERED_SQL = (
    "SELECT event_id, duplicate FROM eventbroker.publish("
    + ", ".join(
        f"${n}::{sent}" + (f"::{t}" if t != sent else "")
        for n, (sent, t) in enumerate(zip(_SENT_AS, _TYPES, strict=True), start=1)
    )
    + ")"
)
#: For SQLAlchemy (named parameters; CAST, as `:name::type` would not be a parameter).
_SQLALCHEMY_SQL = (
    "SELECT event_id, duplicate FROM eventbroker.publish("
    + ", ".join(
        f"CAST(:{a} AS {sent})" if t == sent else f"CAST(CAST(:{a} AS {sent}) AS {t})"
        for a, sent, t in zip(_ARGUMENTS, _SENT_AS, _TYPES, strict=True)
    )
    + ")"
)


def publish_in(
    conn: Any,
    name: str,
    data: Any = None,
    *,
    id: str | None = None,
    delay: DelayLike = None,
    priority: int = 0,
    ordering_key: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> PublishResult:
    """Publish one event in the transaction open on `conn`; it is stored if that commits.

    Args:
        conn: A psycopg 3 `Connection` (or another DB-API connection with `%s`
            parameters), or a SQLAlchemy `Connection` or `Session`, in the
            transaction that makes your own change.
        name: Event name, e.g. `user.joined` (case-insensitive).
        data: Any JSON value, a dataclass instance or a pydantic model.
        id: Idempotency id: a second publish with the same id inside the dedup window
            stores nothing and returns the first event's id as a duplicate.
        delay: Deliver later: seconds as a number, a `timedelta`, `"5m"`, `"1 day"`,
            or an absolute `datetime` / ISO-8601 time (at most one year ahead).
        priority: -50..50; higher goes first among deliveries ready at once.
        ordering_key: FIFO key for ordered subscriptions.
        headers: String headers delivered with the event.

    Returns:
        The event's id and whether it was a duplicate (`matched_subscriptions` is 0:
        the broker routes the event when it reads it, after the commit).

    Raises:
        ValueError: `data` or `delay` cannot be read (nothing was sent).

    With OpenTelemetry on, the publish is a span whose trace context goes into the
    event's headers, as with `Client.publish` (see docs/tracing.md).

    """
    with _traced(name, headers) as traced:
        params = _params(name, data, id, delay, priority, ordering_key, traced.specs[0].headers)
        if _is_sqlalchemy(conn):
            row = conn.execute(_sqlalchemy_text(), params).one()
        else:
            with conn.cursor() as cursor:
                cursor.execute(_DBAPI_SQL, [params[a] for a in _ARGUMENTS])
                row = cursor.fetchone()
        result = PublishResult(event_id=row[0], duplicate=bool(row[1]))
        traced.done([result])
    return result


async def publish_in_async(
    conn: Any,
    name: str,
    data: Any = None,
    *,
    id: str | None = None,
    delay: DelayLike = None,
    priority: int = 0,
    ordering_key: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> PublishResult:
    """`publish_in` on an asyncio connection: psycopg's, asyncpg's, or SQLAlchemy's (or a session).

    Raises:
        ValueError: `data` or `delay` cannot be read (nothing was sent).

    """
    with _traced(name, headers) as traced:
        params = _params(name, data, id, delay, priority, ordering_key, traced.specs[0].headers)
        if _is_sqlalchemy(conn):
            rows = await conn.execute(_sqlalchemy_text(), params)
            row = rows.one()
        elif hasattr(conn, "fetchrow"):  # an asyncpg connection
            row = await conn.fetchrow(_NUMBERED_SQL, *[params[a] for a in _ARGUMENTS])
        else:
            async with conn.cursor() as cursor:
                await cursor.execute(_DBAPI_SQL, [params[a] for a in _ARGUMENTS])
                row = await cursor.fetchone()
        result = PublishResult(event_id=row[0], duplicate=bool(row[1]))
        traced.done([result])
    return result


def _traced(name: str, headers: Mapping[str, str] | None) -> tracing.Publishing:
    """The publish span of one event, whose context goes into its headers (tracing on)."""
    return tracing.Publishing(
        [EventSpec(name=name, headers=headers)], target=None, operation="publish_in"
    )


def _params(
    name: str,
    data: Any,
    dedup_id: str | None,
    delay: DelayLike,
    priority: int,
    ordering_key: str | None,
    headers: Mapping[str, str] | None,
) -> dict[str, Any]:
    """The function's arguments, as text and integers that every driver passes as they are."""
    when = parse_delay(delay)
    return {
        "name": name,
        "data": None if data is None else _models.dumps(data).decode(),
        "headers": None if headers is None else _models.dumps(dict(headers)).decode(),
        "priority": priority,
        # Microseconds exactly, whatever the driver makes of a timedelta.
        "delay": f"{_microseconds(when)} microseconds" if isinstance(when, timedelta) else None,
        "deliver_at": when.isoformat() if isinstance(when, datetime) else None,
        "idempotency_id": dedup_id,
        "ordering_key": ordering_key,
    }


def _microseconds(delay: timedelta) -> int:
    return (delay.days * 86_400 + delay.seconds) * 1_000_000 + delay.microseconds


def _is_sqlalchemy(conn: Any) -> bool:
    """Whether `conn` is a SQLAlchemy connection or session (sync or asyncio)."""
    return any(c.__module__.startswith("sqlalchemy.") for c in type(conn).__mro__)


def _sqlalchemy_text() -> Any:
    from sqlalchemy import text  # only a SQLAlchemy caller has it, and needs it

    return text(_SQLALCHEMY_SQL)
