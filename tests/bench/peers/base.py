"""What every peer shares: the plan, the result, the interface and the load helpers.

A peer is one system under test. It has one async method per workload; each
returns a `Result` (named figures), raises `NotApplicable` when the workload
does not map onto the system, and stops by itself at the plan's time cap even
when the count is not reached (the result then says it was capped).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

PAYLOAD_BYTES = 1024
_STAMP_AT = len(b'{"t":')


def payload(stamp_ns: int = 0) -> bytes:
    """A JSON object of exactly 1 KiB, carrying a send time for latency workloads."""
    head = b'{"t":%d,"pad":"' % stamp_ns
    tail = b'"}'
    return head + b"x" * (PAYLOAD_BYTES - len(head) - len(tail)) + tail


def stamp_of(data: bytes) -> int:
    """The send time `payload` put in the data (`time.perf_counter_ns`)."""
    return int(data[_STAMP_AT : data.index(b",", _STAMP_AT)])


def now_ns() -> int:
    """The clock the latency stamps use."""
    return time.perf_counter_ns()


@dataclass(frozen=True)
class Plan:
    """How much each workload does, and how long it may take at most."""

    events: int = 20_000  # batched publish and end to end
    batch_size: int = 100
    batch_callers: int = 4
    single_events: int = 5_000
    single_callers: int = 16
    client_events: int = 20_000  # client publish: each of batching on and off
    client_callers: int = 64
    e2e_consumers: int = 4
    e2e_publishers: int = 2
    latency_rate: int = 1_000  # events/s
    latency_s: float = 10.0
    fanout_subscriptions: int = 10
    fanout_events: int = 5_000
    wide_subscriptions: int = 100
    wide_events: int = 5_000
    idle_streams: int = 10_000
    idle_processes: int = 4
    scale_events: int = 20_000
    slow_streams: int = 3  # consumers that stop reading
    slow_events: int = 30_000
    slow_s: float = 120.0  # how long the broker's memory is watched
    cap_s: float = 60.0  # hard time cap of one workload

    @classmethod
    def quick(cls) -> Plan:
        """A few hundred events per workload: seconds in all (for CI)."""
        return cls(
            events=400,
            single_events=200,
            client_events=400,
            latency_s=1.0,
            fanout_events=200,
            wide_events=200,
            idle_streams=300,
            idle_processes=1,
            scale_events=400,
            slow_events=300,
            slow_s=2.0,
            cap_s=15.0,
        )


@dataclass(frozen=True)
class Endpoints:
    """Where the systems are, and where a peer may keep files."""

    workdir: Path
    postgres: str = "postgresql://postgres@127.0.0.1:5432/postgres"  # an admin connection
    nats: str = "nats://127.0.0.1:4222"
    amqp: str = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass
class Result:
    """Named figures of one workload on one system, and what to know about them."""

    figures: dict[str, float]
    notes: list[str] = field(default_factory=list)
    capped: bool = False  # the time cap ended it before the count was reached


class NotApplicable(Exception):
    """The workload does not map onto this system; the message says why."""


class Unavailable(Exception):
    """The system cannot be measured here (library missing, server unreachable)."""


class Progress:
    """Progress of the running workload on stderr: a live line on a terminal."""

    def __init__(self) -> None:
        self.label = ""
        self._live = sys.stderr.isatty()
        self._last = 0.0

    def begin(self, label: str) -> None:
        """A workload starts."""
        self.label = label
        self._last = 0.0
        if self._live:
            print(f"\r\033[K  {label} ...", end="", file=sys.stderr, flush=True)
        else:
            print(f"  {label} ...", file=sys.stderr, flush=True)

    def update(self, done: int, total: int) -> None:
        """`done` of `total` so far (drawn at most five times a second)."""
        now = time.monotonic()
        if not self._live or now - self._last < 0.2:
            return
        self._last = now
        print(f"\r\033[K  {self.label}: {done:,}/{total:,}", end="", file=sys.stderr, flush=True)

    def end(self, summary: str) -> None:
        """A workload ended; `summary` says how."""
        prefix = "\r\033[K" if self._live else ""
        print(f"{prefix}  {self.label}: {summary}", file=sys.stderr, flush=True)


class Peer:
    """One system under test. Subclasses override the workloads that apply to them."""

    key: ClassVar[str]
    label: ClassVar[str]
    durability_short = ""  # a few words for the table
    durability = ""  # the full setting, as found by `start`

    def __init__(self, plan: Plan, progress: Progress, endpoints: Endpoints) -> None:
        self.plan = plan
        self.progress = progress
        self.endpoints = endpoints

    async def start(self) -> None:
        """Connect and prepare; raise `Unavailable` when the system cannot be measured."""

    async def stop(self) -> None:
        """Remove everything the peer created and disconnect."""

    async def batched_publish(self) -> Result:
        """Events/s acknowledged, `batch_size` events per call."""
        raise NotApplicable("not measured for this system")

    async def single_publish(self) -> Result:
        """Events/s and p50/p99 latency of one event per call, several callers."""
        raise NotApplicable("not measured for this system")

    async def end_to_end(self) -> Result:
        """Events/s published, delivered and acked, with several consumers."""
        raise NotApplicable("not measured for this system")

    async def client_publish(self) -> Result:
        """Events/s and p50/p99 of `AsyncClient.publish` from many tasks, batching on and off."""
        raise NotApplicable("measured for this broker's client only")

    async def latency(self) -> Result:
        """Publish -> handler p50/p99 at a steady rate."""
        raise NotApplicable("not measured for this system")

    async def fan_out(self) -> Result:
        """Publish events/s and deliveries/s with each event going to several subscriptions."""
        raise NotApplicable("not measured for this system")

    async def many_subscriptions(self) -> Result:
        """Publish cost and memory with a hundred subscriptions matching every event."""
        raise NotApplicable("measured for this broker only")

    async def idle_streams(self) -> Result:
        """Broker memory with many idle subscriber streams open."""
        raise NotApplicable("measured for this broker only")

    async def scale_out(self) -> Result:
        """Two broker processes against one."""
        raise NotApplicable("measured for this broker only")

    async def slow_consumer(self) -> Result:
        """Broker memory while consumers stop reading their streams."""
        raise NotApplicable("measured for this broker only")

    def server_pid(self) -> int | None:
        """The server process to charge CPU time to, where the peer runs one itself."""
        return None

    def deadline(self) -> float:
        """The `time.perf_counter` value at which a workload starting now must stop."""
        return time.perf_counter() + self.plan.cap_s


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a running process, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile (0..100) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Calls:
    """What `run_calls` did."""

    done: int
    elapsed_s: float
    latencies_s: list[float]


async def run_calls(
    count: int,
    callers: int,
    call: Callable[[int], Awaitable[None]],
    deadline: float,
    on_done: Callable[[int], None] | None = None,
) -> Calls:
    """`call(i)` for i in 0..count-1 from `callers` concurrent tasks, until done or the deadline.

    `on_done` gets the number of calls done so far after each call.
    """
    next_index = 0
    latencies: list[float] = []

    async def caller() -> None:
        nonlocal next_index
        while next_index < count and time.perf_counter() < deadline:
            index = next_index
            next_index += 1
            began = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - began)
            if on_done is not None:
                on_done(len(latencies))

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return Calls(len(latencies), time.perf_counter() - start, latencies)


async def paced(
    rate: int,
    count: int,
    deadline: float,
    send: Callable[[int], Awaitable[None]],
    max_outstanding: int = 1_000,
) -> tuple[int, float]:
    """Start `send(i)` at a steady `rate` per second, without waiting for earlier sends.

    At most `max_outstanding` sends run at once (a system that cannot keep up
    slows the pace instead of piling up tasks). Returns the sends started and
    the seconds it took to start them.
    """
    slots = asyncio.Semaphore(max_outstanding)
    running: set[asyncio.Task[None]] = set()

    async def one(index: int) -> None:
        try:
            await send(index)
        finally:
            slots.release()

    start = time.perf_counter()
    started = 0
    for index in range(count):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.perf_counter() >= deadline:
            break
        await slots.acquire()
        task = asyncio.create_task(one(index))
        running.add(task)
        task.add_done_callback(running.discard)
        started += 1
    took = time.perf_counter() - start
    if running:
        await asyncio.wait(running, timeout=max(0.0, deadline - time.perf_counter()) + 5)
    return started, took


class Counter:
    """Counts handled deliveries and fires an event when a target is reached."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.reached = asyncio.Event()

    def add(self, n: int) -> None:
        """`n` more handled."""
        self.count += n
        if self.count >= self.target:
            self.reached.set()

    def retarget(self, target: int) -> None:
        """A new target (fewer were sent than planned: the time cap stopped the publishers)."""
        self.target = target
        if self.count >= target:
            self.reached.set()

    async def wait(self, deadline: float, progress: Progress) -> bool:
        """Wait until the target or the deadline, drawing progress; True if reached."""
        while not self.reached.is_set():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return False
            progress.update(self.count, self.target)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reached.wait(), min(remaining, 0.2))
        return True


def latency_result(latencies_ms: list[float], sent: int, took_s: float, plan: Plan) -> Result:
    """The figures of a latency workload: p50, p99, max and the rate achieved."""
    figures = {
        "p50_ms": percentile(latencies_ms, 50),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms, default=math.nan),
        "rate_per_s": sent / took_s if took_s > 0 else math.nan,
        "received": float(len(latencies_ms)),
        "sent": float(sent),
        "events": float(sent),
    }
    capped = sent < int(plan.latency_rate * plan.latency_s)
    notes = []
    if figures["rate_per_s"] < 0.95 * plan.latency_rate:
        notes.append(
            f"kept up only {figures['rate_per_s']:,.0f} of the {plan.latency_rate:,} events/s "
            "asked: the sender waits while 1,000 publishes are outstanding"
        )
    if len(latencies_ms) < sent:
        notes.append(f"{sent - len(latencies_ms)} of {sent} events not received by the cap")
    return Result(figures, notes, capped or len(latencies_ms) < sent)
