"""Fixtures: a real broker on a random port, real SQLite files, real PostgreSQL databases.

PostgreSQL comes from BROKER_TEST_DATABASE_URL (a server URL; each test gets a
database of its own, created and dropped around it). Without the variable,
PostgreSQL tests skip with the reason; with BROKER_REQUIRE_POSTGRES=1 (CI) an
unreachable server fails them instead.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from broker.app import BrokerApp
from broker.config import Settings
from broker.storage import Storage, open_storage
from broker.storage.memory import MemoryStorage
from eventbroker.v1 import broker_pb2_grpc as pb_grpc

PG_ENV = "BROKER_TEST_DATABASE_URL"
REQUIRE_PG_ENV = "BROKER_REQUIRE_POSTGRES"

#: Fast timers so tests about expiry and scheduling finish in a second or two.
TEST_SETTINGS = Settings(
    listen="127.0.0.1:0",
    http_listen="127.0.0.1:0",
    poll_interval_s=0.2,
    reaper_interval_s=0.05,
    maintenance_interval_s=0.2,
    shutdown_grace_s=2.0,
)


class BrokerThread:
    """A broker running on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = BrokerApp(settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def target(self) -> str:
        """HOST:PORT to dial."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> BrokerThread:
        """Start the loop and the broker; return once it listens."""
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.app.start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        """Shut the broker down gracefully and end the thread."""
        asyncio.run_coroutine_threadsafe(self.app.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def sqlite_url(directory: Path) -> str:
    """A SQLite URL for a fresh file in a directory."""
    return f"sqlite:///{directory / 'broker.db'}"


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    """Settings for a broker on a fresh SQLite file and a random port."""
    return replace(TEST_SETTINGS, database_url=sqlite_url(tmp_path))


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for a broker on SQLite, then on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
    else:
        url = request.getfixturevalue("postgres_url")
    return replace(TEST_SETTINGS, database_url=url)


@pytest.fixture
def broker_server(broker_settings: Settings) -> Iterator[BrokerThread]:
    """A running broker (SQLite) on a random port."""
    server = BrokerThread(broker_settings).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def broker_target(broker_server: BrokerThread) -> str:
    """HOST:PORT of a running broker."""
    return broker_server.target


@pytest.fixture
def stub(broker_target: str) -> Iterator[pb_grpc.EventBrokerServiceStub]:
    """A raw generated stub connected to the broker."""
    with grpc.insecure_channel(broker_target) as channel:
        yield pb_grpc.EventBrokerServiceStub(channel)


# -- PostgreSQL ------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    """A reachable PostgreSQL server to make test databases on."""

    url: sa.URL

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"broker_test_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        """Drop a database made by create_database."""
        name = sa.make_url(url).database
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """The PostgreSQL server of BROKER_TEST_DATABASE_URL, or a skip (a failure in CI)."""
    raw = os.environ.get(PG_ENV)
    required = os.environ.get(REQUIRE_PG_ENV) == "1"
    if not raw:
        if required:
            pytest.fail(f"{REQUIRE_PG_ENV}=1 but {PG_ENV} is not set")
        pytest.skip(
            f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1/postgres)"
        )
    if raw.startswith("postgresql://"):
        raw = "postgresql+psycopg://" + raw.removeprefix("postgresql://")
    url = sa.make_url(raw)
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except sa.exc.OperationalError as error:
        message = f"PostgreSQL at {url.render_as_string()} is unreachable: {error.orig}"
        if required:
            pytest.fail(message)
        pytest.skip(message)
    return PostgresServer(url)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh PostgreSQL database for one test."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A migrated, empty storage: in memory, on SQLite, on PostgreSQL."""
    store: Storage
    if request.param == "memory":
        store = MemoryStorage()
    elif request.param == "sqlite":
        store = open_storage(sqlite_url(tmp_path))
    else:
        store = open_storage(request.getfixturevalue("postgres_url"))
    store.migrate()
    try:
        yield store
    finally:
        store.close()
