"""Subscriptions get a maximum event age and an explicit retry table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(
            sa.Column("max_age_us", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("retry_delays", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("retry_delays")
        batch.drop_column("max_age_us")
