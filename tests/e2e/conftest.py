"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.config import Settings
from tests.e2e.streams import StreamReader


@pytest.fixture
def broker_settings(any_database_settings: Settings) -> Settings:
    """Every end-to-end test with a broker runs on SQLite and on PostgreSQL."""
    return any_database_settings


@pytest.fixture
def readers() -> Iterator[list[StreamReader]]:
    """Stream readers a test opened; each is closed (the consumer leaves) afterwards."""
    opened: list[StreamReader] = []
    yield opened
    for reader in opened:
        reader.close()
