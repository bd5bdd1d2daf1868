"""The attach signal: Subscribe's response headers arrive before any delivery."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from grpc import aio

from eventbroker import AsyncClient, Client, Consumer, Context, Message, NotFound
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc

WAIT_S = 10.0


def test_headers_arrive_before_any_event_is_published(broker_target: str) -> None:
    with Client(broker_target) as client:
        client.create_subscription("mails", ["user.*"])

    async def main() -> None:
        async with aio.insecure_channel(broker_target) as channel:
            stub = pb_grpc.EventBrokerServiceStub(channel)
            call = stub.Subscribe(pb.SubscribeRequest(subscription="mails", consumer_name="café"))
            metadata = await asyncio.wait_for(call.initial_metadata(), WAIT_S)
            headers = dict(metadata)
            assert headers["eventbroker-attached"] == "1"
            # A non-ASCII consumer name travels %-escaped: header values are ASCII.
            assert str(headers["eventbroker-consumer"]).startswith("caf%C3%A9#")
            assert not call.done()  # headers, and no delivery: nothing was published yet
            async with AsyncClient(broker_target) as client:
                published = await client.publish("user.joined", {"n": 1})
            response = await asyncio.wait_for(call.read(), WAIT_S)
            assert isinstance(response, pb.SubscribeResponse)
            assert [d.event_id for d in response.deliveries] == [published.event_id]
            call.cancel()

    asyncio.run(main())


def test_open_subscription_is_attached_then_receives(broker_target: str) -> None:
    async def main() -> None:
        async with AsyncClient(broker_target) as client:
            await client.create_subscription("mails", ["user.*"])
            stream = client.open_subscription("mails", consumer_name="mailer")
            consumer_id = await asyncio.wait_for(stream.attached(), WAIT_S)
            assert consumer_id.startswith("mailer#")
            published = await client.publish("user.joined", {"plan": "pro"})
            batches = aiter(stream)
            batch = await asyncio.wait_for(anext(batches), WAIT_S)
            assert [m.event_id for m in batch] == [published.event_id]
            assert batch[0].data == {"plan": "pro"}
            stream.cancel()

    asyncio.run(main())


def test_attached_raises_the_error_of_a_stream_that_failed(broker_target: str) -> None:
    async def main() -> None:
        async with AsyncClient(broker_target) as client:
            stream = client.open_subscription("nobody-made-this")
            with pytest.raises(NotFound) as caught:
                await asyncio.wait_for(stream.attached(), WAIT_S)
            assert caught.value.code == grpc.StatusCode.NOT_FOUND

    asyncio.run(main())


def test_consumer_says_when_it_is_attached(broker_target: str) -> None:
    with Client(broker_target) as client:
        client.create_subscription("mails", ["user.*"])
        consumer = Consumer("mails", target=broker_target)
        received = threading.Event()

        @consumer.on("user.joined")
        async def handle(msg: Message, ctx: Context) -> None:
            received.set()

        assert not consumer.attached
        runner = threading.Thread(target=consumer.run)
        runner.start()
        try:
            assert consumer.wait_attached(WAIT_S)
            client.publish("user.joined", {"n": 1})
            assert received.wait(WAIT_S)
        finally:
            consumer.stop()
            runner.join(WAIT_S)
        assert not consumer.attached
