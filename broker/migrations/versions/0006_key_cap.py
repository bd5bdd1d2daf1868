"""Subscriptions get a cap on deliveries in flight per key, and a header to take the key from.

A key's open deliveries get an index of their own: the key gate reads them on
every change of the key.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


#: A key's open deliveries (as `broker.storage.schema.OPEN_KEYED`, kept here as it was).
_OPEN_KEYED = "ordering_key IS NOT NULL AND state IN (1, 2, 3, 6)"


def upgrade() -> None:
    op.create_index(
        "ix_deliveries_open_key",
        "deliveries",
        ["subscription_id", "ordering_key", "state", "seq"],
        sqlite_where=sa.text(_OPEN_KEYED),
        postgresql_where=sa.text(_OPEN_KEYED),
    )
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(
            sa.Column("max_in_flight_per_key", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("key_header", sa.String(255), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("key_header")
        batch.drop_column("max_in_flight_per_key")
    op.drop_index("ix_deliveries_open_key", table_name="deliveries")
