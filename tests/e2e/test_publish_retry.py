"""A publish rides out a broker restart: retried under one event id, stored once."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventbroker import Client, PublishResult
from tests.e2e.processes import BrokerProcess

WAIT_S = 20.0


class _RetrySeen(logging.Handler):
    """Sets an event when the client logs that a publish attempt failed and will be retried."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if "failed (" in message:
            self.seen.set()


@pytest.fixture
def retry_log() -> Iterator[_RetrySeen]:
    handler = _RetrySeen()
    logger = logging.getLogger("eventbroker.client")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_publish_during_a_restart_succeeds_and_is_stored_once(
    database: str, tmp_path: Path, request: pytest.FixtureRequest, retry_log: _RetrySeen
) -> None:
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    broker = BrokerProcess(url, tmp_path / "broker.log", listen=f"127.0.0.1:{_free_port()}")
    broker.start()
    try:
        with Client(broker.target) as client:
            client.create_subscription("mails", "user.*")
            broker.terminate()  # SIGTERM: the port is closed, connections refused

            outcome: list[PublishResult | BaseException] = []

            def publish() -> None:
                try:
                    outcome.append(client.publish("user.joined", {"n": 1}, timeout=WAIT_S))
                except BaseException as error:  # handed to the test thread
                    outcome.append(error)

            publisher = threading.Thread(target=publish)
            publisher.start()
            assert retry_log.seen.wait(WAIT_S), "the publish was not retried"
            broker.start()  # same port, same database
            publisher.join(WAIT_S)
            assert not publisher.is_alive()
            (result,) = outcome
            assert isinstance(result, PublishResult), result
            assert not result.duplicate and result.matched_subscriptions == 1
            assert any("Connection refused" in m or "UNAVAILABLE" in m for m in retry_log.messages)

            stats = client.get_stats("mails")
            (mails,) = stats.subscriptions
            assert (stats.events, mails.ready + mails.in_flight) == (1, 1)  # stored once
            assert client.get_event(result.event_id).dedup_id
    finally:
        broker.terminate()
