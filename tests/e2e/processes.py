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
from collections.abc import Sequence
from pathlib import Path

import grpc

from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.checker import QueueChecker

START_TIMEOUT_S = 30
_PORT_RE = re.compile(r"\(port (\d+)\)")


class BrokerProcess:
    """`broker serve` in a child process, on a database of the test's.

    `listen` is its gRPC address (a port of 0: any free one); `prefix` is put
    before the command (`ip netns exec NAME` runs it in a network namespace,
    which keeps its process id); `args` are more `broker serve` options
    (`--insecure` lets it listen beyond loopback without API keys).
    """

    def __init__(
        self,
        database_url: str,
        log: Path,
        args: tuple[str, ...] = (),
        *,
        listen: str = "127.0.0.1:0",
        prefix: Sequence[str] = (),
    ) -> None:
        self.database_url = database_url
        self.log = log
        self.args = args
        self.listen = listen
        self.prefix = tuple(prefix)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> BrokerProcess:
        """Start it and wait until it listens (its log names the port)."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-c",
                    "from broker.cli import main; main()",
                    "serve",
                    "--listen",
                    self.listen,
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
        return f"{self.listen.rsplit(':', 1)[0]}:{self.port}"

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


#: How long a publisher that goes on after a failed call waits before the next.
RETRY_PAUSE_S = 0.1


def publish_batches(
    target: str,
    checker: QueueChecker,
    stop: threading.Event,
    batch: int,
    *,
    keep_going: bool = False,
) -> None:
    """Publish batches of `orders.created` until stopped, recording each outcome.

    A call that breaks off leaves its batch unknown. Then the publisher ends (the
    broker is gone), or with `keep_going` (the broker is slow or cut off for a
    while) pauses briefly and publishes new batches.
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
                if not keep_going:
                    return  # the broker is gone: outcome unknown
                stop.wait(RETRY_PAUSE_S)
                continue
            for publish_id in ids:
                checker.ok(publish_id)
