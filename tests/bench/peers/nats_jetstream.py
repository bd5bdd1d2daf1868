"""NATS JetStream through nats-py: a file-storage stream, JetStream publish acks, pull consumers.

Each workload makes a stream of its own (deleted afterwards). Batched publish
is 100 `publish_async` calls awaited together; a consumer is a durable pull
consumer with explicit acks, on a connection of its own, fetching up to 100
messages at a time. NATS acknowledges a publish once the message is in the
stream's file, before it is flushed to disk: the server flushes every two
minutes by default (`sync_interval`), so the durability column says so.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

from tests.bench.peers.base import (
    Counter,
    Endpoints,
    Peer,
    Plan,
    Progress,
    Result,
    Unavailable,
    latency_result,
    now_ns,
    paced,
    payload,
    percentile,
    run_calls,
    stamp_of,
)

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext

CONNECT_TIMEOUT_S = 10
CONNECTIONS = 4  # publishing connections, as the broker's channels
FETCH_BATCH = 100
FETCH_TIMEOUT_S = 0.1  # a fetch that found nothing waits this long for its batch to fill
MAX_ACK_PENDING = 2_000  # as the broker's consumers' credit (4 x 500)


class NatsPeer(Peer):
    """NATS JetStream, file storage."""

    key = "nats"
    label = "NATS JS"
    durability_short = "ack before fsync"
    durability = "acks before fsync (file store; flushed every 2 min by default)"

    def __init__(self, plan: Plan, progress: Progress, endpoints: Endpoints) -> None:
        super().__init__(plan, progress, endpoints)
        self.server = endpoints.nats
        self.connections: list[NATS] = []  # the first for admin; publishers share all

    async def _connect(self) -> NATS:
        import nats

        async def quiet(error: Exception) -> None:
            """Connection errors surface as exceptions; no tracebacks on stderr."""

        connect = nats.connect(
            self.server,
            connect_timeout=3,
            allow_reconnect=False,
            max_reconnect_attempts=1,  # 0 would mean forever
            reconnect_time_wait=0.5,
            error_cb=quiet,
        )
        return await asyncio.wait_for(connect, CONNECT_TIMEOUT_S)

    async def start(self) -> None:
        """Check that nats-py imports and the server answers with JetStream on."""
        try:
            import nats  # noqa: F401
        except ImportError as error:
            raise Unavailable(f"nats-py is not installed ({error})") from error
        try:
            connection = await self._connect()
            self.connections.append(connection)
            await connection.jetstream().account_info()
        except Exception as error:
            raise Unavailable(f"no NATS JetStream at {self.server}: {error!r}") from error
        version = connection.connected_server_version
        self.durability += f"; nats-server {version.major}.{version.minor}.{version.patch}"

    async def stop(self) -> None:
        """Close every connection."""
        for connection in self.connections:
            if not connection.is_closed:
                await connection.close()
        self.connections.clear()

    async def _stream(self, workload: str) -> tuple[str, str, JetStreamContext]:
        """A new file-storage stream; its name, its subject and a JetStream context."""
        from nats.js.api import StorageType

        tag = uuid.uuid4().hex[:8]
        name = f"BENCH_{workload.upper()}_{tag}"
        subject = f"bench.{workload}.{tag}"
        js = self.connections[0].jetstream()
        await js.add_stream(name=name, subjects=[subject], storage=StorageType.FILE)
        return name, subject, js

    async def _publishers(self) -> list[JetStreamContext]:
        while len(self.connections) < CONNECTIONS:
            self.connections.append(await self._connect())
        return [c.jetstream() for c in self.connections]

    async def _batch(self, js: JetStreamContext, subject: str, data: bytes) -> None:
        futures = [await js.publish_async(subject, data) for _ in range(self.plan.batch_size)]
        await asyncio.gather(*futures)

    async def batched_publish(self) -> Result:
        """Events/s acknowledged, 100 `publish_async` awaited together per call."""
        name, subject, js = await self._stream("batch")
        try:
            publishers = await self._publishers()
            data = payload()
            calls = self.plan.events // self.plan.batch_size

            async def call(index: int) -> None:
                await self._batch(publishers[index % len(publishers)], subject, data)

            done = await run_calls(
                calls,
                self.plan.batch_callers,
                call,
                self.deadline(),
                lambda n: self.progress.update(
                    n * self.plan.batch_size, calls * self.plan.batch_size
                ),
            )
        finally:
            await js.delete_stream(name)
        return Result(
            {
                "events_per_s": done.done * self.plan.batch_size / done.elapsed_s,
                "p50_ms": percentile(done.latencies_s, 50) * 1000,
                "p99_ms": percentile(done.latencies_s, 99) * 1000,
            },
            capped=done.done < calls,
        )

    async def single_publish(self) -> Result:
        """Events/s and p50/p99 of one awaited `publish` per call."""
        name, subject, js = await self._stream("single")
        try:
            publishers = await self._publishers()
            data = payload()
            total = self.plan.single_events

            async def call(index: int) -> None:
                await publishers[index % len(publishers)].publish(subject, data, timeout=30)

            done = await run_calls(
                total,
                self.plan.single_callers,
                call,
                self.deadline(),
                lambda n: self.progress.update(n, total),
            )
        finally:
            await js.delete_stream(name)
        return Result(
            {
                "events_per_s": done.done / done.elapsed_s,
                "p50_ms": percentile(done.latencies_s, 50) * 1000,
                "p99_ms": percentile(done.latencies_s, 99) * 1000,
            },
            capped=done.done < total,
        )

    async def _consume(
        self,
        stream: str,
        subject: str,
        durable: str,
        counter: Counter,
        stop: asyncio.Event,
        batch: int = FETCH_BATCH,
        on_message: Callback | None = None,
    ) -> None:
        """One pull consumer on a connection of its own: fetch, handle, ack; until `stop`.

        Without a handler (the throughput workloads) each fetch's acks are
        flushed before they count: they have reached the server. With one (the
        latency workload) the acks go out without that extra round trip.
        """
        from nats.errors import TimeoutError as NatsTimeout

        connection = await self._connect()
        try:
            js = connection.jetstream()
            subscription = await js.pull_subscribe(subject, durable=durable, stream=stream)
            while not stop.is_set():
                try:
                    messages = await subscription.fetch(batch, timeout=FETCH_TIMEOUT_S)
                except (TimeoutError, NatsTimeout):
                    continue
                for message in messages:
                    if on_message is not None:
                        on_message(message.data)
                    await message.ack()
                if on_message is None:
                    await connection.flush()  # the acks have reached the server
                counter.add(len(messages))
        finally:
            await connection.close()

    async def _durable(self, js: JetStreamContext, stream: str, durable: str) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig

        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=durable, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=MAX_ACK_PENDING
            ),
        )

    async def end_to_end(self) -> Result:
        """Batched publish while `e2e_consumers` pull consumers share one durable consumer."""
        plan = self.plan
        name, subject, js = await self._stream("e2e")
        total = plan.events // plan.batch_size * plan.batch_size
        counter = Counter(total)
        stop = asyncio.Event()
        try:
            await self._durable(js, name, "e2e")
            consumers = [
                asyncio.create_task(self._consume(name, subject, "e2e", counter, stop))
                for _ in range(plan.e2e_consumers)
            ]
            publishers = await self._publishers()
            data = payload()
            deadline = self.deadline()
            start = time.perf_counter()

            async def call(index: int) -> None:
                await self._batch(publishers[index % len(publishers)], subject, data)

            published = await run_calls(
                total // plan.batch_size, plan.e2e_publishers, call, deadline
            )
            counter.retarget(published.done * plan.batch_size)
            reached = await counter.wait(deadline, self.progress)
            elapsed = time.perf_counter() - start
        finally:
            stop.set()
            await asyncio.gather(*consumers, return_exceptions=True)
            await js.delete_stream(name)
        return Result(
            {
                "events_per_s": min(counter.count, total) / elapsed,
                "publish_events_per_s": published.done * plan.batch_size / published.elapsed_s,
            },
            ["acks are sent without waiting for a reply (nats-py `ack`), then flushed"],
            capped=not reached or counter.target < total,
        )

    async def latency(self) -> Result:
        """Publish -> handler at a steady rate: one awaited `publish` per event, one consumer.

        The consumer fetches one message at a time: a larger fetch that finds
        the stream empty waits for its batch to fill (nats-py), which would add
        that wait to the latency.
        """
        plan = self.plan
        name, subject, js = await self._stream("latency")
        total = int(plan.latency_rate * plan.latency_s)
        latencies_ms: list[float] = []
        counter = Counter(total)
        stop = asyncio.Event()

        def handle(data: bytes) -> None:
            latencies_ms.append((now_ns() - stamp_of(data)) / 1e6)

        try:
            await self._durable(js, name, "latency")
            consumer = asyncio.create_task(
                self._consume(name, subject, "latency", counter, stop, 1, handle)
            )
            publishers = await self._publishers()
            await asyncio.sleep(0.5)

            async def send(index: int) -> None:
                js = publishers[index % len(publishers)]
                await js.publish(subject, payload(now_ns()), timeout=30)
                self.progress.update(index + 1, total)

            deadline = self.deadline()
            sent, took = await paced(plan.latency_rate, total, deadline, send)
            await counter.wait(min(deadline, time.perf_counter() + 5), self.progress)
        finally:
            stop.set()
            await asyncio.gather(consumer, return_exceptions=True)
            await js.delete_stream(name)
        result = latency_result(latencies_ms, sent, took, plan)
        result.notes.append("pull consumer fetching one message per request")
        return result

    async def fan_out(self) -> Result:
        """One stream, `fanout_subscriptions` durable pull consumers, each sees every message."""
        plan = self.plan
        name, subject, js = await self._stream("fanout")
        total = plan.fanout_events // plan.batch_size * plan.batch_size
        durables = [f"fanout{i}" for i in range(plan.fanout_subscriptions)]
        counter = Counter(total * len(durables))
        stop = asyncio.Event()
        consumers: list[asyncio.Task[None]] = []
        try:
            for durable in durables:
                await self._durable(js, name, durable)
                consumers.append(
                    asyncio.create_task(self._consume(name, subject, durable, counter, stop))
                )
            publishers = await self._publishers()
            data = payload()
            deadline = self.deadline()
            start = time.perf_counter()

            async def call(index: int) -> None:
                await self._batch(publishers[index % len(publishers)], subject, data)

            published = await run_calls(
                total // plan.batch_size, plan.batch_callers, call, deadline
            )
            counter.retarget(published.done * plan.batch_size * len(durables))
            reached = await counter.wait(deadline, self.progress)
            elapsed = time.perf_counter() - start
        finally:
            stop.set()
            await asyncio.gather(*consumers, return_exceptions=True)
            await js.delete_stream(name)
        return Result(
            {
                "publish_events_per_s": published.done * plan.batch_size / published.elapsed_s,
                "deliveries_per_s": counter.count / elapsed,
            },
            capped=not reached or published.done * plan.batch_size < total,
        )


if TYPE_CHECKING:
    from collections.abc import Callable

    Callback = Callable[[bytes], None]
