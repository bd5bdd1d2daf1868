"""Graceful shutdown on SIGTERM: stop accepting, end streams, give leases back, exit 0."""

from __future__ import annotations

from pathlib import Path

import grpc

from eventbroker import Client
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.processes import BrokerProcess
from tests.e2e.streams import StreamReader

WAIT_S = 15.0


def test_sigterm_ends_streams_gives_leases_back_and_exits_cleanly(tmp_path: Path) -> None:
    broker = BrokerProcess(f"sqlite:///{tmp_path / 'broker.db'}", tmp_path / "broker.log")
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
        assert broker.proc.wait(WAIT_S) == 0
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
