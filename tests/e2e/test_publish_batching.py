"""Publishes joined at the client, against a real broker on SQLite and on PostgreSQL.

Every call the clients make is counted on the wire by a client interceptor put on
their channels, so that "joined" and "at once" are read off the calls made, never
off timings. The asyncio tests start their publishes in one `gather`: the first
finds no call in flight and goes alone; the others are queued before that call is
even sent, so the next call carries all of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from broker.config import Settings
from broker.domain import Scope
from eventbroker import (
    AsyncClient,
    Client,
    InvalidArgument,
    PermissionDenied,
    PublishBatching,
    PublishResult,
)
from eventbroker._config import ConnectionConfig
from eventbroker.v1 import broker_pb2 as pb
from tests.e2e.keys import make_key
from tests.e2e.processes import BrokerProcess

WAIT_S = 30.0
#: Nested deeper than the broker takes (32 levels): only the broker sees it.
TOO_DEEP: Any = json.loads("[" * 40 + "]" * 40)


@dataclass
class Calls:
    """Each publish call the clients made: the RPC and how many events it carried."""

    made: list[tuple[str, int]] = field(default_factory=list)

    def record(self, method: str | bytes, request: Any) -> None:
        name = (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]
        if isinstance(request, pb.PublishRequest):
            self.made.append((name, 1))
        elif isinstance(request, pb.BatchPublishRequest):
            self.made.append((name, len(request.events)))

    def of(self, rpc: str) -> list[int]:
        """The event counts of every call of one RPC."""
        return [events for name, events in self.made if name == rpc]


class _AioCounter(aio.UnaryUnaryClientInterceptor):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def intercept_unary_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        self.calls.record(details.method, request)
        return await continuation(details, request)


class _SyncCounter(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        self.calls.record(details.method, request)
        return continuation(details, request)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Counts the publish calls of every client made in the test."""
    counted = Calls()

    def aio_channel(config: ConnectionConfig) -> aio.Channel:
        return aio.insecure_channel(
            config.target, options=config.channel_options(), interceptors=[_AioCounter(counted)]
        )

    def sync_channel(config: ConnectionConfig) -> grpc.Channel:
        channel = grpc.insecure_channel(config.target, options=config.channel_options())
        return grpc.intercept_channel(channel, _SyncCounter(counted))

    monkeypatch.setattr(ConnectionConfig, "aio_channel", aio_channel)
    monkeypatch.setattr(ConnectionConfig, "sync_channel", sync_channel)
    return counted


@pytest.fixture
def broker_settings(any_database_settings: Settings) -> Settings:
    """Keys are read on every call, so a key made by a test counts at once."""
    return dataclasses.replace(any_database_settings, api_key_cache_s=0.0)


async def _together(
    client: AsyncClient, events: list[tuple[str, Any]]
) -> list[PublishResult | BaseException]:
    """Publish the events at once, from one task each; each one's result or error."""
    return await asyncio.gather(
        *(client.publish(name, data) for name, data in events), return_exceptions=True
    )


def _stored_events(target: str) -> int:
    with Client(target, publish_batching=False) as client:
        return client.get_stats().events


# -- joining, and not waiting --------------------------------------------------------


def test_publishes_made_while_one_is_in_flight_go_as_one_batch(
    broker_target: str, calls: Calls
) -> None:
    async def main() -> list[PublishResult | BaseException]:
        async with AsyncClient(broker_target) as client:
            return await _together(client, [(f"order.n{i}", {"n": i}) for i in range(10)])

    results = asyncio.run(main())
    assert calls.made == [("Publish", 1), ("BatchPublish", 9)]
    assert all(isinstance(r, PublishResult) and not r.duplicate for r in results)
    ids = {r.event_id for r in results if isinstance(r, PublishResult)}
    assert len(ids) == 10
    assert _stored_events(broker_target) == 10
    with Client(broker_target) as client:  # each under its own id, in its own order
        for index, result in enumerate(results):
            assert isinstance(result, PublishResult)
            info = client.get_event(result.event_id)
            assert (info.name, info.data) == (f"order.n{index}", {"n": index})
            assert info.dedup_id


def test_blocking_publishes_from_many_threads_share_calls(broker_target: str, calls: Calls) -> None:
    threads_count, each = 8, 25
    outcomes: list[PublishResult | BaseException] = []
    with Client(broker_target) as client:

        def publisher(thread: int) -> None:
            for index in range(each):
                try:
                    outcomes.append(client.publish("order.t", {"t": thread, "i": index}))
                except BaseException as error:  # handed to the test thread
                    outcomes.append(error)

        threads = [threading.Thread(target=publisher, args=(t,)) for t in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
    total = threads_count * each
    assert len(outcomes) == total and all(isinstance(o, PublishResult) for o in outcomes)
    assert sum(events for _, events in calls.made) == total  # each sent once
    assert calls.of("BatchPublish") and max(calls.of("BatchPublish")) > 1
    assert len(calls.made) < total
    assert _stored_events(broker_target) == total


def test_a_lone_publish_goes_out_at_once_in_a_call_of_its_own(
    broker_target: str, calls: Calls
) -> None:
    async def main() -> None:
        async with AsyncClient(broker_target) as client:
            for index in range(5):
                await client.publish("order.alone", {"i": index})

    asyncio.run(main())
    with Client(broker_target) as client:
        for index in range(5):
            client.publish("order.alone", {"i": index})
    assert calls.made == [("Publish", 1)] * 10


def test_with_batching_off_each_publish_is_a_call(broker_target: str, calls: Calls) -> None:
    async def main() -> list[PublishResult | BaseException]:
        async with AsyncClient(broker_target, publish_batching=False) as client:
            return await _together(client, [(f"order.n{i}", None) for i in range(10)])

    assert all(isinstance(r, PublishResult) for r in asyncio.run(main()))
    with Client(broker_target, publish_batching=PublishBatching(enabled=False)) as client:
        threads = [threading.Thread(target=client.publish, args=(f"order.s{i}",)) for i in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
    assert calls.made == [("Publish", 1)] * 15
    assert _stored_events(broker_target) == 15


# -- one bad event ------------------------------------------------------------------------


def test_an_event_only_the_broker_refuses_fails_only_its_caller(
    broker_target: str, calls: Calls
) -> None:
    events: list[tuple[str, Any]] = [("order.first", None)]
    events += [(f"order.n{i}", {"n": i}) for i in range(10)]
    events[5] = ("order.deep", TOO_DEEP)  # the fifth of the joined ten

    async def main() -> list[PublishResult | BaseException]:
        async with AsyncClient(broker_target) as client:
            return await _together(client, events)

    results = asyncio.run(main())
    refused = results.pop(5)
    assert isinstance(refused, InvalidArgument)
    assert [field for field, _ in refused.field_violations] == ["event.binary_data"]
    assert all(isinstance(r, PublishResult) for r in results)
    # refused whole naming events[4]; then the other nine together, and it alone
    assert calls.made == [("Publish", 1), ("BatchPublish", 10), ("BatchPublish", 9), ("Publish", 1)]
    assert _stored_events(broker_target) == 10


def test_an_event_the_client_sees_is_bad_is_not_joined(broker_target: str, calls: Calls) -> None:
    events: list[tuple[str, Any]] = [("order.first", None)]
    events += [("order.a", 1), ("order.b", 2), ("bad name!", 3), ("order.c", 4), ("order.d", 5)]

    async def main() -> list[PublishResult | BaseException]:
        async with AsyncClient(broker_target) as client:
            return await _together(client, events)

    results = asyncio.run(main())
    refused = results.pop(3)
    assert isinstance(refused, InvalidArgument)
    assert [field for field, _ in refused.field_violations] == ["event.name"]
    assert all(isinstance(r, PublishResult) for r in results)
    # no batch was refused: the bad event went alone, between the two around it
    assert calls.made == [("Publish", 1), ("BatchPublish", 2), ("Publish", 1), ("BatchPublish", 2)]
    assert _stored_events(broker_target) == 5


def test_a_name_the_key_may_not_use_fails_only_its_caller(
    broker_settings: Settings, broker_target: str, calls: Calls
) -> None:
    url = broker_settings.database_url
    orders_only = make_key(url, Scope.PUBLISH, names=("order.>",))
    admin = make_key(url, Scope.ADMIN)
    events: list[tuple[str, Any]] = [("order.first", None)]
    events += [("order.a", 1), ("order.b", 2), ("user.joined", 3), ("order.c", 4)]

    async def main() -> list[PublishResult | BaseException]:
        async with AsyncClient(broker_target, api_key=orders_only) as client:
            return await _together(client, events)

    results = asyncio.run(main())
    refused = results.pop(3)
    assert isinstance(refused, PermissionDenied)
    assert refused.reason == "NAME_NOT_ALLOWED"
    assert all(isinstance(r, PublishResult) for r in results)
    # refused whole, naming no event: then each alone
    assert calls.made == [("Publish", 1), ("BatchPublish", 4)] + [("Publish", 1)] * 4
    with Client(broker_target, api_key=admin) as client:
        assert client.get_stats().events == 4


# -- order ----------------------------------------------------------------------------------


def test_a_callers_own_publishes_are_stored_in_its_order(broker_target: str) -> None:
    callers, each = 8, 15
    with Client(broker_target) as client:
        client.create_subscription("order-check", "seq.*")

    async def caller(client: AsyncClient, index: int) -> None:
        for seq in range(each):
            await client.publish(f"seq.c{index}", {"seq": seq})

    async def main() -> None:
        async with AsyncClient(broker_target) as client:
            await asyncio.gather(*(caller(client, i) for i in range(callers)))

    asyncio.run(main())
    seen: dict[str, list[int]] = {f"seq.c{i}": [] for i in range(callers)}
    with Client(broker_target) as client:
        received = 0
        stream = client.subscribe("order-check", max_outstanding=callers * each)
        for batch in stream:
            for message in batch:
                seen[message.name].append(message.data["seq"])
            received += len(batch)
            client.ack(batch)
            if received >= callers * each:
                break
        stream.close()
    assert seen == {name: list(range(each)) for name in seen}


# -- a broker restart ---------------------------------------------------------------------


class _RetrySeen(logging.Handler):
    """Sets an event when the client logs that a publish failed and will be retried."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "failed (" in record.getMessage():
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
def test_batched_publishes_through_a_broker_kill_and_restart_are_stored_once(
    database: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    retry_log: _RetrySeen,
    calls: Calls,
) -> None:
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    broker = BrokerProcess(url, tmp_path / "broker.log", listen=f"127.0.0.1:{_free_port()}")
    broker.start()
    callers, each, kill_after = 32, 40, 300
    total = callers * each
    results: list[PublishResult] = []

    async def main() -> None:
        some_done = asyncio.Event()
        async with AsyncClient(broker.target) as client:
            await client.create_subscription("restart", "restart.*")

            async def caller(index: int) -> None:
                for seq in range(each):
                    results.append(await client.publish(f"restart.c{index}", {"seq": seq}))
                    if len(results) >= kill_after:
                        some_done.set()

            publishing = asyncio.gather(*(caller(i) for i in range(callers)))
            await asyncio.wait_for(some_done.wait(), WAIT_S)
            await asyncio.to_thread(broker.kill)  # SIGKILL: calls on their way are cut off
            assert await asyncio.to_thread(retry_log.seen.wait, WAIT_S), "nothing was retried"
            await asyncio.to_thread(broker.start)  # the same port, the same database
            await asyncio.wait_for(publishing, WAIT_S * 2)

    try:
        asyncio.run(main())
        assert len(results) == total  # every publish returned OK
        assert len({r.event_id for r in results}) == total
        assert max(calls.of("BatchPublish")) > 1  # the publishes were joined
        with Client(broker.target) as client:
            stats = client.get_stats("restart")
            (restart,) = stats.subscriptions
            assert stats.events == total  # each stored once, not twice
            assert restart.ready == total
    finally:
        broker.terminate()
