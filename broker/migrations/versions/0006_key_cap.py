"""Subscriptions get a cap on deliveries in flight per key, and a header to take the key from.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(
            sa.Column("max_in_flight_per_key", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("key_header", sa.String(255), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("key_header")
        batch.drop_column("max_in_flight_per_key")
