"""Reading a Subscribe stream from a test without blocking the test on it."""

from __future__ import annotations

import queue
import threading
from typing import Any

import grpc

from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc

WAIT_S = 10.0


class StreamReader:
    """Reads a Subscribe stream on a thread into a queue of deliveries."""

    def __init__(self, stub: pb_grpc.EventBrokerServiceStub, request: pb.SubscribeRequest) -> None:
        self.call: Any = stub.Subscribe(request)
        self.messages = 0
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self._queue: queue.Queue[pb.Delivery] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.messages += 1
                for delivery in response.deliveries:
                    self._queue.put(delivery)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error
        finally:
            self.ended.set()

    def take(self, count: int, timeout: float = WAIT_S) -> list[pb.Delivery]:
        """Wait for `count` deliveries; fail the test if they do not come in time."""
        got = []
        for _ in range(count):
            try:
                got.append(self._queue.get(timeout=timeout))
            except queue.Empty as error:
                raise AssertionError(f"expected {count} deliveries, got {len(got)}") from error
        return got

    def take_available(self, timeout: float) -> list[pb.Delivery]:
        """Wait up to `timeout` for one delivery, then take all that are queued."""
        try:
            got = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                got.append(self._queue.get_nowait())
            except queue.Empty:
                return got

    def nothing_within(self, seconds: float) -> bool:
        """True when no delivery arrives within `seconds` (for "must not deliver" checks)."""
        try:
            self._queue.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        """Cancel the stream (the consumer disconnects) and wait for the reader."""
        self.call.cancel()
        self.ended.wait(WAIT_S)


def subscribe(
    stub: pb_grpc.EventBrokerServiceStub, readers: list[StreamReader], name: str, **kwargs: Any
) -> StreamReader:
    """Open a reader on a subscription, closed by the `readers` fixture after the test."""
    reader = StreamReader(stub, pb.SubscribeRequest(subscription=name, **kwargs))
    readers.append(reader)
    return reader
