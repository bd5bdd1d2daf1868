"""Run the Alembic migrations from inside the broker, on a given connection."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(conn: sa.Connection | None = None) -> Config:
    """An Alembic config pointing at the broker's migrations, bound to a connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = conn
    return config


def upgrade(conn: sa.Connection, revision: str = "head") -> None:
    """Upgrade the schema in place to a revision (the newest by default)."""
    command.upgrade(alembic_config(conn), revision)
