"""A burst of Subscribe streams: each one attaches or is refused by name, none is dropped.

Thousands of consumers that start together (a deploy, a reconnect after a broker
restart) open their streams within a fraction of a second, faster than the
broker's event loop takes new calls in. Every stream must then either attach or
end with RESOURCE_EXHAUSTED naming the limit it met; a bare CANCELLED, which a
consumer cannot tell from its own cancellation, must never happen.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker.config import Settings
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.conftest import TEST_SETTINGS, sqlite_url

BURST_STREAMS = 2_000
CONNECTIONS = 4
#: Fewer than the burst, so that both outcomes, attached and refused, occur.
MAX_STREAMS = 1_500
SUBSCRIPTION = "burst"
SETTLE_S = 60.0
POLL_S = 0.1


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    """The limits are the gRPC server's and the servicer's, not the database's: SQLite only."""
    return dataclasses.replace(
        TEST_SETTINGS, database_url=sqlite_url(tmp_path), max_streams=MAX_STREAMS
    )


@pytest.fixture
def connections(broker_target: str) -> Iterator[list[pb_grpc.EventBrokerServiceStub]]:
    """Stubs on CONNECTIONS channels that share no connection, plus one for admin calls last."""
    # Without a local subchannel pool, channels to one target share one connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    with ExitStack() as stack:
        channels = [
            stack.enter_context(grpc.insecure_channel(broker_target, options=options))
            for _ in range(CONNECTIONS + 1)
        ]
        yield [pb_grpc.EventBrokerServiceStub(channel) for channel in channels]


class Burst:
    """Streams opened at once; how those that ended, ended (recorded as they end)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.ended: collections.Counter[str] = collections.Counter()
        self.details: dict[str, set[str]] = collections.defaultdict(set)
        self._lock = threading.Lock()

    def open(self, stub: pb_grpc.EventBrokerServiceStub, index: int) -> None:
        """Open one stream without waiting for it; its end is recorded by a callback."""
        request = pb.SubscribeRequest(subscription=SUBSCRIPTION, consumer_name=f"burst-{index}")
        call: Any = stub.Subscribe(request)
        call.add_done_callback(self._record)
        self.calls.append(call)

    def _record(self, call: Any) -> None:
        with self._lock:
            self.ended[call.code().name] += 1
            self.details[call.code().name].add(call.details() or "")

    def outcomes(self) -> tuple[dict[str, int], dict[str, set[str]]]:
        """A copy of how many streams ended with each code, and with which details."""
        with self._lock:
            return dict(self.ended), {code: set(d) for code, d in self.details.items()}

    def ended_count(self) -> int:
        """How many streams have ended so far."""
        with self._lock:
            return sum(self.ended.values())

    def close(self) -> None:
        """Cancel the streams still open (the consumers leave)."""
        for call in self.calls:
            call.cancel()


def _consumers(admin: pb_grpc.EventBrokerServiceStub) -> int:
    stats = admin.GetStats(pb.GetStatsRequest(subscription=SUBSCRIPTION), timeout=SETTLE_S)
    return sum(s.consumers for s in stats.subscriptions)


def _create_subscription(admin: pb_grpc.EventBrokerServiceStub) -> None:
    admin.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(name=SUBSCRIPTION, filter=["burst.x"])
        ),
        timeout=SETTLE_S,
    )


def _settle(
    burst: Burst, admin: pb_grpc.EventBrokerServiceStub, streams: int
) -> tuple[int, dict[str, int], dict[str, set[str]]]:
    """Wait until each of `streams` is counted as a consumer or has ended; the counts then."""
    deadline = time.monotonic() + SETTLE_S
    consumers = _consumers(admin)
    while consumers + burst.ended_count() < streams and time.monotonic() < deadline:
        time.sleep(POLL_S)  # the poll interval of a condition, bounded by the deadline
        consumers = _consumers(admin)
    return consumers, *burst.outcomes()


def test_a_burst_of_streams_attaches_or_is_refused_naming_the_limit(
    connections: list[pb_grpc.EventBrokerServiceStub],
) -> None:
    *stubs, admin = connections
    _create_subscription(admin)
    burst = Burst()
    try:
        for index in range(BURST_STREAMS):
            burst.open(stubs[index % CONNECTIONS], index)
        consumers, ended, details = _settle(burst, admin, BURST_STREAMS)
    finally:
        burst.close()
    assert set(ended) <= {"RESOURCE_EXHAUSTED"}, f"streams ended unrefused: {ended} {details}"
    assert consumers == MAX_STREAMS, f"{consumers} attached, {ended}"
    assert ended["RESOURCE_EXHAUSTED"] == BURST_STREAMS - MAX_STREAMS
    (refusal,) = details["RESOURCE_EXHAUSTED"]
    assert f"{MAX_STREAMS} Subscribe streams open" in refusal and "--max-streams" in refusal


def test_streams_over_the_connection_limit_are_refused_and_unary_calls_still_pass(
    connections: list[pb_grpc.EventBrokerServiceStub], broker_settings: Settings
) -> None:
    """Over one connection: the servicer's limit, not HTTP/2's, is the one a stream meets."""
    stub = connections[0]
    limit = broker_settings.max_streams_per_connection
    over = 50
    _create_subscription(stub)
    burst = Burst()
    try:
        for index in range(limit + over):
            burst.open(stub, index)
        # GetStats goes over the same connection as the streams.
        consumers, ended, details = _settle(burst, stub, limit + over)
    finally:
        burst.close()
    assert ended == {"RESOURCE_EXHAUSTED": over}, f"{ended} {details}"
    assert consumers == limit
    (refusal,) = details["RESOURCE_EXHAUSTED"]
    assert f"{limit} Subscribe streams open" in refusal
    assert "--max-streams-per-connection" in refusal
