"""RabbitMQ through aio-pika: durable quorum queues, publisher confirms, manual acks.

Each workload declares queues of its own (deleted afterwards): a quorum queue
where the server has them, else a classic durable queue. Messages are
persistent; a publish counts once its confirm has come back. A consumer has a
connection of its own, a prefetch equal to the broker's consumer credit, and
acks each message. Fan-out is a durable fanout exchange bound to one queue
per subscription.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
    from aio_pika import Message
    from aio_pika.abc import (
        AbstractChannel,
        AbstractConnection,
        AbstractExchange,
        AbstractIncomingMessage,
    )

CONNECTIONS = 4  # publishing connections, as the broker's channels
PREFETCH = 500  # as the broker's consumer credit


class RabbitPeer(Peer):
    """RabbitMQ, quorum queues (classic durable where quorum queues are missing)."""

    key = "rabbitmq"
    label = "RabbitMQ"
    durability_short = "confirm after fsync"

    def __init__(self, plan: Plan, progress: Progress, endpoints: Endpoints) -> None:
        super().__init__(plan, progress, endpoints)
        self.url = endpoints.amqp
        self.connections: list[AbstractConnection] = []
        self.channels: list[AbstractChannel] = []  # one confirming channel per connection
        self.queue_type = "quorum"

    async def _connect(self) -> AbstractConnection:
        import aio_pika

        return await aio_pika.connect(self.url, timeout=5)

    async def start(self) -> None:
        """Check that aio-pika imports and the server answers; find the queue type."""
        try:
            import aio_pika  # noqa: F401
        except ImportError as error:
            raise Unavailable(f"aio-pika is not installed ({error})") from error
        try:
            for _ in range(CONNECTIONS):
                connection = await self._connect()
                self.connections.append(connection)
                self.channels.append(await connection.channel(publisher_confirms=True))
        except Exception as error:
            raise Unavailable(f"no RabbitMQ at {self.url}: {error!r}") from error
        probe = f"bench-probe-{uuid.uuid4().hex[:8]}"
        channel = await self.connections[0].channel()
        try:
            queue = await channel.declare_queue(
                probe, durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queue.delete(if_unused=False, if_empty=False)
        except Exception:
            self.queue_type = "classic"
            self.durability_short = "confirm after write"
        finally:
            if not channel.is_closed:
                await channel.close()
        transport = self.connections[0].transport
        server = transport.connection.server_properties if transport is not None else {}
        version = server.get("version", "?")
        self.durability = (
            "confirm after fsync (quorum queue, persistent messages)"
            if self.queue_type == "quorum"
            else "confirm after write to disk (classic durable queue, persistent messages)"
        ) + f"; RabbitMQ {version!s}"

    async def stop(self) -> None:
        """Close every connection."""
        for connection in self.connections:
            if not connection.is_closed:
                await connection.close()
        self.connections.clear()
        self.channels.clear()

    async def _queue(self, name: str) -> None:
        arguments: dict[str, Any] = (
            {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}
        )
        await self.channels[0].declare_queue(name, durable=True, arguments=arguments)

    async def _delete_queues(self, names: list[str]) -> None:
        channel = await self.connections[0].channel()
        try:
            for name in names:
                await channel.queue_delete(name)
        finally:
            await channel.close()

    @staticmethod
    def _message(data: bytes) -> Message:
        """A persistent JSON message."""
        import aio_pika

        return aio_pika.Message(
            data, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json"
        )

    async def _publish(
        self, channel: AbstractChannel, exchange: str, key: str, data: bytes
    ) -> None:
        """One message, confirmed."""
        target = await self._exchange(channel, exchange)
        await target.publish(self._message(data), routing_key=key)

    async def _exchange(self, channel: AbstractChannel, name: str) -> AbstractExchange:
        if not name:
            return channel.default_exchange
        return await channel.get_exchange(name, ensure=False)

    async def _batch(self, channel: AbstractChannel, exchange: str, key: str, data: bytes) -> None:
        """`batch_size` messages published together; returns once all are confirmed."""
        target = await self._exchange(channel, exchange)
        await asyncio.gather(
            *(
                target.publish(self._message(data), routing_key=key)
                for _ in range(self.plan.batch_size)
            )
        )

    async def batched_publish(self) -> Result:
        """Events/s confirmed, 100 publishes awaited together per call."""
        queue = f"bench-batch-{uuid.uuid4().hex[:8]}"
        await self._queue(queue)
        calls = self.plan.events // self.plan.batch_size
        data = payload()
        try:

            async def call(index: int) -> None:
                await self._batch(self.channels[index % len(self.channels)], "", queue, data)

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
            await self._delete_queues([queue])
        return Result(
            {
                "events_per_s": done.done * self.plan.batch_size / done.elapsed_s,
                "p50_ms": percentile(done.latencies_s, 50) * 1000,
                "p99_ms": percentile(done.latencies_s, 99) * 1000,
            },
            capped=done.done < calls,
        )

    async def single_publish(self) -> Result:
        """Events/s and p50/p99 of one publish per call, each awaiting its confirm."""
        queue = f"bench-single-{uuid.uuid4().hex[:8]}"
        await self._queue(queue)
        total = self.plan.single_events
        data = payload()
        try:

            async def call(index: int) -> None:
                await self._publish(self.channels[index % len(self.channels)], "", queue, data)

            done = await run_calls(
                total,
                self.plan.single_callers,
                call,
                self.deadline(),
                lambda n: self.progress.update(n, total),
            )
        finally:
            await self._delete_queues([queue])
        return Result(
            {
                "events_per_s": done.done / done.elapsed_s,
                "p50_ms": percentile(done.latencies_s, 50) * 1000,
                "p99_ms": percentile(done.latencies_s, 99) * 1000,
            },
            capped=done.done < total,
        )

    async def _consumer(
        self, queue: str, counter: Counter, on_body: Callable[[bytes], None] | None = None
    ) -> AbstractConnection:
        """A consumer on a connection of its own, acking each message; its connection."""
        connection = await self._connect()
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        source = await channel.get_queue(queue, ensure=False)

        async def on_message(message: AbstractIncomingMessage) -> None:
            if on_body is not None:
                on_body(message.body)
            await message.ack()
            counter.add(1)

        await source.consume(on_message)
        return connection

    async def end_to_end(self) -> Result:
        """Batched publish while `e2e_consumers` consumers share one queue."""
        plan = self.plan
        queue = f"bench-e2e-{uuid.uuid4().hex[:8]}"
        await self._queue(queue)
        total = plan.events // plan.batch_size * plan.batch_size
        counter = Counter(total)
        consumers: list[AbstractConnection] = []
        data = payload()
        try:
            for _ in range(plan.e2e_consumers):
                consumers.append(await self._consumer(queue, counter))
            deadline = self.deadline()
            start = time.perf_counter()

            async def call(index: int) -> None:
                await self._batch(self.channels[index % len(self.channels)], "", queue, data)

            published = await run_calls(
                total // plan.batch_size, plan.e2e_publishers, call, deadline
            )
            counter.retarget(published.done * plan.batch_size)
            reached = await counter.wait(deadline, self.progress)
            elapsed = time.perf_counter() - start
        finally:
            for connection in consumers:
                await connection.close()
            await self._delete_queues([queue])
        return Result(
            {
                "events_per_s": min(counter.count, total) / elapsed,
                "publish_events_per_s": published.done * plan.batch_size / published.elapsed_s,
            },
            ["acks are sent without a reply (AMQP basic.ack)"],
            capped=not reached or counter.target < total,
        )

    async def latency(self) -> Result:
        """Publish -> handler at a steady rate: one confirmed publish per event, one consumer."""
        plan = self.plan
        queue = f"bench-latency-{uuid.uuid4().hex[:8]}"
        await self._queue(queue)
        total = int(plan.latency_rate * plan.latency_s)
        latencies_ms: list[float] = []
        counter = Counter(total)

        def handle(data: bytes) -> None:
            latencies_ms.append((now_ns() - stamp_of(data)) / 1e6)

        consumer = await self._consumer(queue, counter, handle)
        try:
            await asyncio.sleep(0.5)

            async def send(index: int) -> None:
                channel = self.channels[index % len(self.channels)]
                await self._publish(channel, "", queue, payload(now_ns()))
                self.progress.update(index + 1, total)

            deadline = self.deadline()
            sent, took = await paced(plan.latency_rate, total, deadline, send)
            await counter.wait(min(deadline, time.perf_counter() + 5), self.progress)
        finally:
            await consumer.close()
            await self._delete_queues([queue])
        return latency_result(latencies_ms, sent, took, plan)

    async def fan_out(self) -> Result:
        """A fanout exchange bound to `fanout_subscriptions` queues, one consumer on each."""
        import aio_pika

        plan = self.plan
        tag = uuid.uuid4().hex[:8]
        exchange = f"bench-fanout-{tag}"
        queues = [f"bench-fanout-{tag}-{i}" for i in range(plan.fanout_subscriptions)]
        declared = await self.channels[0].declare_exchange(
            exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        total = plan.fanout_events // plan.batch_size * plan.batch_size
        counter = Counter(total * len(queues))
        consumers: list[AbstractConnection] = []
        data = payload()
        try:
            for queue in queues:
                await self._queue(queue)
                source = await self.channels[0].get_queue(queue, ensure=False)
                await source.bind(declared)
                consumers.append(await self._consumer(queue, counter))
            deadline = self.deadline()
            start = time.perf_counter()

            async def call(index: int) -> None:
                await self._batch(self.channels[index % len(self.channels)], exchange, "", data)

            published = await run_calls(
                total // plan.batch_size, plan.batch_callers, call, deadline
            )
            counter.retarget(published.done * plan.batch_size * len(queues))
            reached = await counter.wait(deadline, self.progress)
            elapsed = time.perf_counter() - start
        finally:
            for connection in consumers:
                await connection.close()
            await self._delete_queues(queues)
            await declared.delete()
        return Result(
            {
                "publish_events_per_s": published.done * plan.batch_size / published.elapsed_s,
                "deliveries_per_s": counter.count / elapsed,
            },
            capped=not reached or published.done * plan.batch_size < total,
        )
