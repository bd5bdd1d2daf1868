"""The database schema, declared once with SQLAlchemy Core.

The Alembic migrations in `broker/migrations` must produce exactly this schema;
a test compares the two. Times are BIGINT microseconds since the epoch.

Events are stored once, in log order (`seq`; on PostgreSQL also the storing
transaction's id, `txid`). Each subscription has a cursor: its position in the
log and where it started. Delivery rows exist only where the log cannot serve
alone (see `broker.delivery`); they are named by (subscription, seq) and move
through states (see `DeliveryState`): scheduled ones wait for `ready_at`; ready
ones are leased in (rank, seq) order, where rank is the negated priority, so
that one ascending partial index holding only ready rows serves the lookup on
both databases.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

#: Deliveries of a key still open (scheduled, ready, in flight, blocked): written as
#: the key gate's query writes it, so that SQLite sees the query implies it.
OPEN_KEYED = "ordering_key IS NOT NULL AND state IN (1, 2, 3, 6)"

# SQLite's rowid alias must be declared INTEGER to autoincrement.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("payload", sa.LargeBinary(), nullable=False),
    sa.Column("content_type", sa.String(255), nullable=False),
    sa.Column("headers", sa.Text(), nullable=True),
    sa.Column("dedup_id", sa.String(255), nullable=True),
    sa.Column("priority", sa.SmallInteger(), nullable=False),
    sa.Column("ordering_key", sa.String(255), nullable=True),
    sa.Column("published_at", sa.BigInteger(), nullable=False),
    sa.Column("deliver_at", sa.BigInteger(), nullable=False),
    sa.Column("delay_us", sa.BigInteger(), nullable=False),
    # The place in the log: given by the broker on SQLite (one writer), by an
    # identity on PostgreSQL.
    sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False),
    # PostgreSQL: the storing transaction (txid_current()), for snapshot positions.
    sa.Column("txid", sa.BigInteger(), nullable=True),
    sa.Index("ix_events_published_at", "published_at"),
    sa.Index("ix_events_seq", "seq", unique=True),
    sa.Index(
        "ix_events_txid_seq",
        "txid",
        "seq",
        sqlite_where=sa.text("txid IS NOT NULL"),
        postgresql_where=sa.text("txid IS NOT NULL"),
    ),
)

dedup = sa.Table(
    "dedup",
    metadata,
    sa.Column("dedup_id", sa.String(255), primary_key=True),
    sa.Column("event_id", sa.String(26), nullable=False),
    sa.Column("expires_at", sa.BigInteger(), nullable=False),
    sa.Index("ix_dedup_expires_at", "expires_at"),
)

subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("filters", sa.Text(), nullable=False),
    sa.Column("ack_deadline_us", sa.BigInteger(), nullable=False),
    sa.Column("max_attempts", sa.Integer(), nullable=False),
    sa.Column("min_backoff_us", sa.BigInteger(), nullable=False),
    sa.Column("max_backoff_us", sa.BigInteger(), nullable=False),
    sa.Column("max_in_flight", sa.Integer(), nullable=False),
    sa.Column("ordered", sa.Boolean(), nullable=False),
    sa.Column("retention_us", sa.BigInteger(), nullable=False),
    sa.Column("start_position", sa.SmallInteger(), nullable=False),
    sa.Column("start_time", sa.BigInteger(), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("max_age_us", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("retry_delays", sa.Text(), nullable=True),
    sa.Column("max_in_flight_per_key", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("key_header", sa.String(255), nullable=False, server_default=""),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("subscription_id", sa.Integer(), nullable=False),
    sa.Column("event_id", sa.String(26), nullable=False),
    sa.Column("state", sa.SmallInteger(), nullable=False),
    sa.Column("rank", sa.SmallInteger(), nullable=False),
    sa.Column("ordering_key", sa.String(255), nullable=True),
    sa.Column("ready_at", sa.BigInteger(), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("leased_at", sa.BigInteger(), nullable=True),
    sa.Column("lease_expires_at", sa.BigInteger(), nullable=True),
    sa.Column("consumer", sa.String(255), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("dead_reason", sa.SmallInteger(), nullable=False),
    sa.Column("history", sa.Text(), nullable=True),
    sa.Column("updated_at", sa.BigInteger(), nullable=False),
    # The event's place in the log: with the subscription, the delivery's name.
    sa.Column("seq", sa.BigInteger(), nullable=False),
    # 1 when the subscription's position had passed the event as the row was
    # written (a lease or a scan made it): an ack on the first attempt may then
    # forget the row, the position says the event was acked.
    sa.Column("via_log", sa.SmallInteger(), nullable=False, server_default="0"),
    sa.Index(
        "ix_deliveries_ready",
        "subscription_id",
        "rank",
        "seq",
        sqlite_where=sa.text("state = 2"),
        postgresql_where=sa.text("state = 2"),
    ),
    sa.Index(
        "ix_deliveries_scheduled",
        "ready_at",
        sqlite_where=sa.text("state = 1"),
        postgresql_where=sa.text("state = 1"),
    ),
    sa.Index(
        "ix_deliveries_in_flight",
        "lease_expires_at",
        sqlite_where=sa.text("state = 3"),
        postgresql_where=sa.text("state = 3"),
    ),
    # A key's open deliveries, read by the key gate on every change of the key.
    sa.Index(
        "ix_deliveries_open_key",
        "subscription_id",
        "ordering_key",
        "state",
        "seq",
        sqlite_where=sa.text(OPEN_KEYED),
        postgresql_where=sa.text(OPEN_KEYED),
    ),
    sa.Index("ix_deliveries_event_id", "event_id"),
    sa.Index("ix_deliveries_subscription_seq", "subscription_id", "seq", unique=True),
    sa.Index("ix_deliveries_subscription_state", "subscription_id", "state"),
)

cursors = sa.Table(
    "cursors",
    metadata,
    sa.Column("subscription_id", sa.Integer(), primary_key=True, autoincrement=False),
    # Where the subscription has read to. SQLite: every event up to `seq` is
    # passed. PostgreSQL: events of transactions visible in `passed`, and those
    # visible in `batch` up to (`txid`, `seq`) or published before `batch_from`.
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("txid", sa.BigInteger(), nullable=True),
    sa.Column("passed", sa.Text(), nullable=True),
    sa.Column("batch", sa.Text(), nullable=True),
    sa.Column("batch_from", sa.BigInteger(), nullable=False, server_default="0"),
    # Where it started: events before that (up to `start_seq` on SQLite, visible
    # in `start_snapshot` on PostgreSQL, published before `start_from`) are not its.
    sa.Column("start_seq", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("start_snapshot", sa.Text(), nullable=True),
    sa.Column("start_from", sa.BigInteger(), nullable=False, server_default="0"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("scopes", sa.String(100), nullable=False),
    sa.Column("patterns", sa.Text(), nullable=True),
    sa.Column("publish_rate", sa.Integer(), nullable=True),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("revoked_at", sa.BigInteger(), nullable=True),
)
