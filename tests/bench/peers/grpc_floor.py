"""The floor: a grpc.aio server of the broker's service that stores nothing.

Driven by the very workloads the broker gets (the same stubs, channels,
callers and batches), it shows what gRPC in Python costs by itself, so the
broker's single publishes and streams can be read against their limit.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

from tests.bench.peers.base import Endpoints, NotApplicable, Plan, Progress, Result
from tests.bench.peers.this_broker import Channels, ServicePeer

START_TIMEOUT_S = 30.0


class GrpcFloorPeer(ServicePeer):
    """`python -m tests.bench.floor` in a child process."""

    key = "grpc-floor"
    label = "grpc.aio floor"
    durability_short = "stores nothing"
    durability = "stores nothing: answers publishes at once, streams canned deliveries"

    def __init__(self, plan: Plan, progress: Progress, endpoints: Endpoints) -> None:
        super().__init__(plan, progress, endpoints)
        self.process: subprocess.Popen[str] | None = None

    async def start(self) -> None:
        """Start the floor server and open the channels."""
        self.process = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "tests.bench.floor", "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(
            asyncio.to_thread(self.process.stdout.readline), START_TIMEOUT_S
        )
        match = re.search(r"port (\d+)", line)
        if match is None:
            raise RuntimeError(f"the floor server did not start: {line!r}")
        self.channels = Channels(f"127.0.0.1:{match.group(1)}")

    async def stop(self) -> None:
        """Close the channels and stop the server."""
        if self.channels is not None:
            await self.channels.close()
            self.channels = None
        if self.process is not None:
            self.process.terminate()
            await asyncio.to_thread(self.process.wait, 10)
            self.process = None

    def server_pid(self) -> int | None:
        """The floor server, whose CPU per event is the broker's lower bound."""
        return self.process.pid if self.process is not None else None

    async def latency(self) -> Result:
        """Not measured: the floor's deliveries are not the events published."""
        raise NotApplicable("the floor streams canned deliveries, not the events published")
