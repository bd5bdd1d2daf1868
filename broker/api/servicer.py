"""The EventBrokerService servicer: requests in, engine calls, responses out.

It converts at the edge (`broker.api.convert`), calls the delivery engine, and
turns every failure into a status with google.rpc details. It never sees a
database row.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import grpc
from grpc import aio

from broker import config, logs
from broker.api import convert
from broker.api.auth import Authenticator
from broker.domain import US_PER_S, ApiKey, DeadReason, DeliveryInfo, DeliveryState, Scope
from broker.engine.consumers import ConsumerStream
from broker.engine.engine import DeliveryEngine
from broker.errors import (
    BrokerError,
    FieldViolation,
    already_exists,
    database_unavailable,
    internal,
    invalid_argument,
    not_found,
    resource_exhausted,
    storage_full,
)
from broker.names import filter_error, matches, normalize_filters
from broker.storage.interface import (
    DeadLetterListParams,
    StorageFullError,
    StorageUnavailableError,
    SubscriptionExistsError,
)
from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc

_log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")

PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1000
ACK_IDS_MAX = 10_000
#: Leaves room in the 255-character consumer column for the `#N` suffix.
CONSUMER_NAME_MAX_LENGTH = 200
#: Subscribe's response headers, sent once the consumer is attached (see the proto).
ATTACHED_HEADER = "eventbroker-attached"
CONSUMER_HEADER = "eventbroker-consumer"
#: Header values are printable ASCII: anything else in a consumer id is %-escaped.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


async def abort_with(context: aio.ServicerContext[Any, Any], error: BrokerError) -> None:
    """End the call with the error's status code, message and google.rpc details."""
    status = error.to_status_proto()
    await context.abort(
        error.code,
        error.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )


async def _abort_mapped(context: aio.ServicerContext[Any, Any], error: Exception) -> None:
    """End a stream with the broker error `error` stands for; re-raise a surprise."""
    mapped = as_broker_error(error)
    if mapped is None:
        raise error
    await abort_with(context, mapped)


def as_broker_error(error: Exception) -> BrokerError | None:
    """The broker error an exception stands for, or None for a surprise.

    A database that cannot serve is answered with a stable message and reason;
    its details (the driver's words: host, port, database) go to the log only,
    with the call's request id.
    """
    if isinstance(error, BrokerError):
        return error
    if isinstance(error, StorageFullError):
        _log.warning("answered STORAGE_FULL: %s", error)
        return storage_full()
    if isinstance(error, StorageUnavailableError):
        _log.warning("answered DATABASE_UNAVAILABLE: %s", error)
        return database_unavailable()
    if isinstance(error, SubscriptionExistsError):
        return already_exists("subscription", str(error))
    return None


#: Calls on the hot path, whose strings are checked where they are read (an event's
#: id, content type and key; ack ids parsed; a nack's error text cleaned), so that
#: no call walks its request twice.
_CHECK_THEIR_OWN_STRINGS = frozenset(
    {"Publish", "BatchPublish", "Ack", "Nack", "ExtendAckDeadline"}
)


def _refuse_nul(request: Any) -> None:
    """INVALID_ARGUMENT naming each string field of the request that holds a NUL."""
    violations = convert.nul_violations(request)
    if violations:
        raise invalid_argument(violations)


def unary(
    method: Callable[[Any, Req, aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Any, Req, aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    """Wrap a unary handler so broker errors become statuses with details."""

    @functools.wraps(method)
    async def handler(self: Any, request: Req, context: aio.ServicerContext[Req, Resp]) -> Resp:
        logs.request_id.set(logs.request_id_from(context.invocation_metadata()) or "-")
        try:
            if isinstance(request, Undecodable):
                raise request.refusal()
            if method.__name__ not in _CHECK_THEIR_OWN_STRINGS:
                _refuse_nul(request)
            return await method(self, request, context)
        except Exception as error:
            mapped = as_broker_error(error)
            if mapped is None:
                _log.exception("%s failed", method.__name__)
                mapped = internal(f"{method.__name__} failed inside the broker; see its log")
            await abort_with(context, mapped)
            raise AssertionError("abort returns only by raising") from error

    return handler


class EventBrokerServicer(pb_grpc.EventBrokerServiceServicer):
    """The broker's gRPC API over a delivery engine."""

    def __init__(self, engine: DeliveryEngine) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.auth = Authenticator(
            engine.read,
            require_keys=self.settings.requires_keys,
            cache_s=self.settings.api_key_cache_s,
        )
        self._streams = Counter[str]()  # open Subscribe streams by client connection

    async def _key(self, context: aio.ServicerContext[Any, Any], scope: Scope) -> ApiKey | None:
        """The caller's key if it may use `scope` (None: the broker runs without keys)."""
        return await self.auth.authorize(context.invocation_metadata(), scope)

    async def _admin(
        self, context: aio.ServicerContext[Any, Any], subscription: str | None = None
    ) -> ApiKey | None:
        key = await self._key(context, Scope.ADMIN)
        if subscription:
            self.auth.allow_names(key, "subscription", [subscription])
        return key

    # -- publishing ----------------------------------------------------------

    @unary
    async def Publish(
        self, request: pb.PublishRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.PublishResponse:
        """Store one event."""
        key = await self._key(context, Scope.PUBLISH)
        draft = convert.draft_from_publish(request, self.settings, self.engine.clock())
        self.auth.allow_names(key, "event name", [draft.name])
        self.auth.allow_publish(key, 1)
        (outcome,) = await self.engine.publish([draft])
        return pb.PublishResponse(
            event_id=outcome.event_id,
            status=_publish_status(outcome.duplicate),
            matched_subscriptions=outcome.matched,
        )

    @unary
    async def BatchPublish(
        self, request: pb.BatchPublishRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.BatchPublishResponse:
        """Store many events in one transaction."""
        key = await self._key(context, Scope.PUBLISH)
        return await self.publish_batch(key, request)

    async def publish_batch(
        self, key: ApiKey | None, request: pb.BatchPublishRequest
    ) -> pb.BatchPublishResponse:
        """Validate and store a batch for an authorized caller (gRPC or HTTP)."""
        drafts = convert.drafts_from_batch(
            request.events, request.ByteSize(), self.settings, self.engine.clock()
        )
        self.auth.allow_names(key, "event name", [d.name for d in drafts])
        self.auth.allow_publish(key, len(drafts))
        outcomes = await self.engine.publish(drafts)
        return pb.BatchPublishResponse(
            results=[
                pb.PublishResult(
                    event_id=o.event_id,
                    status=_publish_status(o.duplicate),
                    matched_subscriptions=o.matched,
                )
                for o in outcomes
            ]
        )

    # -- consuming -----------------------------------------------------------

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SubscribeResponse]:
        """Stream deliveries to a consumer, or new events to an ephemeral tail."""
        peer = context.peer()
        logs.request_id.set(logs.request_id_from(context.invocation_metadata()) or "-")
        try:
            if isinstance(request, Undecodable):
                raise request.refusal()
            _refuse_nul(request)
            key = await self._key(context, Scope.SUBSCRIBE)
            self._open_stream(peer)
        except Exception as error:
            await _abort_mapped(context, error)
            return
        try:
            async for response in self._subscribe(request, context, key):
                yield response
        finally:
            self._close_stream(peer)

    def _open_stream(self, peer: str) -> None:
        """Count a new stream, or refuse it when a stream limit is reached."""
        total = self.settings.max_streams
        if self._streams.total() >= total:
            raise resource_exhausted(
                "TOO_MANY_STREAMS",
                f"the broker has {total} Subscribe streams open, its limit (--max-streams)",
                limit=str(total),
            )
        per_connection = self.settings.max_streams_per_connection
        if self._streams[peer] >= per_connection:
            raise resource_exhausted(
                "TOO_MANY_STREAMS_PER_CONNECTION",
                f"this connection has {per_connection} Subscribe streams open, the limit "
                "(--max-streams-per-connection); open another connection or close one",
                limit=str(per_connection),
            )
        self._streams[peer] += 1

    def _close_stream(self, peer: str) -> None:
        self._streams[peer] -= 1
        if self._streams[peer] <= 0:
            del self._streams[peer]

    async def _subscribe(
        self,
        request: pb.SubscribeRequest,
        context: aio.ServicerContext[Any, Any],
        key: ApiKey | None,
    ) -> AsyncIterator[pb.SubscribeResponse]:
        """The body of Subscribe, once the caller may and a stream slot is taken."""
        try:
            max_outstanding, max_batch = _credit(request)
            if request.subscription:
                self.auth.allow_names(key, "subscription", [request.subscription])
            else:
                self.auth.allow_names(key, "filter", request.filter)
            if not request.subscription:
                async for response in self._tail(request, max_batch):
                    yield response
                return
            subscription = await self.engine.subscription(request.subscription)
        except Exception as error:
            await _abort_mapped(context, error)
            return
        if subscription is None:
            await abort_with(context, not_found("subscription", request.subscription))
            return
        consumer = ConsumerStream(
            subscription=subscription.name,
            label=request.consumer_name or context.peer(),
            max_outstanding=max_outstanding,
            max_batch_size=max_batch,
            json_as_binary=request.json_as_binary,
        )
        self.engine.attach(subscription, consumer)
        try:
            # Response headers at once: the client learns it is attached before any
            # delivery (its `metadata` resolves; grpcurl prints them straight away).
            await context.send_initial_metadata(
                (
                    (ATTACHED_HEADER, "1"),
                    (CONSUMER_HEADER, quote(consumer.id, safe=_HEADER_SAFE)),
                )
            )
            while (taken := await consumer.next_batch(self.engine.clock)) is not None:
                batch, count = taken
                if batch:
                    yield pb.SubscribeResponse(
                        deliveries=[
                            convert.delivery_to_proto(d, json_as_binary=consumer.json_as_binary)
                            for d in batch
                        ]
                    )
                consumer.written(count)
        finally:
            self.engine.detach(subscription.id, consumer)
        if "deleted" in consumer.end_reason:
            await abort_with(context, not_found("subscription", subscription.name))
        elif consumer.end_reason:
            await context.abort(grpc.StatusCode.UNAVAILABLE, consumer.end_reason)

    async def _tail(
        self, request: pb.SubscribeRequest, max_batch: int
    ) -> AsyncIterator[pb.SubscribeResponse]:
        if not request.filter:
            raise invalid_argument(
                [FieldViolation("subscription", "name a subscription, or give a filter to tail")]
            )
        violations = [
            FieldViolation(f"filter[{i}]", error)
            for i, pattern in enumerate(request.filter)
            if (error := filter_error(pattern)) is not None
        ]
        if violations:
            raise invalid_argument(violations)
        tail = self.engine.tail(normalize_filters(request.filter))
        try:
            while True:
                batch = [await tail.outbox.get()]
                while len(batch) < max_batch and not tail.outbox.empty():
                    batch.append(tail.outbox.get_nowait())
                yield pb.SubscribeResponse(
                    deliveries=[
                        convert.tail_delivery_to_proto(e, json_as_binary=request.json_as_binary)
                        for e in batch
                    ]
                )
        finally:
            self.engine.untail(tail)

    @unary
    async def Ack(
        self, request: pb.AckRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.AckResponse:
        """Acknowledge deliveries."""
        await self._key(context, Scope.SUBSCRIBE)
        _check_ack_ids(request.ack_ids)
        outcome = await self.engine.ack(list(request.ack_ids))
        return pb.AckResponse(not_applied_ack_ids=outcome.not_applied)

    @unary
    async def Nack(
        self, request: pb.NackRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.NackResponse:
        """Give deliveries back for retry, or dead-letter them."""
        await self._key(context, Scope.SUBSCRIBE)
        _check_ack_ids(request.ack_ids)
        delay_us: int | None = None
        if request.HasField("delay"):
            delay_us = convert.duration_us(request.delay)
            if not 0 <= delay_us <= config.MAX_DELAY_S * US_PER_S:
                raise invalid_argument([FieldViolation("delay", "must be between 0 and one year")])
        outcome = await self.engine.nack(
            list(request.ack_ids),
            delay_us=delay_us,
            terminal=request.terminal,
            error=request.error[:4096].replace("\x00", "\ufffd"),  # text cannot hold NUL
        )
        return pb.NackResponse(not_applied_ack_ids=outcome.not_applied)

    @unary
    async def ExtendAckDeadline(
        self, request: pb.ExtendAckDeadlineRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ExtendAckDeadlineResponse:
        """Keep leases for longer."""
        await self._key(context, Scope.SUBSCRIBE)
        _check_ack_ids(request.ack_ids)
        extension = convert.duration_us(request.extension)
        low, high = config.ACK_DEADLINE_MIN_S, config.ACK_DEADLINE_MAX_S
        if not low * US_PER_S <= extension <= high * US_PER_S:
            raise invalid_argument(
                [FieldViolation("extension", f"must be between {low} s and {high} s")]
            )
        outcome = await self.engine.extend(list(request.ack_ids), extension)
        return pb.ExtendAckDeadlineResponse(not_applied_ack_ids=outcome.not_applied)

    # -- subscriptions -------------------------------------------------------

    @unary
    async def CreateSubscription(
        self, request: pb.CreateSubscriptionRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.CreateSubscriptionResponse:
        """Create a durable subscription."""
        await self._admin(context, request.subscription.name)
        sub = convert.subscription_from_proto(request.subscription, self.engine.clock())
        created = await self.engine.create_subscription(sub)
        _log.info("subscription %s created, filter %s", created.name, list(created.filters))
        return pb.CreateSubscriptionResponse(subscription=convert.subscription_to_proto(created))

    @unary
    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetSubscriptionResponse:
        """Return one subscription."""
        await self._admin(context, request.name)
        sub = await self._existing(request.name)
        return pb.GetSubscriptionResponse(subscription=convert.subscription_to_proto(sub))

    @unary
    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListSubscriptionsResponse:
        """List subscriptions by name, a page at a time (those the key may use)."""
        key = await self._admin(context)
        size = _page_size(request.page_size)
        after = _decode_token(request.page_token)
        subs = await self.engine.read(lambda tx: tx.subscription_list(after, size + 1))
        token = _encode_token(subs[size - 1].name) if len(subs) > size else ""
        page = [s for s in subs[:size] if key is None or _allowed(key, s.name)]
        return pb.ListSubscriptionsResponse(
            subscriptions=[convert.subscription_to_proto(s) for s in page],
            next_page_token=token,
        )

    @unary
    async def UpdateSubscription(
        self, request: pb.UpdateSubscriptionRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.UpdateSubscriptionResponse:
        """Change the settings named in the update mask."""
        await self._admin(context, request.subscription.name)
        current = await self._existing(request.subscription.name)
        merged = convert.merge_update(current, request.subscription, request.update_mask)
        sub = convert.subscription_from_proto(merged, current.created_at_us)
        updated = await self.engine.update_subscription(sub)
        if updated is None:
            raise not_found("subscription", current.name)
        return pb.UpdateSubscriptionResponse(subscription=convert.subscription_to_proto(updated))

    @unary
    async def DeleteSubscription(
        self, request: pb.DeleteSubscriptionRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.DeleteSubscriptionResponse:
        """Delete a subscription and its deliveries."""
        await self._admin(context, request.name)
        if not await self.engine.delete_subscription(request.name):
            raise not_found("subscription", request.name)
        _log.info("subscription %s deleted", request.name)
        return pb.DeleteSubscriptionResponse()

    async def _existing(self, name: str) -> Any:
        if not name:
            raise invalid_argument([FieldViolation("name", "is required")])
        sub = await self.engine.subscription(name)
        if sub is None:
            raise not_found("subscription", name)
        return sub

    # -- inspection ----------------------------------------------------------

    @unary
    async def GetEvent(
        self, request: pb.GetEventRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetEventResponse:
        """An event and where its delivery stands in each subscription."""
        await self._admin(context)
        if not request.event_id:
            raise invalid_argument([FieldViolation("event_id", "is required")])
        event, deliveries = await self.engine.event_with_deliveries(request.event_id)
        if event is None:
            raise not_found("event", request.event_id)
        limits = await self.engine.concurrency(
            {d.subscription for d in deliveries if d.state is DeliveryState.READY}
        )
        return pb.GetEventResponse(
            event=convert.stored_event_message(event),
            deliveries=[
                convert.delivery_status_to_proto(d, describe(d, limits.get(d.subscription)))
                for d in deliveries
            ],
        )

    @unary
    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListDeadLettersResponse:
        """A page of a subscription's dead letters, oldest first."""
        await self._admin(context, request.subscription)
        sub = await self._existing(request.subscription)
        size = _page_size(request.page_size)
        token = _decode_token(request.page_token)
        after = int(token) if token.isdigit() else 0
        params = DeadLetterListParams(
            subscription_id=sub.id,
            after_delivery_id=after,
            limit=size + 1,
            name=request.name.lower() or None,
            reason=_dead_reason(request.reason),
        )
        letters = await self.engine.read(lambda tx: tx.dead_letter_list(params))
        next_token = (
            _encode_token(str(letters[size - 1].delivery_id)) if len(letters) > size else ""
        )
        return pb.ListDeadLettersResponse(
            dead_letters=[
                pb.DeadLetter(
                    event=convert.stored_event_message(d.event),
                    delivery=convert.delivery_status_to_proto(d.info, describe(d.info)),
                )
                for d in letters[:size]
            ],
            next_page_token=next_token,
        )

    @unary
    async def RedriveDeadLetters(
        self, request: pb.RedriveDeadLettersRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.RedriveDeadLettersResponse:
        """Make dead letters ready again: some by id, or all matching name and reason."""
        await self._admin(context, request.subscription)
        sub = await self._existing(request.subscription)
        if not request.event_ids and not request.all:
            raise invalid_argument(
                [
                    FieldViolation(
                        "event_ids",
                        "name the events to redrive, or set all=true "
                        "(optionally narrowed by name and reason)",
                    )
                ]
            )
        if request.event_ids and request.all:
            raise invalid_argument([FieldViolation("all", "not together with event_ids")])
        count = await self.engine.redrive(
            sub,
            event_ids=list(request.event_ids),
            name=request.name.lower() or None,
            reason=_dead_reason(request.reason),
        )
        return pb.RedriveDeadLettersResponse(redriven_count=count)

    @unary
    async def Seek(
        self, request: pb.SeekRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.SeekResponse:
        """Replay everything published since a time, and skip what came before."""
        await self._admin(context, request.subscription)
        sub = await self._existing(request.subscription)
        if not request.HasField("time"):
            raise invalid_argument([FieldViolation("time", "is required")])
        outcome = await self.engine.seek(sub, convert.timestamp_us(request.time))
        return pb.SeekResponse(replayed=outcome.replayed, skipped=outcome.skipped)

    @unary
    async def GetStats(
        self, request: pb.GetStatsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetStatsResponse:
        """Counts and rates per subscription."""
        await self._admin(context, request.subscription or None)
        if request.subscription:
            await self._existing(request.subscription)
        counts, events = await self.engine.counts(request.subscription or None)
        rates = self.engine.rates
        return pb.GetStatsResponse(
            subscriptions=[
                convert.stats_to_proto(
                    c,
                    consumers=self.engine.consumer_count(c.subscription),
                    ack_rate=_rate(rates.acked, c.subscription),
                    delivery_rate=_rate(rates.delivered, c.subscription),
                )
                for c in counts
            ],
            events=events,
            publish_rate=rates.published.rate(),
        )


def describe(info: DeliveryInfo, concurrency: tuple[int, int] | None = None) -> str:
    """One sentence saying why a delivery is where it is.

    `concurrency` is the subscription's (in flight, max in flight), when it has a limit.
    """

    def at(us: int | None) -> str:
        if us is None:
            return "?"
        return datetime.fromtimestamp(us / US_PER_S, UTC).isoformat(timespec="milliseconds")

    match info.state:
        case DeliveryState.SCHEDULED if info.attempts:
            return f"backing off after attempt {info.attempts} until {at(info.next_time_us)}"
        case DeliveryState.SCHEDULED:
            return f"scheduled until {at(info.next_time_us)}"
        case DeliveryState.READY if concurrency and concurrency[0] >= concurrency[1]:
            return (
                f"ready since {at(info.next_time_us)}, waiting for the concurrency limit "
                f"({concurrency[0]} of {concurrency[1]} in flight)"
            )
        case DeliveryState.READY:
            return f"ready since {at(info.next_time_us)}, waiting for a consumer with free credit"
        case DeliveryState.BLOCKED if info.key_wait is not None and not info.key_wait.ordered:
            wait = info.key_wait
            return (
                f"waiting: {wait.in_flight} of {wait.key!r} in flight"
                f" (max_in_flight_per_key {wait.limit}); it moves when one of them is acked or dead"
            )
        case DeliveryState.BLOCKED:
            return (
                f"waiting behind an earlier event of ordering key {info.ordering_key!r} "
                "until it is acked or dead"
            )
        case DeliveryState.IN_FLIGHT:
            return f"in flight with consumer {info.consumer} until {at(info.next_time_us)}"
        case DeliveryState.ACKED:
            return f"acknowledged on attempt {info.attempts}"
        case _:
            why = {
                DeadReason.ATTEMPTS_EXHAUSTED: f"all {info.attempts} attempts failed",
                DeadReason.NACKED_TERMINAL: "a consumer nacked it as terminal",
                DeadReason.EXPIRED: "it grew older than the maximum age",
            }.get(info.dead_reason, "unknown")
            last = f"; last error: {info.last_error}" if info.last_error else ""
            return f"dead because {why}{last}"


def _publish_status(duplicate: bool) -> pb.PublishStatus.ValueType:
    return pb.PUBLISH_STATUS_DUPLICATE if duplicate else pb.PUBLISH_STATUS_CREATED


def _credit(request: pb.SubscribeRequest) -> tuple[int, int]:
    violations = []
    max_outstanding = request.max_outstanding or config.MAX_OUTSTANDING_DEFAULT
    if not 1 <= max_outstanding <= config.MAX_OUTSTANDING_LIMIT:
        violations.append(
            FieldViolation(
                "max_outstanding", f"must be between 1 and {config.MAX_OUTSTANDING_LIMIT}"
            )
        )
    max_batch = request.max_batch_size or config.MAX_BATCH_SIZE_DEFAULT
    if not 1 <= max_batch <= config.MAX_BATCH_SIZE_LIMIT:
        violations.append(
            FieldViolation("max_batch_size", f"must be between 1 and {config.MAX_BATCH_SIZE_LIMIT}")
        )
    if len(request.consumer_name) > CONSUMER_NAME_MAX_LENGTH:
        violations.append(
            FieldViolation("consumer_name", f"at most {CONSUMER_NAME_MAX_LENGTH} characters")
        )
    if request.subscription and request.filter:
        violations.append(
            FieldViolation("filter", "only for an ephemeral tail (without a subscription)")
        )
    if violations:
        raise invalid_argument(violations)
    return max_outstanding, max_batch


def _check_ack_ids(ack_ids: Any) -> None:
    if not ack_ids:
        raise invalid_argument([FieldViolation("ack_ids", "at least one ack id is required")])
    if len(ack_ids) > ACK_IDS_MAX:
        raise invalid_argument(
            [FieldViolation("ack_ids", f"at most {ACK_IDS_MAX} per call; got {len(ack_ids)}")]
        )


def _page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_argument([FieldViolation("page_size", "must not be negative")])
    return min(requested or PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)


def _encode_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise invalid_argument(
            [FieldViolation("page_token", "is not a token this broker returned")]
        ) from error


def _rate(meters: dict[str, Any], subscription: str) -> float:
    meter = meters.get(subscription)
    return float(meter.rate()) if meter is not None else 0.0


def _allowed(key: ApiKey, name: str) -> bool:
    """Whether a key's name patterns (if any) let it use this name."""
    return not key.patterns or matches(key.patterns, name)


def _dead_reason(value: int) -> DeadReason | None:
    """The reason filter of a dead-letter request; 0 for any."""
    if not value:
        return None
    try:
        return DeadReason(value)
    except ValueError:
        known = ", ".join(f"{r.value} ({r.name})" for r in DeadReason if r.value)
        raise invalid_argument(
            [FieldViolation("reason", f"unknown dead reason {value}; one of {known}")]
        ) from None


class Undecodable:
    """Stands in for a request whose bytes are not the message the method takes."""

    def __init__(self, message_name: str, error: Exception, too_deep: str | None = None) -> None:
        self.message_name = message_name
        self.error = error
        #: The field nested deeper than protobuf reads, when that is why decoding failed.
        self.too_deep = too_deep

    def refusal(self) -> BrokerError:
        """INVALID_ARGUMENT saying the request could not be read, or which field is too deep."""
        if self.too_deep is not None:
            return invalid_argument(
                [FieldViolation(self.too_deep, f"nested too deep: {convert.JSON_DEPTH_RULE}")]
            )
        return invalid_argument(
            [
                FieldViolation(
                    "request", f"is not a valid {self.message_name} message ({self.error})"
                )
            ]
        )


def add_to_server(servicer: EventBrokerServicer, server: aio.Server) -> None:
    """Register the service with deserializers that turn unreadable bytes into a refusal.

    grpc's generated registration answers a request it cannot parse with UNKNOWN;
    here such a request reaches the method as `Undecodable` and is refused with
    INVALID_ARGUMENT, like any other bad input.
    """
    service = pb.DESCRIPTOR.services_by_name["EventBrokerService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_safe_parser(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


def _safe_parser(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except Exception as error:  # DecodeError, or a depth or size limit
            # upb says "Exceeded upb_DecodeOptions_MaxDepth" when nesting passes its 100.
            deep = "depth" in str(error).lower()
            return Undecodable(
                message_class.DESCRIPTOR.full_name,
                error,
                _too_deep_field(message_class, data) if deep else None,
            )

    return parse


def _too_deep_field(message_class: Any, data: bytes) -> str:
    """The field of a request too deeply nested to decode: event data is the recursive one."""
    if message_class is pb.PublishRequest:
        return "event.data"
    if message_class is not pb.BatchPublishRequest:
        return "request"
    for index, chunk in enumerate(_events_on_the_wire(data)):
        try:
            event = pb.Event.FromString(chunk)
        except Exception:  # this event is the one too deep to decode
            return f"events[{index}].data"
        if convert.value_deeper_than(event.data, config.JSON_DEPTH_MAX):
            return f"events[{index}].data"
    return "events"


def _events_on_the_wire(data: bytes) -> Iterator[bytes]:
    """The encoded `events` (field 1) of a BatchPublishRequest, read from its wire format."""
    position = 0
    while position < len(data):
        tag, position = _varint(data, position)
        if tag != (1 << 3) | 2:  # field 1, length-delimited: the only field there is
            return
        length, position = _varint(data, position)
        yield data[position : position + length]
        position += length


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """A protobuf varint at `position`, and the position after it."""
    value, shift = 0, 0
    while position < len(data):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return value, position
