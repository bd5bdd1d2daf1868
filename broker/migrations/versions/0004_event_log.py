"""Events become a log read through a cursor per subscription; rows only where needed.

Events get their place in the log (`seq`, in publish order; on PostgreSQL also
the storing transaction, `txid`, set here to one every snapshot sees) and
delivery rows are named by (subscription, seq). Each subscription gets a
cursor at the head of the log: every event stored before the upgrade already
has its rows, so nothing is delivered twice and nothing waiting is lost.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: A transaction id every snapshot sees as committed (PostgreSQL's FrozenTransactionId).
FROZEN_TXID = 2


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    numbered = "SELECT id, row_number() OVER (ORDER BY published_at, id) AS n FROM events"
    if postgres:
        op.add_column("events", sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False))
        op.execute(f"UPDATE events SET seq = r.n FROM ({numbered}) AS r WHERE r.id = events.id")
        op.execute(
            "SELECT setval(pg_get_serial_sequence('events', 'seq'),"
            " coalesce((SELECT max(seq) FROM events), 0) + 1, false)"
        )
        op.add_column("events", sa.Column("txid", sa.BigInteger(), nullable=True))
        op.execute(f"UPDATE events SET txid = {FROZEN_TXID}")
    else:
        with op.batch_alter_table("events") as batch:
            batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
            batch.add_column(sa.Column("txid", sa.BigInteger(), nullable=True))
        op.execute(f"UPDATE events SET seq = r.n FROM ({numbered}) AS r WHERE r.id = events.id")
        with op.batch_alter_table("events") as batch:
            batch.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
    op.create_index("ix_events_seq", "events", ["seq"], unique=True)
    op.create_index(
        "ix_events_txid_seq",
        "events",
        ["txid", "seq"],
        sqlite_where=sa.text("txid IS NOT NULL"),
        postgresql_where=sa.text("txid IS NOT NULL"),
    )

    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("via_log", sa.SmallInteger(), nullable=False, server_default="0")
        )
    # Rows kept from before keep being rows to the end (via_log 0): the cursors start
    # after their events, so the log could not say what became of them.
    op.execute("UPDATE deliveries SET seq = (SELECT seq FROM events WHERE events.id = event_id)")
    op.drop_index("ix_deliveries_ready", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
    op.create_index(
        "ix_deliveries_ready",
        "deliveries",
        ["subscription_id", "rank", "seq"],
        sqlite_where=sa.text("state = 2"),
        postgresql_where=sa.text("state = 2"),
    )
    op.create_index(
        "ix_deliveries_subscription_seq", "deliveries", ["subscription_id", "seq"], unique=True
    )

    op.create_table(
        "cursors",
        sa.Column("subscription_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("txid", sa.BigInteger(), nullable=True),
        sa.Column("passed", sa.Text(), nullable=True),
        sa.Column("batch", sa.Text(), nullable=True),
        sa.Column("batch_from", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("start_seq", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("start_snapshot", sa.Text(), nullable=True),
        sa.Column("start_from", sa.BigInteger(), nullable=False, server_default="0"),
    )
    if postgres:
        op.execute(
            "INSERT INTO cursors (subscription_id, seq, txid, passed, batch, start_snapshot)"
            " SELECT id, 0, 0, s.now, s.now, s.now FROM subscriptions,"
            " (SELECT txid_current_snapshot()::text AS now) AS s"
        )
    else:
        op.execute(
            "INSERT INTO cursors (subscription_id, seq, start_seq)"
            " SELECT id, h.seq, h.seq FROM subscriptions,"
            " (SELECT coalesce(max(seq), 0) AS seq FROM events) AS h"
        )


def downgrade() -> None:
    op.drop_table("cursors")
    op.drop_index("ix_deliveries_subscription_seq", table_name="deliveries")
    op.drop_index("ix_deliveries_ready", table_name="deliveries")
    # Deliveries the log served without a row have none to go back to: the earlier
    # schema keeps only the rows there are (events a subscription had not read yet
    # are not delivered to it by the earlier release).
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("via_log")
        batch.drop_column("seq")
    op.create_index(
        "ix_deliveries_ready",
        "deliveries",
        ["subscription_id", "rank", "id"],
        sqlite_where=sa.text("state = 2"),
        postgresql_where=sa.text("state = 2"),
    )
    op.drop_index("ix_events_txid_seq", table_name="events")
    op.drop_index("ix_events_seq", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("txid")
        batch.drop_column("seq")
