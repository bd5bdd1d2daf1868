"""A bounded soak: publish and consume at a steady rate; record the broker's RSS and fds.

Starts `broker serve` in a child process, publishes batches at a steady rate
while one consumer acks everything, and samples the broker's resident memory
and open file descriptors at intervals. Prints a table as it goes. Bounded in
time (`--seconds`) and rate (`--rate`).

    .venv/bin/python -m tests.soak.soak [--seconds 600] [--rate 500] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.processes import BrokerProcess
from tests.e2e.streams import StreamReader

SAMPLE_EVERY_S = 5.0
BATCH = 10
PAYLOAD = b'{"pad":"' + b"x" * 1000 + b'"}'


@dataclass(frozen=True)
class Sample:
    """One reading of the broker process."""

    at_s: float
    rss_mib: float
    fds: int
    published: int
    acked: int


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    """Open file descriptors of a process, from /proc."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def soak(database_url: str, seconds: float, rate: int, log: Path) -> list[Sample]:
    """Run the load for `seconds` and return the samples (the first at the start)."""
    broker = BrokerProcess(database_url, log).start()
    assert broker.proc is not None
    pid = broker.proc.pid
    samples: list[Sample] = []
    counts = {"published": 0, "acked": 0}
    stop = threading.Event()
    try:
        channel = grpc.insecure_channel(broker.target)
        stub = pb_grpc.EventBrokerServiceStub(channel)
        stub.CreateSubscription(
            pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(name="soak", filter=["soak.>"])
            )
        )
        reader = StreamReader(stub, pb.SubscribeRequest(subscription="soak", max_outstanding=500))

        def publish() -> None:
            request = pb.BatchPublishRequest(
                events=[
                    pb.Event(name="soak.tick", binary_data=PAYLOAD, content_type="application/json")
                ]
                * BATCH
            )
            interval = BATCH / rate
            next_at = time.monotonic()
            while not stop.is_set():
                stub.BatchPublish(request, timeout=30)
                counts["published"] += BATCH
                next_at += interval
                stop.wait(max(0.0, next_at - time.monotonic()))

        def consume() -> None:
            while not stop.is_set():
                batch = reader.take_available(0.5)
                if batch:
                    stub.Ack(pb.AckRequest(ack_ids=[d.ack_id for d in batch]), timeout=30)
                    counts["acked"] += len(batch)

        workers = [threading.Thread(target=f, daemon=True) for f in (publish, consume)]
        for worker in workers:
            worker.start()
        started = time.monotonic()
        print(f"{'t (s)':>7} {'RSS MiB':>9} {'fds':>5} {'published':>10} {'acked':>10}", flush=True)
        while True:
            elapsed = time.monotonic() - started
            sample = Sample(
                elapsed, rss_mib(pid), open_fds(pid), counts["published"], counts["acked"]
            )
            samples.append(sample)
            print(
                f"{sample.at_s:7.0f} {sample.rss_mib:9.1f} {sample.fds:5d} "
                f"{sample.published:10d} {sample.acked:10d}",
                flush=True,
            )
            if elapsed >= seconds:
                break
            stop.wait(min(SAMPLE_EVERY_S, seconds - elapsed))
        stop.set()
        for worker in workers:
            worker.join(30)
        reader.close()
        channel.close()
    finally:
        stop.set()
        broker.terminate()
    return samples


def main() -> None:
    """Parse arguments and soak."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--rate", type=int, default=500, help="events per second")
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        url = args.database_url or f"sqlite:///{Path(directory) / 'soak.db'}"
        soak(url, args.seconds, args.rate, Path(directory) / "broker.log")


if __name__ == "__main__":
    main()
