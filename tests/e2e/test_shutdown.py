"""Graceful shutdown on SIGTERM: end streams, settle what is held, give the rest back, exit 0."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from broker.app import FINAL_CALLS_S
from eventbroker import Client
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.processes import BrokerProcess
from tests.e2e.streams import StreamReader

WAIT_S = 15.0
#: The grace period of the broker that waits for a held delivery nobody settles.
SHORT_GRACE_S = 3.0


def test_sigterm_ends_streams_gives_leases_back_and_exits_cleanly(tmp_path: Path) -> None:
    broker = BrokerProcess(
        f"sqlite:///{tmp_path / 'broker.db'}",
        tmp_path / "broker.log",
        args=("--shutdown-grace-s", str(SHORT_GRACE_S)),
    )
    broker.start()
    assert broker.proc is not None
    try:
        with Client(broker.target) as client:
            client.create_subscription("jobs", "job.*", ack_deadline="10m")
            held_id = client.publish("job.run").event_id
        channel = grpc.insecure_channel(broker.target)
        reader = StreamReader(
            pb_grpc.EventBrokerServiceStub(channel),
            pb.SubscribeRequest(subscription="jobs", max_outstanding=5),
        )
        (held,) = reader.take(1)
        assert held.event_id == held_id
        broker.proc.terminate()  # SIGTERM, with a delivery held and not acked
        asked = time.monotonic()
        assert broker.proc.wait(WAIT_S) == 0
        # It waited for the held delivery to be settled until the part of the grace
        # period kept for calls still in flight, and no longer than the grace period.
        waited_at_least = SHORT_GRACE_S - min(FINAL_CALLS_S, SHORT_GRACE_S / 4)
        assert waited_at_least - 0.1 <= time.monotonic() - asked < SHORT_GRACE_S + 5
        assert reader.ended.wait(WAIT_S)
        assert reader.error is not None
        assert reader.error.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (reader.error.details() or "")
        reader.close()
        channel.close()
        log = broker.log_text()
        assert "shutting down" in log and "broker stopped" in log
        broker.start()
        with Client(broker.target) as client:
            status = client.get_event(held_id).delivery("jobs")
        # Given back at shutdown, not left to its ten-minute deadline.
        assert status is not None and status.state == "ready", status
        assert status.attempts == 1
        assert [a.outcome for a in status.history] == ["released"]
    finally:
        broker.terminate()


SLOW_CONSUMER_SCRIPT = """
import sys, time
from pathlib import Path
from eventbroker import Consumer

consumer = Consumer("jobs", target=sys.argv[1], max_outstanding=1)
release = Path(sys.argv[2])

@consumer.on("job.run")
def work(msg, ctx):  # a job that outlives the broker's SIGTERM
    print("started", msg.event_id, msg.attempt, flush=True)
    while not release.exists():
        time.sleep(0.01)
    print("finished", msg.event_id, flush=True)

consumer.run()
print("drained", flush=True)
"""
#: Long enough that a broker which refused calls at once would be gone.
GRACE_S = 30.0
#: How long the job goes on after the consumer saw its stream end: work of seconds.
WORK_AFTER_SIGTERM_S = 2.0


def wait_for_text(path: Path, text: str, *, also: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until the file holds `text` (failing early if `also` exits first)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        assert also is None or also.poll() is None, f"process exited; {path.name} holds:\n" + (
            path.read_text(errors="replace") if path.exists() else ""
        )
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in {path.name}:\n{path.read_text(errors='replace')}")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_sigterm_keeps_serving_the_acks_of_running_handlers(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A handler that finishes seconds after the SIGTERM still gets its ack in: done once."""
    url = (
        f"sqlite:///{tmp_path / 'broker.db'}"
        if database == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    broker = BrokerProcess(
        url, tmp_path / "broker.log", args=("--shutdown-grace-s", str(GRACE_S))
    ).start()
    assert broker.proc is not None
    out, err, release = tmp_path / "consumer.out", tmp_path / "consumer.err", tmp_path / "release"
    script = tmp_path / "consumer.py"
    script.write_text(SLOW_CONSUMER_SCRIPT)
    consumer: subprocess.Popen[bytes] | None = None
    try:
        with Client(broker.target) as client:
            client.create_subscription("jobs", "job.*", ack_deadline="10m")
            event_id = client.publish("job.run").event_id
        with out.open("wb") as stdout, err.open("wb") as stderr:
            consumer = subprocess.Popen(
                [sys.executable, str(script), broker.target, str(release)],
                stdout=stdout,
                stderr=stderr,
            )
        wait_for_text(out, f"started {event_id} 1", also=consumer)
        broker.proc.terminate()
        asked = time.monotonic()
        wait_for_text(err, "broker shutting down", also=consumer)  # its stream ended
        time.sleep(WORK_AFTER_SIGTERM_S)
        release.touch()
        wait_for_text(out, f"finished {event_id}", also=consumer)
        assert broker.proc.wait(GRACE_S + 5) == 0
        stopped_after_s = time.monotonic() - asked
        log = broker.log_text()

        broker.start()
        with Client(broker.target) as client:
            status = client.get_event(event_id).delivery("jobs")
        assert status is not None and status.state == "acked", status
        assert status.attempts == 1
        assert "released" not in [a.outcome for a in status.history]
        # It stopped once nothing was held any more, not at the end of the grace period.
        assert stopped_after_s < GRACE_S / 2
        assert "waiting up to" in log and "still held" not in log, log
        consumer.terminate()  # it drains and exits
        assert consumer.wait(WAIT_S) == 0, err.read_text(errors="replace")
        lines = out.read_text().splitlines()
        assert lines == [f"started {event_id} 1", f"finished {event_id}", "drained"]
        assert "could not ack" not in err.read_text(errors="replace")
    finally:
        if consumer is not None and consumer.poll() is None:
            consumer.kill()
            consumer.wait()
        broker.terminate()
