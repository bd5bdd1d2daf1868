"""Where the broker keeps its state: one interface, one implementation per database."""

from __future__ import annotations

from broker.storage.interface import Storage, StorageUnavailableError

__all__ = ["Storage", "StorageUnavailableError", "open_storage"]


def open_storage(url: str) -> Storage:
    """Open the database named by a SQLAlchemy URL (`sqlite:///…`, `postgresql+psycopg://…`)."""
    if url.startswith("sqlite"):
        from broker.storage.sqlite import SqliteStorage

        return SqliteStorage(url)
    if url.startswith("postgresql"):
        from broker.storage.postgres import PostgresStorage

        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return PostgresStorage(url)
    raise ValueError(f"database url {url!r}: expected sqlite:///PATH or postgresql+psycopg://…")
