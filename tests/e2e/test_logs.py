"""Structured log lines carry the request id a caller sent."""

from __future__ import annotations

from pathlib import Path

import grpc

from broker.logs import request_id_from
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.processes import BrokerProcess


def test_log_lines_carry_the_callers_request_id(tmp_path: Path) -> None:
    broker = BrokerProcess(f"sqlite:///{tmp_path / 'broker.db'}", tmp_path / "broker.log")
    broker.start()
    try:
        with grpc.insecure_channel(broker.target) as channel:
            pb_grpc.EventBrokerServiceStub(channel).CreateSubscription(
                pb.CreateSubscriptionRequest(
                    subscription=pb.Subscription(name="billing", filter=["order.*"])
                ),
                metadata=(("x-request-id", "req-42"),),
            )
    finally:
        broker.terminate()
    lines = broker.log_text().splitlines()
    (created,) = [line for line in lines if "subscription billing created" in line]
    assert "request_id=req-42 " in created
    assert created.startswith("time=") and " level=INFO " in created
    started = next(line for line in lines if "broker listening" in line)
    assert "request_id=- " in started


def test_request_ids_are_cleaned_and_bounded() -> None:
    assert request_id_from([("X-Request-Id", "abc 123\n")]) == "abc123"
    assert request_id_from([("x-request-id", b"x" * 500)]) == "x" * 128
    assert request_id_from([("other", "1")]) is None
    assert request_id_from([("x-request-id", " \t")]) is None
