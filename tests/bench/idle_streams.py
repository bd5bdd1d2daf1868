"""Hold Subscribe streams open and idle, in a process of their own, for the memory workload.

    python -m tests.bench.idle_streams TARGET STREAMS OPEN_PER_S MAX_SECONDS SUBSCRIPTION...

Opens STREAMS streams to the broker at TARGET, OPEN_PER_S a second, spread
round-robin over the subscriptions and over channels of at most 500 streams
each (the broker allows 1,000 per connection). A stream the broker ends is
opened again after a backoff, as the client's consumer runtime does. Holds
them until standard input closes or MAX_SECONDS pass, whichever comes first;
then prints one line, `reopened=N errors=CODE:COUNT,...`, and exits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
import sys

import grpc
from grpc import aio

from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc

STREAMS_PER_CHANNEL = 500
WAVE = 10  # streams opened at once
REOPEN_BACKOFF_S = (1.0, 8.0)  # first and longest pause before reopening, with full jitter


class Holder:
    """Keeps streams open until told to stop, reopening those the broker ends."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.reopened = 0
        self.errors: collections.Counter[str] = collections.Counter()

    async def hold(
        self, stub: pb_grpc.EventBrokerServiceAsyncStub, request: pb.SubscribeRequest
    ) -> None:
        """One stream, open until `stop`."""
        backoff_s = REOPEN_BACKOFF_S[0]
        while not self.stop.is_set():
            call = stub.Subscribe(request)
            ended = asyncio.ensure_future(self._drain(call))
            stopping = asyncio.ensure_future(self.stop.wait())
            await asyncio.wait((ended, stopping), return_when=asyncio.FIRST_COMPLETED)
            if self.stop.is_set():
                call.cancel()
                ended.cancel()
                await asyncio.gather(ended, return_exceptions=True)
                return
            stopping.cancel()
            self.errors[await ended] += 1
            self.reopened += 1
            await asyncio.sleep(random.uniform(0, backoff_s))
            backoff_s = min(backoff_s * 2, REOPEN_BACKOFF_S[1])

    @staticmethod
    async def _drain(call: aio.UnaryStreamCall[pb.SubscribeRequest, pb.SubscribeResponse]) -> str:
        try:
            async for _ in call:
                pass
        except grpc.RpcError as error:
            return str(error.code().name)
        return "OK"


async def _stdin_closed() -> None:
    """Return once standard input is readable: the parent closed it (or wrote to it)."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), readable.set)
    try:
        await readable.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())


async def hold(
    target: str, streams: int, open_per_s: float, max_s: float, subscriptions: list[str]
) -> Holder:
    """Open the streams, wait for the end signal, close them."""
    channels = [
        aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(math.ceil(streams / STREAMS_PER_CHANNEL))
    ]
    stubs = [pb_grpc.EventBrokerServiceStub(channel) for channel in channels]
    holder = Holder(asyncio.Event())
    tasks = []
    end = asyncio.ensure_future(asyncio.wait_for(_stdin_closed(), max_s))
    for index in range(streams):
        request = pb.SubscribeRequest(
            subscription=subscriptions[index % len(subscriptions)],
            max_outstanding=10,
            consumer_name=f"idle-{index}",
        )
        stub = stubs[index // STREAMS_PER_CHANNEL]
        tasks.append(asyncio.create_task(holder.hold(stub, request)))
        if index % WAVE == WAVE - 1:
            await asyncio.sleep(WAVE / open_per_s)
        if end.done():
            break
    with contextlib.suppress(TimeoutError):
        await end
    holder.stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(channel.close() for channel in channels))
    return holder


def main() -> None:
    """Parse the arguments, hold the streams, say how many had to be reopened."""
    target, streams, open_per_s, max_s, *subscriptions = sys.argv[1:]
    holder = asyncio.run(hold(target, int(streams), float(open_per_s), float(max_s), subscriptions))
    errors = ",".join(f"{code}:{count}" for code, count in sorted(holder.errors.items()))
    print(f"reopened={holder.reopened} errors={errors}", flush=True)


if __name__ == "__main__":
    main()
