"""PostgreSQL: the scale path, several broker processes on one database.

Ready rows are claimed with `FOR UPDATE SKIP LOCKED`, so concurrent leasers in
any process each take different rows and never wait on one another; rows read
before an update (acks, nacks) are locked with `FOR UPDATE`. Commits are
durable (`synchronous_commit=on`) before a publish is acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event

from broker.storage.sql import SqlStorage, SqlTx

POOL_SIZE = 8


class PostgresTx(SqlTx):
    """PostgreSQL's claims and locks."""

    def _ready_ids(self, subscription_id: int, limit: int) -> sa.Select[tuple[int]]:
        d = self._deliveries
        return (
            sa.select(d.c.id)
            .where(d.c.subscription_id == subscription_id, d.c.state == 2)
            .order_by(d.c.rank, d.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )

    def _locked(self, query: sa.Select[Any]) -> sa.Select[Any]:
        return query.with_for_update()

    # Advisory locks, held to the end of the transaction and always taken in sorted
    # order. Ordering keys use the pair (subscription id >= 1, hash of the key), a
    # subscription the pair (0, its id), and dedup ids the single 64-bit key space,
    # which PostgreSQL keeps apart from the pairs.

    def _lock_ordering_key(self, subscription_id: int, key: str) -> None:
        self.conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(:sub, hashtext(:key))"),
            {"sub": subscription_id, "key": key},
        )

    def _lock_subscription(self, subscription_id: int) -> None:
        self.conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(0, :sub)"), {"sub": subscription_id}
        )

    def _lock_dedup_ids(self, dedup_ids: Sequence[str]) -> None:
        self.conn.execute(
            sa.text(
                "SELECT count(pg_advisory_xact_lock(hashtextextended(id, 0)))"
                " FROM (SELECT unnest(CAST(:ids AS text[])) AS id ORDER BY 1) AS sorted"
            ),
            {"ids": list(dedup_ids)},
        )


class PostgresStorage(SqlStorage):
    """A PostgreSQL database through psycopg 3."""

    dialect: ClassVar[str] = "postgresql"
    tx_class: ClassVar[type[SqlTx]] = PostgresTx
    max_concurrent_writers = 4

    def _create_engines(self, url: str) -> tuple[sa.Engine, sa.Engine]:
        engine = sa.create_engine(url, pool_size=POOL_SIZE, max_overflow=0, pool_pre_ping=True)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET synchronous_commit = on")
            dbapi_connection.commit()

        return engine, engine
