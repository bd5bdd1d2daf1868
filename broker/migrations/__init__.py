"""Alembic migrations of the broker schema."""
