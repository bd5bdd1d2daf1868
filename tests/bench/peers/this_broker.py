"""The broker under test: `broker serve` in a child process, driven with the generated stubs.

One peer per database: SQLite (a fresh file, WAL with synchronous=FULL) or
PostgreSQL (a fresh database, created and dropped here). The load comes from
this process over several channels, each with its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import psycopg
from google.protobuf import duration_pb2
from grpc import aio

from eventbroker import AsyncClient, PublishBatching
from eventbroker._settle import FLUSH_INTERVAL_S as ACK_FLUSH_S
from eventbroker._settle import MAX_PENDING as ACK_BATCH_MAX
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.bench.peers.base import (
    Counter,
    Endpoints,
    NotApplicable,
    Peer,
    Plan,
    Progress,
    Result,
    Unavailable,
    cpu_seconds,
    latency_result,
    now_ns,
    paced,
    payload,
    percentile,
    run_calls,
    stamp_of,
)
from tests.e2e.processes import BrokerProcess
from tests.e2e.test_supervisor import Supervised

if TYPE_CHECKING:
    Stub = pb_grpc.EventBrokerServiceAsyncStub
    Callback = Callable[[bytes], None]

CHANNELS = 8
ACK_NOTE = (
    f"acks sent as eventbroker.Consumer sends them: up to {ACK_BATCH_MAX} ids per Ack,"
    f" at most {ACK_FLUSH_S * 1000:g} ms after the first"
)
CONSUMER_CREDIT = 500
IDLE_SUBSCRIPTIONS = 100
IDLE_OPEN_PER_S = 500  # new streams a second, all child processes together
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
#: Of the slow-consumer run, the first part that fills the streams' credit.
SLOW_SETTLE_FRACTION = 0.15


def _event(name: str, data: bytes) -> pb.Event:
    return pb.Event(name=name, binary_data=data, content_type="application/json")


def rss_kib(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


class Channels:
    """Several channels to one broker, each with its own connection, and a stub on each."""

    def __init__(self, target: str, count: int = CHANNELS) -> None:
        self.channels = [
            aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(count)
        ]
        self.stubs: list[Stub] = [pb_grpc.EventBrokerServiceStub(c) for c in self.channels]

    def __getitem__(self, index: int) -> Stub:
        return self.stubs[index % len(self.stubs)]

    async def close(self) -> None:
        """Close every channel."""
        await asyncio.gather(*(c.close() for c in self.channels))


async def _create_subscription(stub: Stub, name: str, pattern: str) -> None:
    await stub.CreateSubscription(
        pb.CreateSubscriptionRequest(subscription=pb.Subscription(name=name, filter=[pattern])),
        timeout=30,
    )


async def _delete_subscription(stub: Stub, name: str) -> None:
    try:
        await stub.DeleteSubscription(pb.DeleteSubscriptionRequest(name=name), timeout=30)
    except grpc.RpcError as error:
        print(f"  could not delete subscription {name}: {error}", file=sys.stderr)


class _Consumers:
    """Subscribe streams that hand each delivery's data to a handler and ack in batches.

    Acks are collected as the client library's consumer collects them
    (`eventbroker.Consumer`'s settler): sent once `ACK_BATCH_MAX` ids wait or
    `ACK_FLUSH_S` after the first, as tasks, so the stream is read on while an
    ack is on its way; `counter` counts deliveries once their ack has returned.
    """

    def __init__(self, counter: Counter, on_delivery: Callback | None = None) -> None:
        self.counter = counter
        self.on_delivery = on_delivery
        self.calls: list[aio.UnaryStreamCall[pb.SubscribeRequest, pb.SubscribeResponse]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.acks: set[asyncio.Task[None]] = set()
        self.batches: list[_AckBatch] = []
        self.errors: list[str] = []

    def start(self, stub: Stub, subscription: str) -> None:
        """One more consumer of `subscription`."""
        call = stub.Subscribe(
            pb.SubscribeRequest(
                subscription=subscription,
                max_outstanding=CONSUMER_CREDIT,
                max_batch_size=100,
                json_as_binary=True,
            )
        )
        self.calls.append(call)
        batch = _AckBatch(partial(self._send_acks, stub))
        self.batches.append(batch)
        self.tasks.append(asyncio.create_task(self._read(call, batch)))

    async def _read(
        self,
        call: aio.UnaryStreamCall[pb.SubscribeRequest, pb.SubscribeResponse],
        batch: _AckBatch,
    ) -> None:
        try:
            async for response in call:
                if self.on_delivery is not None:
                    for delivery in response.deliveries:
                        self.on_delivery(delivery.binary_data)
                batch.add([d.ack_id for d in response.deliveries])
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.errors.append(f"stream ended: {error.code().name} {error.details()}")

    def _send_acks(self, stub: Stub, ack_ids: list[str]) -> None:
        task = asyncio.create_task(self._ack(stub, ack_ids))
        self.acks.add(task)
        task.add_done_callback(self.acks.discard)

    async def _ack(self, stub: Stub, ack_ids: list[str]) -> None:
        try:
            response = await stub.Ack(pb.AckRequest(ack_ids=ack_ids), timeout=30)
        except grpc.RpcError as error:
            # CANCELLED: the workload ended and closed the channel under an ack on its
            # way (a stream that never ends, as the floor's, keeps making new ones).
            if error.code() != grpc.StatusCode.CANCELLED:
                self.errors.append(f"ack failed: {error.code().name} {error.details()}")
            return
        self.counter.add(len(ack_ids) - len(response.not_applied_ack_ids))

    async def close(self) -> None:
        """End every stream (unacked deliveries go back to the broker)."""
        for batch in self.batches:
            batch.flush()
        if self.acks:
            await asyncio.wait(self.acks, timeout=10)
        for call in self.calls:
            call.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class _AckBatch:
    """Ack ids waiting to be sent together, flushed when full or a moment after the first."""

    def __init__(self, send: Callable[[list[str]], None]) -> None:
        self._send = send
        self._ids: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, ack_ids: list[str]) -> None:
        self._ids.extend(ack_ids)
        if len(self._ids) >= ACK_BATCH_MAX:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(ACK_FLUSH_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ids:
            ids, self._ids = self._ids, []
            self._send(ids)


async def batched_publish(channels: Channels, plan: Plan, progress: Progress) -> Result:
    """Events/s acknowledged, `batch_size` per BatchPublish, `batch_callers` at once."""
    request = pb.BatchPublishRequest(
        events=[_event("bench.batch", payload()) for _ in range(plan.batch_size)]
    )
    calls = plan.events // plan.batch_size

    async def call(index: int) -> None:
        await channels[index].BatchPublish(request, timeout=30)

    done = await run_calls(
        calls,
        plan.batch_callers,
        call,
        time.perf_counter() + plan.cap_s,
        lambda n: progress.update(n * plan.batch_size, calls * plan.batch_size),
    )
    return Result(
        {
            "events_per_s": done.done * plan.batch_size / done.elapsed_s,
            "events": float(done.done * plan.batch_size),
            "p50_ms": percentile(done.latencies_s, 50) * 1000,
            "p99_ms": percentile(done.latencies_s, 99) * 1000,
        },
        capped=done.done < calls,
    )


async def end_to_end(channels: Channels, plan: Plan, progress: Progress) -> Result:
    """Events/s published (batched) and delivered and acked by `e2e_consumers` consumers."""
    name = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    await _create_subscription(channels[0], name, "bench.e2e")
    total = plan.events // plan.batch_size * plan.batch_size
    counter = Counter(total)
    consumers = _Consumers(counter)
    try:
        for index in range(plan.e2e_consumers):
            consumers.start(channels[index], name)
        request = pb.BatchPublishRequest(
            events=[_event("bench.e2e", payload()) for _ in range(plan.batch_size)]
        )
        deadline = time.perf_counter() + plan.cap_s
        start = time.perf_counter()

        async def call(index: int) -> None:
            await channels[index + 1].BatchPublish(request, timeout=30)

        published = await run_calls(total // plan.batch_size, plan.e2e_publishers, call, deadline)
        counter.retarget(published.done * plan.batch_size)
        reached = await counter.wait(deadline, progress)
        elapsed = time.perf_counter() - start
    finally:
        await consumers.close()
        await _delete_subscription(channels[0], name)
    return Result(
        {
            "events_per_s": min(counter.count, total) / elapsed,
            "events": float(min(counter.count, total)),
            "publish_events_per_s": published.done * plan.batch_size / published.elapsed_s,
        },
        [ACK_NOTE, *consumers.errors],
        capped=not reached or counter.target < total,
    )


async def single_publish(
    channels: Channels, plan: Plan, progress: Progress, deadline: float
) -> Result:
    """Events/s and p50/p99 of one event per Publish, `single_callers` at once."""
    request = pb.PublishRequest(event=_event("bench.single", payload()))
    total = plan.single_events

    async def call(index: int) -> None:
        await channels[index].Publish(request, timeout=30)

    done = await run_calls(
        total, plan.single_callers, call, deadline, lambda n: progress.update(n, total)
    )
    return Result(
        {
            "events_per_s": done.done / done.elapsed_s,
            "events": float(done.done),
            "p50_ms": percentile(done.latencies_s, 50) * 1000,
            "p99_ms": percentile(done.latencies_s, 99) * 1000,
        },
        capped=done.done < total,
    )


@contextlib.contextmanager
def _quiet_client_log() -> Iterator[None]:
    """No "no subscription matches" warning: the workload publishes to no subscription."""
    logger = logging.getLogger("eventbroker.client")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


async def _client_publish_part(
    target: str, pid: int, batching: PublishBatching, plan: Plan, progress: Progress
) -> tuple[dict[str, float], bool]:
    """One part of `client_publish`: its figures and whether the time cap cut it short."""
    data = json.loads(payload())
    total = plan.client_events
    async with AsyncClient(target, publish_batching=batching) as client:
        await client.publish("bench.client", data)  # the channel is connected

        async def call(index: int) -> None:
            await client.publish("bench.client", data)

        cpu_before = cpu_seconds(pid)
        client_cpu_before = time.process_time()
        done = await run_calls(
            total,
            plan.client_callers,
            call,
            time.perf_counter() + plan.cap_s,
            lambda n: progress.update(n, total),
        )
        cpu_after = cpu_seconds(pid)
        client_cpu_s = time.process_time() - client_cpu_before
    figures = {
        "events_per_s": done.done / done.elapsed_s,
        "events": float(done.done),
        "p50_ms": percentile(done.latencies_s, 50) * 1000,
        "p99_ms": percentile(done.latencies_s, 99) * 1000,
        "client_cpu_us_per_event": client_cpu_s * 1e6 / max(1, done.done),
    }
    if cpu_before is not None and cpu_after is not None and done.done:
        figures["cpu_us_per_event"] = (cpu_after - cpu_before) * 1e6 / done.done
    return figures, done.done < total


def client_publish_result(
    on: tuple[dict[str, float], bool], off: tuple[dict[str, float], bool], plan: Plan
) -> Result:
    """The figures of `client_publish`: batching on, and off prefixed `off_`, and their ratios."""
    (batched, batched_capped), (unbatched, unbatched_capped) = on, off
    figures = dict(batched)
    figures.update({f"off_{name}": value for name, value in unbatched.items()})
    figures["events"] = batched["events"] + unbatched["events"]
    figures["batching_ratio"] = batched["events_per_s"] / unbatched["events_per_s"]
    figures["p50_ratio"] = batched["p50_ms"] / unbatched["p50_ms"]
    note = (
        f"AsyncClient.publish of 1 KiB JSON from {plan.client_callers} tasks, each part on a "
        "fresh database; off_ figures: publish_batching=False (one Publish call per event)"
    )
    return Result(figures, [note], capped=batched_capped or unbatched_capped)


class ServicePeer(Peer):
    """A server of the broker's gRPC service, driven over `Channels` by the shared workloads."""

    def __init__(self, plan: Plan, progress: Progress, endpoints: Endpoints) -> None:
        super().__init__(plan, progress, endpoints)
        self.channels: Channels | None = None

    def _channels(self) -> Channels:
        assert self.channels is not None, "start() first"
        return self.channels

    async def batched_publish(self) -> Result:
        """Events/s acknowledged, 100 events per BatchPublish."""
        return await batched_publish(self._channels(), self.plan, self.progress)

    async def single_publish(self) -> Result:
        """Events/s and p50/p99 of one event per Publish, `single_callers` at once."""
        return await single_publish(self._channels(), self.plan, self.progress, self.deadline())

    async def end_to_end(self) -> Result:
        """Publish and consume with acks, `e2e_consumers` consumers."""
        return await end_to_end(self._channels(), self.plan, self.progress)


class BrokerPeer(ServicePeer):
    """The broker on one database, one `broker serve` process."""

    def __init__(self, plan: Plan, progress: Progress, endpoints: Endpoints) -> None:
        super().__init__(plan, progress, endpoints)
        self.workdir = endpoints.workdir
        self.pg_url = endpoints.postgres
        self.process: BrokerProcess | None = None
        self.databases: list[str] = []

    def database_url(self) -> str:
        """A fresh database for `broker serve`."""
        raise NotImplementedError

    async def start(self) -> None:
        """Start `broker serve` on a fresh database and open the channels."""
        url = await asyncio.to_thread(self.database_url)
        log = self.workdir / f"{self.key}.log"
        self.process = await asyncio.to_thread(BrokerProcess(url, log).start)
        self.channels = Channels(self.process.target)

    async def _stop_process(self) -> None:
        """Close the channels and stop the broker process, if running."""
        if self.channels is not None:
            await self.channels.close()
            self.channels = None
        if self.process is not None:
            await asyncio.to_thread(self.process.terminate)
            self.process = None

    async def stop(self) -> None:
        """Stop the broker and drop what it stored."""
        await self._stop_process()
        for name in self.databases:
            await asyncio.to_thread(drop_database, self.pg_url, name)
        self.databases.clear()

    def server_pid(self) -> int | None:
        """The `broker serve` process, whose CPU time the report divides by events."""
        if self.process is None or self.process.proc is None:
            return None
        return self.process.proc.pid

    async def client_publish(self) -> Result:
        """`AsyncClient.publish` per event from `client_callers` tasks, as services publish.

        Once with the client's default publish batching (publishes made while a call
        is on its way go together), once with `publish_batching=False` (one Publish
        per event: the client as it was before batching). Each part runs on a broker
        of its own with a fresh database, so that neither publishes into what the
        other stored (a fuller PostgreSQL database answers more slowly), and the
        server's CPU is that part's.
        """
        parts: list[tuple[dict[str, float], bool]] = []
        for label, batching in (("on", PublishBatching()), ("off", PublishBatching(enabled=False))):
            url = await asyncio.to_thread(self.database_url)
            log = self.workdir / f"{self.key}-client-{label}.log"
            process = await asyncio.to_thread(BrokerProcess(url, log).start)
            assert process.proc is not None
            try:
                with _quiet_client_log():
                    parts.append(
                        await _client_publish_part(
                            process.target, process.proc.pid, batching, self.plan, self.progress
                        )
                    )
            finally:
                await asyncio.to_thread(process.terminate)
        return client_publish_result(parts[0], parts[1], self.plan)

    async def latency(self) -> Result:
        """Publish -> handler at a steady rate: one Publish per event, one consumer."""
        channels = self._channels()
        name = f"bench-latency-{uuid.uuid4().hex[:8]}"
        await _create_subscription(channels[0], name, "bench.latency")
        latencies_ms: list[float] = []
        total = int(self.plan.latency_rate * self.plan.latency_s)

        def handle(data: bytes) -> None:
            latencies_ms.append((now_ns() - stamp_of(data)) / 1e6)

        consumers = _Consumers(Counter(total), handle)
        consumers.start(channels[0], name)
        try:
            await asyncio.sleep(0.5)  # the stream is attached before the clock starts

            async def send(index: int) -> None:
                event = _event("bench.latency", payload(now_ns()))
                await channels[index + 1].Publish(pb.PublishRequest(event=event), timeout=30)
                self.progress.update(index + 1, total)

            deadline = self.deadline()
            sent, took = await paced(self.plan.latency_rate, total, deadline, send)
            await consumers.counter.wait(min(deadline, time.perf_counter() + 5), self.progress)
        finally:
            await consumers.close()
            await _delete_subscription(channels[0], name)
        result = latency_result(latencies_ms, sent, took, self.plan)
        result.notes.extend([ACK_NOTE, *consumers.errors])
        return result

    async def many_subscriptions(self) -> Result:
        """Batched publishes that `wide_subscriptions` subscriptions all match, nobody reading.

        What a publish costs when many subscriptions want each event, the broker's
        memory afterwards, and how long one GetStats of every subscription takes.
        """
        channels = self._channels()
        plan = self.plan
        tag = uuid.uuid4().hex[:6]
        names = [f"bench-wide-{i}-{tag}" for i in range(plan.wide_subscriptions)]
        for name in names:
            await _create_subscription(channels[0], name, "bench.wide")
        total = plan.wide_events // plan.batch_size * plan.batch_size
        request = pb.BatchPublishRequest(
            events=[_event("bench.wide", payload()) for _ in range(plan.batch_size)]
        )
        pid = self.server_pid()
        try:

            async def call(index: int) -> None:
                await channels[index].BatchPublish(request, timeout=30)

            published = await run_calls(
                total // plan.batch_size, plan.batch_callers, call, self.deadline()
            )
            rss_mib = rss_kib(pid)[0] / 1024 if pid else math.nan
            began = time.perf_counter()
            await channels[0].GetStats(pb.GetStatsRequest(), timeout=60)
            stats_ms = (time.perf_counter() - began) * 1000
        finally:
            for name in names:
                await _delete_subscription(channels[0], name)
        done = published.done * plan.batch_size
        return Result(
            {
                "publish_events_per_s": done / published.elapsed_s,
                "rss_mib": rss_mib,
                "stats_ms": stats_ms,
                "events": float(done),
            },
            [f"{plan.wide_subscriptions} subscriptions match every event; no consumer reads"],
            capped=done < total,
        )

    async def fan_out(self) -> Result:
        """Each event to `fanout_subscriptions` subscriptions, one consumer on each."""
        channels = self._channels()
        plan = self.plan
        names = [
            f"bench-fanout-{i}-{uuid.uuid4().hex[:6]}" for i in range(plan.fanout_subscriptions)
        ]
        for name in names:
            await _create_subscription(channels[0], name, "bench.fanout")
        total = plan.fanout_events // plan.batch_size * plan.batch_size
        counter = Counter(total * len(names))
        consumers = _Consumers(counter)
        try:
            for index, name in enumerate(names):
                consumers.start(channels[index], name)
            request = pb.BatchPublishRequest(
                events=[_event("bench.fanout", payload()) for _ in range(plan.batch_size)]
            )
            deadline = self.deadline()
            start = time.perf_counter()

            async def call(index: int) -> None:
                await channels[index].BatchPublish(request, timeout=30)

            published = await run_calls(
                total // plan.batch_size, plan.batch_callers, call, deadline
            )
            counter.retarget(published.done * plan.batch_size * len(names))
            reached = await counter.wait(deadline, self.progress)
            elapsed = time.perf_counter() - start
        finally:
            await consumers.close()
            for name in names:
                await _delete_subscription(channels[0], name)
        return Result(
            {
                "publish_events_per_s": published.done * plan.batch_size / published.elapsed_s,
                "deliveries_per_s": counter.count / elapsed,
                "events": float(published.done * plan.batch_size),
            },
            consumers.errors,
            capped=not reached or published.done * plan.batch_size < total,
        )


def create_database(pg_url: str, prefix: str) -> str:
    """A new, empty database on the server; its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(pg_url: str, name: str) -> None:
    """Drop a database made by `create_database`, closing its connections."""
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_setting(pg_url: str, setting: str) -> str:
    """A PostgreSQL server setting, as SHOW prints it."""
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(f"SHOW {setting}").fetchone()
    return str(row[0]) if row else "?"


def broker_url(pg_url: str, database: str) -> str:
    """The SQLAlchemy URL `broker serve` takes for a database on the server."""
    base, _, _ = pg_url.rpartition("/")
    return f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{database}"


class BrokerSqlitePeer(BrokerPeer):
    """The broker on a fresh SQLite file."""

    key = "broker-sqlite"
    label = "broker SQLite"
    durability_short = "fsync per commit"
    durability = "fsync per commit (WAL, synchronous=FULL)"

    def database_url(self) -> str:
        """A new file in the work directory."""
        return f"sqlite:///{self.workdir / f'bench-{uuid.uuid4().hex[:8]}.db'}"

    async def idle_streams(self) -> Result:
        """RSS of `broker serve` with `idle_streams` Subscribe streams open and idle.

        The streams come from `idle_processes` child processes (see
        `tests.bench.idle_streams`), opened at `IDLE_OPEN_PER_S` a second in all
        and spread over `IDLE_SUBSCRIPTIONS` subscriptions; GetStats counts them
        attached before the RSS (VmRSS of the broker's process) is read.
        """
        assert self.process is not None and self.process.proc is not None
        pid = self.process.proc.pid
        stub = self._channels()[0]
        plan = self.plan
        names = [f"bench-idle-{i}" for i in range(min(IDLE_SUBSCRIPTIONS, plan.idle_streams))]
        for name in names:
            await _create_subscription(stub, name, "bench.idle")
        await asyncio.sleep(1.0)
        base_kib, _ = rss_kib(pid)
        per_process = math.ceil(plan.idle_streams / plan.idle_processes)
        children: list[subprocess.Popen[bytes]] = []
        attached = 0
        start = time.perf_counter()
        try:
            for index in range(plan.idle_processes):
                streams = min(per_process, plan.idle_streams - index * per_process)
                command = [sys.executable, "-m", "tests.bench.idle_streams", self.process.target]
                command += [str(streams), str(IDLE_OPEN_PER_S / plan.idle_processes)]
                command += [str(plan.cap_s + 30), *names]
                children.append(_spawn(command))
            deadline = self.deadline()
            while time.perf_counter() < deadline:
                stats = await stub.GetStats(pb.GetStatsRequest(), timeout=30)
                attached = sum(s.consumers for s in stats.subscriptions if s.subscription in names)
                self.progress.update(attached, plan.idle_streams)
                if attached >= plan.idle_streams:
                    break
                if any(child.poll() is not None for child in children):
                    break
                await asyncio.sleep(0.5)
            took = time.perf_counter() - start
            await asyncio.sleep(1.0)  # let the allocator settle after the last stream
            rss, peak = rss_kib(pid)
        finally:
            said = await asyncio.to_thread(_end_children, children)
            for name in names:
                await _delete_subscription(stub, name)
        notes = []
        if attached < plan.idle_streams:
            notes.append(f"only {attached:,} of {plan.idle_streams:,} streams attached by the cap")
        reopened = sum(int(line.split()[0].partition("=")[2] or 0) for line in said if line)
        if reopened:
            notes.append(
                f"{reopened:,} streams were ended by the broker while opening "
                f"({IDLE_OPEN_PER_S}/s) and reopened: {'; '.join(said)}"
            )
        return Result(
            {
                "rss_mib": rss / 1024,
                "rss_before_mib": base_kib / 1024,
                "peak_rss_mib": peak / 1024,
                "streams": float(attached),
                "kib_per_stream": (rss - base_kib) / attached if attached else math.nan,
                "attach_s": took,
                "reopened": float(reopened),
            },
            notes,
            capped=attached < plan.idle_streams,
        )

    async def slow_consumer(self) -> Result:
        """Broker RSS while consumers stop reading, sampled for `slow_s` seconds.

        `slow_streams` streams of credit 10,000 on a subscription with a 1 s ack
        deadline each read one message and then nothing more, while their
        leases expire again and again. A broker that fills an unread stream's
        outbox whenever credit comes back grows without bound; one that counts
        what waits to be written as held stays flat.
        """
        assert self.process is not None and self.process.proc is not None
        pid = self.process.proc.pid
        channels = self._channels()
        plan = self.plan
        name = f"bench-slow-{uuid.uuid4().hex[:8]}"
        await channels[0].CreateSubscription(
            pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(
                    name=name,
                    filter=["bench.slow"],
                    ack_deadline=duration_pb2.Duration(seconds=1),
                    max_attempts=1000,
                    retry_policy=pb.RetryPolicy(
                        min_backoff=duration_pb2.Duration(nanos=100_000_000),
                        max_backoff=duration_pb2.Duration(nanos=100_000_000),
                    ),
                )
            ),
            timeout=30,
        )
        request = pb.BatchPublishRequest(
            events=[_event("bench.slow", payload()) for _ in range(plan.batch_size)]
        )
        for index in range(plan.slow_events // plan.batch_size):
            await channels[index].BatchPublish(request, timeout=30)
        calls = []
        samples: list[float] = []
        try:
            for index in range(plan.slow_streams):
                call = channels[index].Subscribe(
                    pb.SubscribeRequest(subscription=name, max_outstanding=10_000)
                )
                await call.read()  # attached and delivering; from now on it reads nothing
                calls.append(call)
            start = time.perf_counter()
            while (elapsed := time.perf_counter() - start) < plan.slow_s:
                samples.append(rss_kib(pid)[0] / 1024)
                self.progress.update(int(elapsed), int(plan.slow_s))
                await asyncio.sleep(1.0)
            samples.append(rss_kib(pid)[0] / 1024)
        finally:
            for call in calls:
                call.cancel()
            await _delete_subscription(channels[0], name)
        # The first seconds fill each stream's credit (held by design); "flat" is
        # what follows: the growth from then to the end.
        settled = samples[min(len(samples) - 1, int(plan.slow_s * SLOW_SETTLE_FRACTION))]
        return Result(
            {
                "rss_start_mib": samples[0],
                "rss_settled_mib": settled,
                "rss_end_mib": samples[-1],
                "rss_growth_mib": samples[-1] - settled,
                "rss_growth_from_start_mib": samples[-1] - samples[0],
                "rss_peak_mib": max(samples),
                "seconds": plan.slow_s,
            }
        )


def _spawn(command: list[str]) -> subprocess.Popen[bytes]:
    """A child process that ends when its stdin closes, with its stdout piped to us."""
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def _end_children(children: Sequence[subprocess.Popen[bytes]]) -> list[str]:
    """Close each child's stdin (it ends its streams and exits) and return what it printed.

    A child that does not exit in time is killed by its pid.
    """
    said = []
    for child in children:
        try:
            out, _ = child.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            out, _ = child.communicate(timeout=5)
        said.append(out.decode(errors="replace").strip())
    return said


class BrokerPostgresPeer(BrokerPeer):
    """The broker on a fresh PostgreSQL database."""

    key = "broker-pg"
    label = "broker PG"
    durability_short = "fsync per commit"

    def database_url(self) -> str:
        """A new database on the server (dropped by `stop`)."""
        try:
            commit = server_setting(self.pg_url, "synchronous_commit")
            fsync = server_setting(self.pg_url, "fsync")
        except psycopg.Error as error:
            raise Unavailable(f"PostgreSQL unreachable at {self.pg_url}: {error}") from error
        self.durability = f"fsync per commit (synchronous_commit={commit}, fsync={fsync})"
        name = create_database(self.pg_url, "bench_broker")
        self.databases.append(name)
        return broker_url(self.pg_url, name)

    async def scale_out(self) -> Result:
        """End to end and batched publish with `broker serve --processes 2` over 1.

        As `tests.bench.scale`: a fresh database per run, eight channels, each
        with its own connection, so that the kernel spreads them over the
        processes sharing the port. The single broker of the other workloads
        is stopped first so that it takes no CPU.
        """
        await self._stop_process()
        plan = dataclasses.replace(self.plan, events=self.plan.scale_events)
        figures: dict[str, float] = {}
        capped = False
        for processes in (1, 2):
            name = await asyncio.to_thread(create_database, self.pg_url, "bench_broker_scale")
            self.databases.append(name)
            log = self.workdir / f"{self.key}-scale-{processes}.log"
            supervised = Supervised(broker_url(self.pg_url, name), processes, log)
            try:
                await asyncio.to_thread(supervised.wait_for_workers, processes)
                channels = Channels(supervised.target)
                try:
                    published = await batched_publish(channels, plan, self.progress)
                    delivered = await end_to_end(channels, plan, self.progress)
                finally:
                    await channels.close()
            finally:
                await asyncio.to_thread(supervised.stop)
            capped = capped or published.capped or delivered.capped
            figures[f"publish_{processes}p_events_per_s"] = published.figures["events_per_s"]
            figures[f"e2e_{processes}p_events_per_s"] = delivered.figures["events_per_s"]
        figures["e2e_ratio"] = figures["e2e_2p_events_per_s"] / figures["e2e_1p_events_per_s"]
        figures["publish_ratio"] = (
            figures["publish_2p_events_per_s"] / figures["publish_1p_events_per_s"]
        )
        return Result(figures, capped=capped)

    async def idle_streams(self) -> Result:
        """Measured on SQLite only."""
        raise NotApplicable("measured on SQLite (memory per stream does not depend on the store)")
