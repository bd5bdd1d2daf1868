"""A quick local benchmark of one broker process: publish and end-to-end throughput.

Runs `broker serve` in a child process on a fresh SQLite file (durable mode:
WAL with synchronous=FULL) and drives it with the generated stubs from this
process: batched publish, single publishes from several callers, and publish
plus consume-and-ack with four consumers. Every run is bounded in count and
time. Prints one line per workload.

    .venv/bin/python -m tests.bench.quick [--events 20000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.test_durability import BrokerProcess

PAYLOAD = b'{"pad":"' + b"x" * 1000 + b'"}'  # 1 KiB of JSON
TIME_LIMIT_S = 120


def _event(name: str) -> pb.Event:
    return pb.Event(name=name, binary_data=PAYLOAD, content_type="application/json")


def _progress(label: str, done: int, total: int) -> None:
    print(f"\r  {label}: {done}/{total}", end="", file=sys.stderr, flush=True)


Stubs = Sequence[pb_grpc.EventBrokerServiceStub]


def batched_publish(stubs: Stubs, total: int, callers: int) -> float:
    """Events/s acknowledged, 100 events per BatchPublish, `callers` in parallel.

    Call `i` goes through `stubs[i % len(stubs)]` (one channel each, so that
    brokers sharing a port each get connections).
    """
    batches = total // 100
    request = pb.BatchPublishRequest(events=[_event("bench.batch") for _ in range(100)])
    done = 0
    lock = threading.Lock()

    def one(index: int) -> None:
        nonlocal done
        stubs[index % len(stubs)].BatchPublish(request, timeout=30)
        with lock:
            done += 1
            if done % 20 == 0:
                _progress("batched publish", done * 100, total)

    start = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(one, range(batches)))
    elapsed = time.perf_counter() - start
    print(file=sys.stderr)
    return batches * 100 / elapsed


def single_publish(
    stub: pb_grpc.EventBrokerServiceStub, total: int, callers: int
) -> tuple[float, float, float]:
    """Events/s and p50/p99 latency (ms) of one event per Publish."""
    latencies: list[float] = []
    request = pb.PublishRequest(event=_event("bench.single"))

    def one(_: int) -> None:
        began = time.perf_counter()
        stub.Publish(request, timeout=30)
        latencies.append(time.perf_counter() - began)

    start = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(one, range(total)))
    elapsed = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100)
    return total / elapsed, cuts[49] * 1000, cuts[98] * 1000


def end_to_end(stubs: Stubs, total: int, consumers: int) -> float:
    """Events/s published, delivered and acked with `consumers` consumers.

    Consumer `i` and publish call `i` use `stubs[i % len(stubs)]`.
    """
    stubs[0].CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(name="bench-e2e", filter=["bench.e2e"])
        )
    )
    acked = 0
    lock = threading.Lock()
    finished = threading.Event()
    calls = []

    def consume(stub: pb_grpc.EventBrokerServiceStub) -> None:
        nonlocal acked
        call = stub.Subscribe(
            pb.SubscribeRequest(
                subscription="bench-e2e",
                max_outstanding=500,
                max_batch_size=100,
                json_as_binary=True,
            )
        )
        calls.append(call)
        try:
            for response in call:
                stub.Ack(pb.AckRequest(ack_ids=[d.ack_id for d in response.deliveries]))
                with lock:
                    acked += len(response.deliveries)
                    if acked >= total:
                        finished.set()
        except grpc.RpcError:
            return

    threads = [
        threading.Thread(target=consume, args=(stubs[i % len(stubs)],), daemon=True)
        for i in range(consumers)
    ]
    for thread in threads:
        thread.start()
    request = pb.BatchPublishRequest(events=[_event("bench.e2e") for _ in range(100)])
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(
            pool.map(
                lambda i: stubs[i % len(stubs)].BatchPublish(request, timeout=30),
                range(total // 100),
            )
        )
    while not finished.wait(1.0):
        _progress("end to end (acked)", acked, total)
        if time.perf_counter() - start > TIME_LIMIT_S:
            break
    elapsed = time.perf_counter() - start
    print(file=sys.stderr)
    for call in calls:
        call.cancel()
    return min(acked, total) / elapsed


def run(database_url: str, events: int, log: Path) -> None:
    """Start a broker and run every workload against it."""
    broker = BrokerProcess(database_url, log).start()
    try:
        with grpc.insecure_channel(broker.target) as channel:
            stub = pb_grpc.EventBrokerServiceStub(channel)
            durability = "fsync per commit (SQLite WAL, synchronous=FULL)"
            if database_url.startswith("postgresql"):
                durability = "fsync per commit (synchronous_commit=on)"
            print(f"broker on {database_url.split(':')[0]}, {durability}, 1 KiB JSON events")
            workloads: list[tuple[str, Callable[[], str]]] = [
                (
                    "batched publish (100/call, 4 callers)",
                    lambda: f"{batched_publish([stub], events, 4):,.0f} events/s",
                ),
                (
                    "single publish (1/call, 16 callers)",
                    lambda: "{:,.0f} events/s, p50 {:.1f} ms, p99 {:.1f} ms".format(
                        *single_publish(stub, min(events, 5000), 16)
                    ),
                ),
                (
                    "end to end (publish, consume, ack; 4 consumers)",
                    lambda: f"{end_to_end([stub], events, 4):,.0f} events/s",
                ),
            ]
            for label, workload in workloads:
                print(f"{label:50} {workload()}", flush=True)
    finally:
        broker.terminate()


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        url = args.database_url or f"sqlite:///{Path(directory) / 'bench.db'}"
        run(url, args.events, Path(directory) / "broker.log")


if __name__ == "__main__":
    main()
