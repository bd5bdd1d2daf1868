"""The first schema: events, dedup ids, subscriptions and deliveries.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
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
    )
    op.create_index("ix_events_published_at", "events", ["published_at"])
    op.create_table(
        "dedup",
        sa.Column("dedup_id", sa.String(255), primary_key=True),
        sa.Column("event_id", sa.String(26), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_dedup_expires_at", "dedup", ["expires_at"])
    op.create_table(
        "subscriptions",
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
    )
    op.create_table(
        "deliveries",
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
    )
    op.create_index(
        "ix_deliveries_ready",
        "deliveries",
        ["subscription_id", "rank", "id"],
        sqlite_where=sa.text("state = 2"),
        postgresql_where=sa.text("state = 2"),
    )
    op.create_index(
        "ix_deliveries_scheduled",
        "deliveries",
        ["ready_at"],
        sqlite_where=sa.text("state = 1"),
        postgresql_where=sa.text("state = 1"),
    )
    op.create_index(
        "ix_deliveries_in_flight",
        "deliveries",
        ["lease_expires_at"],
        sqlite_where=sa.text("state = 3"),
        postgresql_where=sa.text("state = 3"),
    )
    op.create_index("ix_deliveries_event_id", "deliveries", ["event_id"])
    op.create_index("ix_deliveries_subscription_state", "deliveries", ["subscription_id", "state"])


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("subscriptions")
    op.drop_table("dedup")
    op.drop_table("events")
