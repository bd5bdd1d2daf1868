"""Broker processes and publishers for the fault tests.

A fault test runs `broker serve` in child processes so that it can kill one
with SIGKILL, and publishes from threads that record each outcome in a
`QueueChecker`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc

from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.checker import QueueChecker

START_TIMEOUT_S = 30
_PORT_RE = re.compile(r"\(port (\d+)\)")


class BrokerProcess:
    """`broker serve` in a child process, on a database of the test's."""

    def __init__(self, database_url: str, log: Path, args: tuple[str, ...] = ()) -> None:
        self.database_url = database_url
        self.log = log
        self.args = args  # more `broker serve` options
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> BrokerProcess:
        """Start it and wait until it listens (its log names the port)."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from broker.cli import main; main()",
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--http-listen",
                    "127.0.0.1:0",
                    "--database-url",
                    self.database_url,
                    *self.args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            match = _PORT_RE.search(text)
            if match:
                self.port = int(match.group(1))
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited early:\n{text}")
            time.sleep(0.05)
        raise AssertionError("broker did not start in time")

    @property
    def target(self) -> str:
        """HOST:PORT to dial."""
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        """Everything the process has logged so far."""
        return self.log.read_bytes().decode(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """Kill -9: no shutdown, no flush, no lease given back."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM and wait, if it still runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def publish_batches(target: str, checker: QueueChecker, stop: threading.Event, batch: int) -> None:
    """Publish batches of `orders.created` until stopped, recording each outcome.

    A call that breaks off (the broker is gone) leaves its batch unknown and ends
    the publisher.
    """
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.EventBrokerServiceStub(channel)
        while not stop.is_set():
            ids = [uuid.uuid4().hex for _ in range(batch)]
            for publish_id in ids:
                checker.attempt(publish_id)
            request = pb.BatchPublishRequest(
                events=[pb.Event(name="orders.created", id=i) for i in ids]
            )
            try:
                stub.BatchPublish(request, timeout=5)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    for publish_id in ids:
                        checker.failed(publish_id)
                return  # the broker is gone: outcome unknown
            for publish_id in ids:
                checker.ok(publish_id)
