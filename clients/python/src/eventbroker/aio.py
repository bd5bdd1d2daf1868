"""`AsyncClient`: the asyncio twin of `Client`, over grpc.aio.

Same methods and arguments as `Client` (see there for the details), each a
coroutine; `subscribe` and `tail` are async iterators. Requests and responses go
through `eventbroker._convert`, the same code the blocking client uses.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar, Unpack
from urllib.parse import unquote

import grpc
from grpc import aio
from tenacity import AsyncRetrying

from eventbroker import _convert as convert
from eventbroker import _exist_ok as exist_ok_check
from eventbroker import _publish as publishing
from eventbroker import _tracing as tracing
from eventbroker._batching import AsyncPublisher, PublishBatching
from eventbroker._config import ConnectionConfig, TLSConfig
from eventbroker._publish import PUBLISH_TIMEOUT_S
from eventbroker.client import _UNSET, DEAD_LETTER_PAGE_SIZE, DEFAULT_TIMEOUT_S, _Unset
from eventbroker.errors import AlreadyExists, BrokerError, error_from_rpc
from eventbroker.types import (
    AckIds,
    AckResult,
    DeadLetterInfo,
    DeadLetterPage,
    DelayLike,
    DurationLike,
    EventInfo,
    EventSpec,
    Message,
    PublishResult,
    SeekResult,
    Stats,
    Subscription,
    SubscriptionChanges,
)
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")

#: Subscribe's response headers, sent once the consumer is attached (see Subscribe in the proto).
ATTACHED_HEADER = "eventbroker-attached"
CONSUMER_HEADER = "eventbroker-consumer"


class SubscribeStream:
    """One open Subscribe call.

    `attached()` waits for the broker to attach it, iterating it yields its
    batches of deliveries, and `cancel()` detaches.
    """

    def __init__(
        self, call: aio.UnaryStreamCall[pb.SubscribeRequest, pb.SubscribeResponse]
    ) -> None:
        self._call = call

    async def attached(self) -> str:
        """Wait until the consumer is attached, before any delivery; return its consumer id.

        The id is the one attempt history shows (empty from a broker that sends no
        attach headers: that one answers here with its first delivery). Raises the
        stream's `BrokerError` when it failed instead (an unknown subscription).
        """
        metadata = await self._call.initial_metadata()
        headers = {key: value for key, value in metadata or () if isinstance(value, str)}
        if headers.get(ATTACHED_HEADER) == "1":
            return unquote(headers.get(CONSUMER_HEADER, ""))
        if self._call.done() and (code := await self._call.code()) != grpc.StatusCode.OK:
            failure = aio.AioRpcError(
                code,
                metadata,
                await self._call.trailing_metadata(),
                await self._call.details(),
            )
            raise error_from_rpc(failure)
        return ""

    async def __aiter__(self) -> AsyncIterator[list[Message]]:
        try:
            async for response in self._call:
                yield convert.messages(response)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    def cancel(self) -> None:
        """End the stream: the consumer detaches and gives back what it holds."""
        self._call.cancel()


class AsyncClient:
    """An asyncio connection to the broker; arguments as for `Client`.

    The channel is opened on the first call, inside the running event loop, so
    the client may be built anywhere. Use `async with`, or `await close()`:

        async with AsyncClient() as client:
            await client.publish("user.joined", {"plan": "pro"})
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        tls: bool | TLSConfig | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        publish_batching: bool | PublishBatching = True,
    ) -> None:
        self._config = ConnectionConfig.resolve(target, api_key, tls)
        self._timeout = timeout
        self._batching = PublishBatching.of(publish_batching)
        self._match_warnings = publishing.MatchWarnings()
        self._channel: aio.Channel | None = None
        self._stub_instance: pb_grpc.EventBrokerServiceAsyncStub | None = None
        self._publisher_instance: AsyncPublisher | None = None

    @property
    def target(self) -> str:
        """The `HOST:PORT` this client dials."""
        return self._config.target

    @property
    def _stub(self) -> pb_grpc.EventBrokerServiceAsyncStub:
        if self._stub_instance is None:
            self._channel = self._config.aio_channel()
            self._stub_instance = pb_grpc.EventBrokerServiceStub(self._channel)
        return self._stub_instance

    @property
    def _publisher(self) -> AsyncPublisher:
        if self._publisher_instance is None:
            self._publisher_instance = AsyncPublisher(self._batching, self._send_events)
        return self._publisher_instance

    async def close(self) -> None:
        """Close the connection, once the publishes under way have their results; streams end."""
        if self._publisher_instance is not None:
            await self._publisher_instance.drain()
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stub_instance = None
        self._publisher_instance = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        call_timeout: float | _Unset | None = _UNSET,
    ) -> Resp:
        limit = self._timeout if isinstance(call_timeout, _Unset) else call_timeout
        try:
            return await method(request, timeout=limit, metadata=self._config.metadata)
        except grpc.RpcError as error:
            # Unchained: all the grpc error held is on the BrokerError, and its frames
            # would only stand between the caller and the reason.
            raise error_from_rpc(error, request) from None

    # -- publishing ----------------------------------------------------------

    async def publish(
        self,
        name: str,
        data: Any = None,
        *,
        id: str | None = None,
        delay: DelayLike = None,
        priority: int = 0,
        ordering_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
        timeout: DurationLike | None = PUBLISH_TIMEOUT_S,  # noqa: ASYNC109 (a gRPC deadline, as in Client)
    ) -> PublishResult:
        """Publish one event (see `Client.publish`; joined with others as it says)."""
        spec = EventSpec(
            name=name,
            data=data,
            id=id,
            delay=delay,
            priority=priority,
            ordering_key=ordering_key,
            headers=headers,
            content_type=content_type,
        )
        (spec,) = publishing.with_event_ids([spec])
        with tracing.Publishing([spec], target=self.target) as traced:
            (spec,) = traced.specs
            request = convert.publish_request(spec)
            deadline = publishing.Deadline(timeout, self._timeout)
            if self._batching.enabled:
                result = await self._publisher.publish(spec.name, request.event, deadline)
            else:
                result = await self._publish_alone(request, deadline, spec.name)
            traced.done([result])
        self._match_warnings.check([spec.name], [result])
        return result

    async def _publish_alone(
        self, request: pb.PublishRequest, deadline: publishing.Deadline, name: str
    ) -> PublishResult:
        """One event in a Publish call of its own, retried as `publish` says."""

        async def attempt() -> pb.PublishResponse:
            return await self._call(
                self._stub.Publish, request, call_timeout=deadline.attempt_timeout_s()
            )

        retrying = AsyncRetrying(**deadline.retry_options(f"publish of {name}"))
        try:
            response: pb.PublishResponse = await retrying(attempt)
        except BrokerError as error:
            raise deadline.failure(error) from None
        return convert.publish_result(response)

    async def _send_events(
        self, events: Sequence[pb.Event], timeout_s: float | None
    ) -> list[PublishResult]:
        """One call for the events the publisher joined: a Publish for one, else a BatchPublish."""
        if len(events) == 1:
            request = pb.PublishRequest(event=events[0])
            response = await self._call(self._stub.Publish, request, call_timeout=timeout_s)
            return [convert.publish_result(response)]
        batch = pb.BatchPublishRequest(events=events)
        return convert.batch_publish_results(
            await self._call(self._stub.BatchPublish, batch, call_timeout=timeout_s)
        )

    async def publish_batch(
        self,
        events: Iterable[EventSpec | Mapping[str, Any]],
        *,
        timeout: DurationLike | None = PUBLISH_TIMEOUT_S,  # noqa: ASYNC109 (a gRPC deadline, as in Client)
    ) -> list[PublishResult]:
        """Publish many events in one transaction, all or none (see `Client.publish_batch`)."""
        specs = publishing.with_event_ids(convert.event_specs(events))
        with tracing.Publishing(specs, target=self.target, batch=True) as traced:
            request = convert.batch_publish_request(traced.specs)
            deadline = publishing.Deadline(timeout, self._timeout)

            async def attempt() -> pb.BatchPublishResponse:
                return await self._call(
                    self._stub.BatchPublish, request, call_timeout=deadline.attempt_timeout_s()
                )

            retrying = AsyncRetrying(**deadline.retry_options(f"batch publish of {len(specs)}"))
            try:
                response: pb.BatchPublishResponse = await retrying(attempt)
            except BrokerError as error:
                raise deadline.failure(error) from None
            results = convert.batch_publish_results(response)
            traced.done(results)
        self._match_warnings.check([spec.name for spec in specs], results)
        return results

    # -- subscriptions -------------------------------------------------------

    async def create_subscription(
        self,
        name: str,
        filter: str | Sequence[str],
        *,
        ack_deadline: DurationLike | None = None,
        max_attempts: int | None = None,
        min_backoff: DurationLike | None = None,
        max_backoff: DurationLike | None = None,
        max_in_flight: int | None = None,
        ordered: bool = False,
        start: str | datetime | None = None,
        retention: DurationLike | None = None,
        max_age: DurationLike | None = None,
        retry_delays: Sequence[DurationLike] | None = None,
        max_in_flight_per_key: int | None = None,
        key_header: str | None = None,
        exist_ok: bool = False,
    ) -> Subscription:
        """Create a durable subscription, or with `exist_ok` return the existing one.

        See `Client.create_subscription`.
        """
        settings = {
            "ack_deadline": ack_deadline,
            "max_attempts": max_attempts,
            "min_backoff": min_backoff,
            "max_backoff": max_backoff,
            "max_in_flight": max_in_flight,
            "retention": retention,
            "max_age": max_age,
            "retry_delays": retry_delays,
            "max_in_flight_per_key": max_in_flight_per_key,
            "key_header": key_header,
        }
        request = convert.create_subscription_request(
            name, filter, settings, ordered=ordered, start=start
        )
        try:
            response = await self._call(self._stub.CreateSubscription, request)
        except AlreadyExists:
            if not exist_ok:
                raise
            existing = await self.get_subscription(name)
            if mismatch := exist_ok_check.warning(request.subscription, existing):
                warnings.warn(mismatch, stacklevel=2)
            return existing
        return convert.subscription_from_proto(response.subscription)

    async def get_subscription(self, name: str) -> Subscription:
        """The subscription called `name` (`NotFound` if there is none)."""
        request = pb.GetSubscriptionRequest(name=name)
        response = await self._call(self._stub.GetSubscription, request)
        return convert.subscription_from_proto(response.subscription)

    async def list_subscriptions(self) -> list[Subscription]:
        """Every subscription, by name (all pages)."""
        found: list[Subscription] = []
        token = ""
        while True:
            request = pb.ListSubscriptionsRequest(page_token=token)
            response = await self._call(self._stub.ListSubscriptions, request)
            found.extend(convert.subscription_from_proto(s) for s in response.subscriptions)
            token = response.next_page_token
            if not token:
                return found

    async def update_subscription(
        self, name: str, **changes: Unpack[SubscriptionChanges]
    ) -> Subscription:
        """Change the settings given, and only those (see `Client.update_subscription`)."""
        request = convert.update_subscription_request(name, changes)
        response = await self._call(self._stub.UpdateSubscription, request)
        return convert.subscription_from_proto(response.subscription)

    async def delete_subscription(self, name: str) -> None:
        """Delete a subscription and its pending deliveries (`NotFound` if there is none)."""
        await self._call(self._stub.DeleteSubscription, pb.DeleteSubscriptionRequest(name=name))

    # -- inspection ----------------------------------------------------------

    async def get_event(self, event_id: str) -> EventInfo:
        """An event and where its delivery stands in each subscription it matched."""
        response = await self._call(self._stub.GetEvent, pb.GetEventRequest(event_id=event_id))
        return convert.event_info(response)

    async def get_stats(self, subscription: str | None = None) -> Stats:
        """Delivery counts and rates, for one subscription or all of them."""
        request = pb.GetStatsRequest(subscription=subscription or "")
        return convert.stats(await self._call(self._stub.GetStats, request))

    # -- dead letters and replay ---------------------------------------------

    async def list_dead_letters(
        self,
        subscription: str,
        *,
        name: str | None = None,
        reason: str | None = None,
        page_size: int = DEAD_LETTER_PAGE_SIZE,
        page_token: str | None = None,
    ) -> DeadLetterPage:
        """One page of a subscription's dead letters (see `Client.list_dead_letters`)."""
        request = convert.list_dead_letters_request(
            subscription, name=name, reason=reason, page_size=page_size, page_token=page_token
        )
        return convert.dead_letter_page(await self._call(self._stub.ListDeadLetters, request))

    async def iter_dead_letters(
        self,
        subscription: str,
        *,
        name: str | None = None,
        reason: str | None = None,
        page_size: int = DEAD_LETTER_PAGE_SIZE,
    ) -> AsyncIterator[DeadLetterInfo]:
        """Every dead letter of a subscription, oldest first, fetched a page at a time."""
        token: str | None = None
        while True:
            page = await self.list_dead_letters(
                subscription, name=name, reason=reason, page_size=page_size, page_token=token
            )
            for item in page.items:
                yield item
            token = page.next_page_token
            if token is None:
                return

    async def get_dead_letter(self, subscription: str, event_id: str) -> DeadLetterInfo | None:
        """One event's dead letter in a subscription; None if it is not dead there."""
        response = await self._call(self._stub.GetEvent, pb.GetEventRequest(event_id=event_id))
        return convert.dead_letter_from_event(response, subscription)

    async def redrive_dead_letters(
        self,
        subscription: str,
        *,
        event_ids: Iterable[str] | None = None,
        name: str | None = None,
        reason: str | None = None,
        all: bool = False,
    ) -> int:
        """Make dead letters ready again; returns how many (see `Client.redrive_dead_letters`)."""
        requests = convert.redrive_requests(
            subscription, event_ids=event_ids, name=name, reason=reason, all=all
        )
        responses = [await self._call(self._stub.RedriveDeadLetters, r) for r in requests]
        return convert.redriven_count(responses)

    async def seek(self, subscription: str, to: datetime) -> SeekResult:
        """Replay what was published since `to`, skip what came before (see `Client.seek`)."""
        response = await self._call(self._stub.Seek, convert.seek_request(subscription, to))
        return convert.seek_result(response)

    # -- consuming (low level; see Consumer for the runtime) -----------------

    async def subscribe(
        self,
        subscription: str,
        *,
        max_outstanding: int = 100,
        max_batch_size: int = 100,
        consumer_name: str = "",
    ) -> AsyncGenerator[list[Message], None]:
        """Attach to a subscription and yield each batch of deliveries (see `Client.subscribe`)."""
        stream = self.open_subscription(
            subscription,
            max_outstanding=max_outstanding,
            max_batch_size=max_batch_size,
            consumer_name=consumer_name,
        )
        try:
            async for batch in stream:
                yield batch
        finally:
            stream.cancel()

    def open_subscription(
        self,
        subscription: str,
        *,
        max_outstanding: int = 100,
        max_batch_size: int = 100,
        consumer_name: str = "",
    ) -> SubscribeStream:
        """Attach to a subscription; `await stream.attached()` to know the broker has.

        Like `subscribe`, with the stream at hand: iterate it for the batches, and
        `cancel()` it to detach.
        """
        request = convert.subscribe_request(
            subscription,
            max_outstanding=max_outstanding,
            max_batch_size=max_batch_size,
            consumer_name=consumer_name,
        )
        return SubscribeStream(self._stub.Subscribe(request, metadata=self._config.metadata))

    async def tail(self, filter: str | Sequence[str]) -> AsyncGenerator[Message, None]:
        """Yield new events matching `filter` as they are published (ephemeral: no acks)."""
        async for response in self._stream(convert.tail_request(filter)):
            for message in convert.messages(response):
                yield message

    async def _stream(
        self, request: pb.SubscribeRequest
    ) -> AsyncGenerator[pb.SubscribeResponse, None]:
        call = self._stub.Subscribe(request, metadata=self._config.metadata)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as error:
            raise error_from_rpc(error, request) from None
        finally:
            call.cancel()

    async def ack(self, ack_ids: AckIds) -> AckResult:
        """Acknowledge deliveries (ack ids or Messages); returns the ids not applied."""
        responses = [await self._call(self._stub.Ack, r) for r in convert.ack_requests(ack_ids)]
        return convert.ack_result(responses)

    async def nack(
        self,
        ack_ids: AckIds,
        *,
        delay: DurationLike | None = None,
        terminal: bool = False,
        error: str = "",
    ) -> AckResult:
        """Give deliveries back for retry, or dead-letter them (see `Client.nack`)."""
        requests = convert.nack_requests(ack_ids, delay=delay, terminal=terminal, error=error)
        responses = [await self._call(self._stub.Nack, r) for r in requests]
        return convert.ack_result(responses)

    async def extend_ack_deadline(self, ack_ids: AckIds, extension: DurationLike) -> AckResult:
        """Keep leases longer: each now ends `extension` from now (1 s .. 12 h)."""
        requests = convert.extend_requests(ack_ids, extension)
        responses = [await self._call(self._stub.ExtendAckDeadline, r) for r in requests]
        return convert.ack_result(responses)
