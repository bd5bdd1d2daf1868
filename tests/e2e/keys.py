"""API keys stored straight in a broker's database, as `broker keys create` does."""

from __future__ import annotations

import time

from broker.api.auth import new_key
from broker.domain import Scope
from broker.storage import open_storage


def make_key(
    database_url: str,
    *scopes: Scope,
    names: tuple[str, ...] = (),
    publish_rate: int | None = None,
) -> str:
    """Store a new key in the database and return the token to send."""
    token, key = new_key("test", scopes, names, time.time_ns() // 1000, publish_rate)
    storage = open_storage(database_url)
    try:
        with storage.write() as tx:
            tx.api_key_create(key)
    finally:
        storage.close()
    return token
