"""pgqueuer on the local PostgreSQL, in a database of its own, through asyncpg.

pgqueuer is a job queue: each job goes to one worker, so there is no fan-out
to several subscriptions to measure. Enqueueing uses `Queries.enqueue` (a list
of 100 jobs in one statement for the batched workloads) over a pool of
connections; a consumer is a `PgQueuer` worker (`QueueManager`) on a
connection of its own. A job counts as acked once pgqueuer has recorded its
completion (it moves the row from the queue table to its log), which it does
in batches every 0.1 s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tests.bench.peers.base import (
    Counter,
    Endpoints,
    NotApplicable,
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
    import asyncpg
    from pgqueuer import PgQueuer, Queries

WORKER_BATCH = 100  # jobs per dequeue, as the broker's stream batches (pgqueuer's default: 10)
DEQUEUE_TIMEOUT = timedelta(seconds=1)
POLL_S = 0.02


class PgqueuerPeer(Peer):
    """pgqueuer, a job queue on PostgreSQL."""

    key = "pgqueuer"
    label = "pgqueuer"
    durability_short = "fsync per commit"

    def __init__(self, plan: Plan, progress: Progress, endpoints: Endpoints) -> None:
        super().__init__(plan, progress, endpoints)
        self.admin_url = endpoints.postgres
        self.database = ""
        self.url = ""
        self.pools: list[asyncpg.Pool[Any]] = []

    async def start(self) -> None:
        """Create a database, install pgqueuer's schema in it."""
        try:
            import asyncpg
            from pgqueuer import AsyncpgDriver, Queries
        except ImportError as error:
            raise Unavailable(f"pgqueuer or asyncpg is not installed ({error})") from error
        try:
            admin = await asyncpg.connect(self.admin_url, timeout=5)
        except Exception as error:
            raise Unavailable(f"PostgreSQL unreachable at {self.admin_url}: {error!r}") from error
        try:
            commit = await admin.fetchval("SHOW synchronous_commit")
            fsync = await admin.fetchval("SHOW fsync")
            self.database = f"bench_pgqueuer_{uuid.uuid4().hex[:8]}"
            await admin.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await admin.close()
        self.durability = f"fsync per commit (synchronous_commit={commit}, fsync={fsync})"
        base, _, _ = self.admin_url.rpartition("/")
        self.url = f"{base}/{self.database}"
        connection = await asyncpg.connect(self.url)
        try:
            await Queries(AsyncpgDriver(connection)).install()
        finally:
            await connection.close()

    async def stop(self) -> None:
        """Close the pools and drop the database."""
        import asyncpg

        for pool in self.pools:
            await pool.close()
        self.pools.clear()
        if self.database:
            admin = await asyncpg.connect(self.admin_url, timeout=5)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            finally:
                await admin.close()
            self.database = ""

    async def _queries(self, connections: int) -> Queries:
        """Queries over a new pool of `connections` connections."""
        import asyncpg
        from pgqueuer import AsyncpgPoolDriver, Queries

        pool = await asyncpg.create_pool(self.url, min_size=connections, max_size=connections)
        self.pools.append(pool)
        return Queries(AsyncpgPoolDriver(pool))

    async def _clear(self, queries: Queries, entrypoint: str) -> None:
        await queries.clear_queue(entrypoint)
        await queries.clear_queue_log(entrypoint)

    async def batched_publish(self) -> Result:
        """Events/s enqueued, 100 jobs per `enqueue` call."""
        plan = self.plan
        queries = await self._queries(plan.batch_callers)
        calls = plan.events // plan.batch_size
        names = ["bench_batch"] * plan.batch_size
        payloads: list[bytes | None] = [payload()] * plan.batch_size
        priorities = [0] * plan.batch_size

        async def call(_: int) -> None:
            await queries.enqueue(names, payloads, priorities)

        try:
            done = await run_calls(
                calls,
                plan.batch_callers,
                call,
                self.deadline(),
                lambda n: self.progress.update(n * plan.batch_size, calls * plan.batch_size),
            )
        finally:
            await self._clear(queries, "bench_batch")
        return Result(
            {
                "events_per_s": done.done * plan.batch_size / done.elapsed_s,
                "p50_ms": percentile(done.latencies_s, 50) * 1000,
                "p99_ms": percentile(done.latencies_s, 99) * 1000,
            },
            capped=done.done < calls,
        )

    async def single_publish(self) -> Result:
        """Events/s and p50/p99 of one job per `enqueue`, one connection per caller."""
        plan = self.plan
        queries = await self._queries(plan.single_callers)
        data = payload()
        total = plan.single_events

        async def call(_: int) -> None:
            await queries.enqueue("bench_single", data)

        try:
            done = await run_calls(
                total,
                plan.single_callers,
                call,
                self.deadline(),
                lambda n: self.progress.update(n, total),
            )
        finally:
            await self._clear(queries, "bench_single")
        return Result(
            {
                "events_per_s": done.done / done.elapsed_s,
                "p50_ms": percentile(done.latencies_s, 50) * 1000,
                "p99_ms": percentile(done.latencies_s, 99) * 1000,
            },
            capped=done.done < total,
        )

    async def _workers(
        self, count: int, entrypoint: str, on_job: Callable[[bytes], None]
    ) -> tuple[list[PgQueuer], list[asyncio.Task[None]], list[asyncpg.Connection[Any]]]:
        """`count` workers running `entrypoint`, each on a connection of its own."""
        import asyncpg
        from pgqueuer import AsyncpgDriver, PgQueuer
        from pgqueuer.models import Job

        workers, tasks, connections = [], [], []
        for _ in range(count):
            connection = await asyncpg.connect(self.url)
            worker = PgQueuer(AsyncpgDriver(connection))

            async def handle(job: Job) -> None:
                on_job(job.payload or b"")

            worker.entrypoint(entrypoint)(handle)
            connections.append(connection)
            workers.append(worker)
            tasks.append(
                asyncio.create_task(
                    worker.run(dequeue_timeout=DEQUEUE_TIMEOUT, batch_size=WORKER_BATCH)
                )
            )
        return workers, tasks, connections

    async def _finish(
        self,
        workers: list[PgQueuer],
        tasks: list[asyncio.Task[None]],
        connections: list[asyncpg.Connection[Any]],
    ) -> None:
        for worker in workers:
            worker.shutdown.set()
        await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for connection in connections:
            await connection.close()

    async def _wait_recorded(
        self, queries: Queries, entrypoint: str, handled: Counter, deadline: float
    ) -> bool:
        """Wait until every job was handled and its completion recorded (its row is gone)."""
        import asyncpg

        table = queries.qbe.settings.queue_table
        connection = await asyncpg.connect(self.url)
        try:
            while time.perf_counter() < deadline:
                self.progress.update(handled.count, handled.target)
                if handled.count >= handled.target:
                    left = await connection.fetchval(
                        f"SELECT count(*) FROM {table} WHERE entrypoint = $1", entrypoint
                    )
                    if left == 0:
                        return True
                await asyncio.sleep(POLL_S)
            return False
        finally:
            await connection.close()

    async def end_to_end(self) -> Result:
        """Batched enqueue while `e2e_consumers` workers take the jobs."""
        plan = self.plan
        queries = await self._queries(plan.e2e_publishers)
        total = plan.events // plan.batch_size * plan.batch_size
        handled = Counter(total)
        workers, tasks, connections = await self._workers(
            plan.e2e_consumers, "bench_e2e", lambda _: handled.add(1)
        )
        names = ["bench_e2e"] * plan.batch_size
        payloads: list[bytes | None] = [payload()] * plan.batch_size
        priorities = [0] * plan.batch_size
        try:
            await asyncio.sleep(0.5)  # the workers are listening before the clock starts
            deadline = self.deadline()
            start = time.perf_counter()

            async def call(_: int) -> None:
                await queries.enqueue(names, payloads, priorities)

            published = await run_calls(
                total // plan.batch_size, plan.e2e_publishers, call, deadline
            )
            handled.retarget(published.done * plan.batch_size)
            reached = await self._wait_recorded(queries, "bench_e2e", handled, deadline)
            elapsed = time.perf_counter() - start
        finally:
            await self._finish(workers, tasks, connections)
            await self._clear(queries, "bench_e2e")
        return Result(
            {
                "events_per_s": min(handled.count, total) / elapsed,
                "publish_events_per_s": published.done * plan.batch_size / published.elapsed_s,
            },
            [f"{plan.e2e_consumers} workers, dequeue batch {WORKER_BATCH}"],
            capped=not reached or handled.target < total,
        )

    async def latency(self) -> Result:
        """Enqueue -> handler at a steady rate: one `enqueue` per job, one worker.

        A connection runs one statement at a time, so the enqueues go over a
        pool as large as the single-publish callers.
        """
        plan = self.plan
        queries = await self._queries(plan.single_callers)
        total = int(plan.latency_rate * plan.latency_s)
        latencies_ms: list[float] = []
        handled = Counter(total)

        def handle(data: bytes) -> None:
            latencies_ms.append((now_ns() - stamp_of(data)) / 1e6)
            handled.add(1)

        workers, tasks, connections = await self._workers(1, "bench_latency", handle)
        try:
            await asyncio.sleep(0.5)

            async def send(index: int) -> None:
                await queries.enqueue("bench_latency", payload(now_ns()))
                self.progress.update(index + 1, total)

            deadline = self.deadline()
            sent, took = await paced(plan.latency_rate, total, deadline, send)
            handled.retarget(sent)
            await handled.wait(min(deadline, time.perf_counter() + 5), self.progress)
        finally:
            await self._finish(workers, tasks, connections)
            await self._clear(queries, "bench_latency")
        return latency_result(latencies_ms, sent, took, plan)

    async def fan_out(self) -> Result:
        """Not a job queue's model."""
        raise NotApplicable(
            "a job goes to one worker; fan-out would mean enqueueing one job per subscription"
        )
