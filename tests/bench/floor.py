"""The floor under this broker's figures: a grpc.aio server that does nothing.

It serves the broker's own service with the same generated stubs, but `Publish`
and `BatchPublish` answer at once without storing anything, and `Subscribe`
streams ready-made batches of deliveries as fast as the client reads them. The
same load generators measured against it show what gRPC in Python costs by
itself: a figure of the broker divided by the floor's says how much of the
limit is left to our own code.

    .venv/bin/python -m tests.bench.floor --listen 127.0.0.1:0   # prints "port N"
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from grpc import aio

from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc

PAYLOAD = b'{"pad":"' + b"x" * 1000 + b'"}'  # the benchmark's 1 KiB JSON


class FloorServicer(pb_grpc.EventBrokerServiceServicer):
    """Answers publishes at once and streams canned deliveries."""

    def __init__(self) -> None:
        self._sequence = 0

    async def Publish(self, request: pb.PublishRequest, context: Any) -> pb.PublishResponse:
        """Accept the event without storing it."""
        self._sequence += 1
        return pb.PublishResponse(
            event_id=f"{self._sequence:026d}", status=pb.PUBLISH_STATUS_CREATED
        )

    async def BatchPublish(
        self, request: pb.BatchPublishRequest, context: Any
    ) -> pb.BatchPublishResponse:
        """Accept the events without storing them."""
        results = []
        for _ in request.events:
            self._sequence += 1
            results.append(
                pb.PublishResult(
                    event_id=f"{self._sequence:026d}", status=pb.PUBLISH_STATUS_CREATED
                )
            )
        return pb.BatchPublishResponse(results=results)

    async def Subscribe(self, request: pb.SubscribeRequest, context: Any) -> Any:
        """Stream batches of `max_batch_size` deliveries until the client leaves."""
        size = request.max_batch_size or 100
        while True:
            deliveries = []
            for _ in range(size):
                self._sequence += 1
                deliveries.append(
                    pb.Delivery(
                        ack_id=f"{self._sequence}-1",
                        event_id=f"{self._sequence:026d}",
                        name="bench.floor",
                        binary_data=PAYLOAD,
                        content_type="application/json",
                        attempt=1,
                    )
                )
            yield pb.SubscribeResponse(deliveries=deliveries)

    async def Ack(self, request: pb.AckRequest, context: Any) -> pb.AckResponse:
        """Accept the acks without looking at them."""
        return pb.AckResponse()

    async def CreateSubscription(
        self, request: pb.CreateSubscriptionRequest, context: Any
    ) -> pb.CreateSubscriptionResponse:
        """Accept the subscription without keeping it."""
        return pb.CreateSubscriptionResponse(subscription=request.subscription)

    async def DeleteSubscription(
        self, request: pb.DeleteSubscriptionRequest, context: Any
    ) -> pb.DeleteSubscriptionResponse:
        """Nothing to delete."""
        return pb.DeleteSubscriptionResponse()


async def serve(listen: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = aio.server()
    servicer = FloorServicer()  # type: ignore[abstract]  # serves what the benchmark calls
    pb_grpc.add_EventBrokerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"floor listening on port {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(None)


def main() -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
