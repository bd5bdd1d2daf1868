"""Consumers that die or crawl: their work comes back, and nobody else waits for them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from google.protobuf import duration_pb2

from eventbroker import Client
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.streams import StreamReader, subscribe

WAIT_S = 10.0

HANGING_CONSUMER = """
import sys, time
from eventbroker import Consumer

consumer = Consumer("jobs", target=sys.argv[1], max_outstanding=5)

@consumer.on("job.run")
def work(msg, ctx):
    print("started", msg.event_id, msg.attempt, flush=True)
    time.sleep(3600)  # stuck until killed

consumer.run()
"""


def test_a_consumer_killed_mid_handler_gives_its_work_back(
    stub: pb_grpc.EventBrokerServiceStub,
    broker_target: str,
    readers: list[StreamReader],
    tmp_path: Path,
) -> None:
    stub.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=pb.Subscription(
                name="jobs",
                filter=["job.*"],
                ack_deadline=duration_pb2.Duration(seconds=2),
                retry_policy=pb.RetryPolicy(
                    min_backoff=duration_pb2.Duration(seconds=0),
                    max_backoff=duration_pb2.Duration(seconds=0),
                ),
            )
        )
    )
    with Client(broker_target) as client:
        published = client.publish("job.run", {"n": 1})
    script = tmp_path / "consumer.py"
    script.write_text(HANGING_CONSUMER)
    proc = subprocess.Popen(
        [sys.executable, str(script), broker_target], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["started", published.event_id, "1"]
        # The kernel closes a killed process's connection, and the broker gives its
        # leases back at once; were the connection to linger, the 2 s deadline would.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    reader = subscribe(stub, readers, "jobs", max_outstanding=5)
    (again,) = reader.take(1, timeout=WAIT_S)
    assert again.event_id == published.event_id
    assert again.attempt == 2
    assert stub.Ack(pb.AckRequest(ack_ids=[again.ack_id])).not_applied_ack_ids == []


def test_a_slow_consumer_slows_only_itself(
    stub: pb_grpc.EventBrokerServiceStub, readers: list[StreamReader]
) -> None:
    for name in ("work", "audit"):
        stub.CreateSubscription(
            pb.CreateSubscriptionRequest(subscription=pb.Subscription(name=name, filter=["task.*"]))
        )
    # The slow consumer takes one delivery and never acks it; credit holds it to one.
    slow = subscribe(stub, readers, "work", max_outstanding=1)
    stub.BatchPublish(pb.BatchPublishRequest(events=[pb.Event(name="task.x")] * 50))
    (held,) = slow.take(1)
    fast = subscribe(stub, readers, "work", max_outstanding=100)
    other = subscribe(stub, readers, "audit", max_outstanding=100)
    got: list[pb.Delivery] = []
    while len(got) < 49:
        batch = fast.take_available(WAIT_S)
        assert batch, f"the fast consumer got {len(got)} of 49"
        got.extend(batch)
        stub.Ack(pb.AckRequest(ack_ids=[d.ack_id for d in batch]))
    assert held.event_id not in {d.event_id for d in got}
    assert len(other.take(50)) == 50  # another subscription is not held up either
    assert slow.nothing_within(0.3)  # and the slow one was never sent past its credit
