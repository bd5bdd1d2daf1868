"""`Client`: the blocking client for scripts, web handlers and admin tasks.

Every method builds its request and reads its response through
`eventbroker._convert` (shared with `AsyncClient`) and raises `BrokerError`
subclasses instead of `grpc.RpcError`.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc
from tenacity import Retrying

from eventbroker import _convert as convert
from eventbroker import _exist_ok as exist_ok_check
from eventbroker import _publish as publishing
from eventbroker import _tracing as tracing
from eventbroker._batching import BlockingPublisher, PublishBatching
from eventbroker._config import ConnectionConfig, TLSConfig
from eventbroker._publish import PUBLISH_TIMEOUT_S
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

DEFAULT_TIMEOUT_S = 30.0
#: Dead letters per ListDeadLetters call unless asked otherwise (the broker takes 1,000).
DEAD_LETTER_PAGE_SIZE = 100


class _Unset(enum.Enum):
    """Marks a call timeout left to the client's own."""

    TOKEN = 0


_UNSET = _Unset.TOKEN


class Client:
    """A blocking connection to the broker.

    Args:
        target: `HOST:PORT` of the broker; default `EVENTBROKER_TARGET`, else 127.0.0.1:50051.
        api_key: Sent as `authorization: Bearer <key>`; default `EVENTBROKER_API_KEY`.
        tls: True for TLS with the default roots, a `TLSConfig` for a private CA or
            mutual TLS, None/False for plaintext.
        timeout: Seconds each unary call may take (streams have none); None for no limit.
        publish_batching: How `publish` calls made at once (from several threads) share
            calls: True (default) joins those made while one is on its way into one
            `BatchPublish`, with no added delay; False sends one call per event; a
            `PublishBatching` sets the bounds. See `publish`.

    Use it as a context manager, or call `close()`:

        with Client() as client:
            client.publish("user.joined", {"plan": "pro"})

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
        self._channel = self._config.sync_channel()
        self._stub = pb_grpc.EventBrokerServiceStub(self._channel)
        self._publisher = BlockingPublisher(self._batching, self._send_events)

    @property
    def target(self) -> str:
        """The `HOST:PORT` this client dials."""
        return self._config.target

    def close(self) -> None:
        """Close the connection; open streams end."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        call_timeout: float | _Unset | None = _UNSET,
    ) -> Resp:
        limit = self._timeout if isinstance(call_timeout, _Unset) else call_timeout
        try:
            return method(request, timeout=limit, metadata=self._config.metadata)
        except grpc.RpcError as error:
            # Unchained: all the grpc error held is on the BrokerError, and its frames
            # would only stand between the caller and the reason.
            raise error_from_rpc(error, request) from None

    # -- publishing ----------------------------------------------------------

    def publish(
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
        timeout: DurationLike | None = PUBLISH_TIMEOUT_S,
    ) -> PublishResult:
        """Publish one event; it is on disk when this returns.

        Args:
            name: Event name, e.g. `user.joined` (case-insensitive).
            data: Any JSON value, a dataclass instance or pydantic model (sent as its
                JSON), or `bytes` (sent as is, described by `content_type`).
            id: Idempotency id: a second publish with the same id inside the dedup
                window stores nothing and returns the first event's id as a duplicate.
                Without one, the client makes a random id, so that its own retries
                cannot store the event twice.
            delay: Deliver later: seconds as a number, a `timedelta`, `"5m"`, `"1 day"`,
                `"500ms"`, `"PT5M"`, or an absolute `datetime` / ISO-8601 time (at most
                one year ahead).
            priority: -50..50; higher goes first among deliveries ready at once.
            ordering_key: FIFO key for ordered subscriptions.
            headers: String headers delivered with the event.
            content_type: Content type of `bytes` (or `str`) data.
            timeout: Total time for the publish, all its attempts included (default
                30 s; None for no limit). While the broker cannot be reached
                (`Unavailable`) or does not answer in time (`DeadlineExceeded`), the
                publish is retried with exponential backoff (0.1 s doubling up to 5 s,
                with jitter) under the same event id, so it is stored once.

        Publishes made at once (from several threads) share calls: one goes out at
        once while no publish call is on its way; those made meanwhile wait for it
        and then go together as one `BatchPublish` (up to the client's
        `publish_batching` bounds), each still with its own result or error. An
        event the broker would refuse is not joined to others, and a joined batch
        the broker refuses is sent again in parts, so a refusal reaches only the
        caller of the bad event. Nothing waits for a timer.

        Returns:
            The event id, whether it was a duplicate, and how many subscriptions
            matched it (a warning is logged, once per name, when none did).

        Raises:
            ValueError: The delay or the data cannot be read (nothing was sent).
            BrokerError: The broker refused it (e.g. `InvalidArgument` for a bad name).
                When the timeout ran out, the most telling attempt's error: the
                broker's last reason (e.g. `Unavailable` with reason `STORAGE_FULL`)
                rather than the `DeadlineExceeded` of an attempt cut short.

        """
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
            if self._batching.enabled:
                deadline = publishing.Deadline(timeout, self._timeout)
                result = self._publisher.publish(spec.name, request.event, deadline)
            else:
                what = f"publish of {spec.name}"
                response = self._retried(self._stub.Publish, request, timeout, what)
                result = convert.publish_result(response)
            traced.done([result])
        self._match_warnings.check([spec.name], [result])
        return result

    def _send_events(
        self, events: Sequence[pb.Event], timeout_s: float | None
    ) -> list[PublishResult]:
        """One call for the events the publisher joined: a Publish for one, else a BatchPublish."""
        if len(events) == 1:
            request = pb.PublishRequest(event=events[0])
            response = self._call(self._stub.Publish, request, call_timeout=timeout_s)
            return [convert.publish_result(response)]
        batch = pb.BatchPublishRequest(events=events)
        return convert.batch_publish_results(
            self._call(self._stub.BatchPublish, batch, call_timeout=timeout_s)
        )

    def publish_batch(
        self,
        events: Iterable[EventSpec | Mapping[str, Any]],
        *,
        timeout: DurationLike | None = PUBLISH_TIMEOUT_S,
    ) -> list[PublishResult]:
        """Publish many events in one transaction: all of them are stored, or none.

        Args:
            events: `EventSpec`s, or dicts with `publish`'s argument names
                (`{"name": "user.joined", "data": {...}, "delay": "5m"}`).
            timeout: Total time for all attempts, retried as `publish` is (each event
                without an id gets one, so a retry stores nothing twice).

        Returns:
            One result per event, in order.

        """
        specs = publishing.with_event_ids(convert.event_specs(events))
        with tracing.Publishing(specs, target=self.target, batch=True) as traced:
            request = convert.batch_publish_request(traced.specs)
            what = f"batch publish of {len(specs)}"
            response = self._retried(self._stub.BatchPublish, request, timeout, what)
            results = convert.batch_publish_results(response)
            traced.done(results)
        self._match_warnings.check([spec.name for spec in specs], results)
        return results

    def _retried(self, method: Any, request: Any, timeout: DurationLike | None, what: str) -> Any:
        """A publish call, retried as `publish` says, each attempt within what is left."""
        deadline = publishing.Deadline(timeout, self._timeout)
        retrying = Retrying(**deadline.retry_options(what))
        try:
            return retrying(
                lambda: self._call(method, request, call_timeout=deadline.attempt_timeout_s())
            )
        except BrokerError as error:
            raise deadline.failure(error) from None

    # -- subscriptions -------------------------------------------------------

    def create_subscription(
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
        """Create a durable subscription; settings left as None take the broker's defaults.

        Durations are seconds as numbers, `timedelta`s or strings (`"30s"`, `"5m"`,
        `"PT1H"`), as everywhere in this client; out-of-range values are refused
        before anything is sent.

        Args:
            name: Unique lower-case name.
            filter: One name pattern or several: exact, `*` for one segment, `>` for the rest.
            ack_deadline: Time a consumer has to ack (default 30 s; 1 s .. 12 h).
            max_attempts: Failed attempts before dead-lettering (default 20).
            min_backoff: First retry delay (default 1 s).
            max_backoff: Longest retry delay (default 10 min).
            max_in_flight: Concurrency limit across all consumers (default unlimited).
            ordered: FIFO per ordering key.
            start: `"new"` (default), `"beginning"`, or a `datetime` to start from.
            retention: How long acked and dead deliveries stay queryable (default 7 days).
            max_age: Dead-letter deliveries of events older than this (reason `expired`)
                instead of delivering or retrying them (default: no maximum age).
            retry_delays: An explicit retry table instead of the exponential backoff: the
                delay after attempt n is `retry_delays[n-1]`, and the last entry repeats
                (e.g. `["10s", "1m", "10m"]`; at most 100 entries).
            max_in_flight_per_key: Concurrency limit per key: at most this many
                deliveries of one key in flight at once, across all consumers and
                brokers, while other keys flow (default: no cap). A retry backing off
                holds no slot until it is due. Events without a key are not capped.
                With `ordered`, only 1.
            key_header: Take each event's key (for `ordered` and
                `max_in_flight_per_key`) from this header instead of its ordering key.
            exist_ok: If a subscription of that name exists, return it as it is
                instead of raising `AlreadyExists`, so that a program can declare the
                subscription it needs every time it starts. Its settings are not
                changed; each one given here that differs (the filter, `ordered` when
                True, any setting not left as None) is named in a
                `SubscriptionSettingsWarning`. `update_subscription` changes them.

        Returns:
            The subscription with every setting filled in (the existing one, with
            `exist_ok`).

        Raises:
            AlreadyExists: A subscription of that name exists and `exist_ok` is False.

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
            response = self._call(self._stub.CreateSubscription, request)
        except AlreadyExists:
            if not exist_ok:
                raise
            existing = self.get_subscription(name)
            if mismatch := exist_ok_check.warning(request.subscription, existing):
                warnings.warn(mismatch, stacklevel=2)
            return existing
        return convert.subscription_from_proto(response.subscription)

    def get_subscription(self, name: str) -> Subscription:
        """The subscription called `name` (`NotFound` if there is none)."""
        request = pb.GetSubscriptionRequest(name=name)
        response = self._call(self._stub.GetSubscription, request)
        return convert.subscription_from_proto(response.subscription)

    def list_subscriptions(self) -> list[Subscription]:
        """Every subscription, by name (all pages)."""
        found: list[Subscription] = []
        token = ""
        while True:
            request = pb.ListSubscriptionsRequest(page_token=token)
            response = self._call(self._stub.ListSubscriptions, request)
            found.extend(convert.subscription_from_proto(s) for s in response.subscriptions)
            token = response.next_page_token
            if not token:
                return found

    def update_subscription(
        self, name: str, **changes: Unpack[SubscriptionChanges]
    ) -> Subscription:
        """Change the settings given (and only those), e.g. `max_attempts=5, filter="user.*"`.

        The keys are those of `SubscriptionChanges` (the settings of
        `create_subscription` but `ordered` and `start`). `max_in_flight=None`,
        `max_age=None` and `retry_delays=[]` remove a limit, age or table.

        Returns:
            The subscription with its new settings.

        """
        request = convert.update_subscription_request(name, changes)
        response = self._call(self._stub.UpdateSubscription, request)
        return convert.subscription_from_proto(response.subscription)

    def delete_subscription(self, name: str) -> None:
        """Delete a subscription and its pending deliveries (`NotFound` if there is none)."""
        self._call(self._stub.DeleteSubscription, pb.DeleteSubscriptionRequest(name=name))

    # -- inspection ----------------------------------------------------------

    def get_event(self, event_id: str) -> EventInfo:
        """An event and where its delivery stands in each subscription it matched."""
        response = self._call(self._stub.GetEvent, pb.GetEventRequest(event_id=event_id))
        return convert.event_info(response)

    def get_stats(self, subscription: str | None = None) -> Stats:
        """Delivery counts and rates, for one subscription or all of them."""
        request = pb.GetStatsRequest(subscription=subscription or "")
        return convert.stats(self._call(self._stub.GetStats, request))

    # -- dead letters and replay ---------------------------------------------

    def list_dead_letters(
        self,
        subscription: str,
        *,
        name: str | None = None,
        reason: str | None = None,
        page_size: int = DEAD_LETTER_PAGE_SIZE,
        page_token: str | None = None,
    ) -> DeadLetterPage:
        """One page of a subscription's dead letters, oldest first.

        Args:
            subscription: Subscription name.
            name: Only events with this name.
            reason: Only those that died for this reason: `attempts_exhausted`,
                `nacked_terminal` or `expired`.
            page_size: Most dead letters on the page (at most 1,000).
            page_token: The `next_page_token` of the previous page; None for the first.

        Returns:
            The dead letters and the token of the next page (None on the last).

        Raises:
            ValueError: `reason` is not one of the three (nothing was sent).
            NotFound: There is no such subscription.

        """
        request = convert.list_dead_letters_request(
            subscription, name=name, reason=reason, page_size=page_size, page_token=page_token
        )
        return convert.dead_letter_page(self._call(self._stub.ListDeadLetters, request))

    def iter_dead_letters(
        self,
        subscription: str,
        *,
        name: str | None = None,
        reason: str | None = None,
        page_size: int = DEAD_LETTER_PAGE_SIZE,
    ) -> Iterator[DeadLetterInfo]:
        """Every dead letter of a subscription, oldest first, fetched a page at a time.

        Takes the filters of `list_dead_letters`; `page_size` is how many each call fetches.
        """
        token: str | None = None
        while True:
            page = self.list_dead_letters(
                subscription, name=name, reason=reason, page_size=page_size, page_token=token
            )
            yield from page.items
            token = page.next_page_token
            if token is None:
                return

    def get_dead_letter(self, subscription: str, event_id: str) -> DeadLetterInfo | None:
        """One event's dead letter in a subscription; None if it is not dead there.

        Raises:
            NotFound: There is no such event.

        """
        response = self._call(self._stub.GetEvent, pb.GetEventRequest(event_id=event_id))
        return convert.dead_letter_from_event(response, subscription)

    def redrive_dead_letters(
        self,
        subscription: str,
        *,
        event_ids: Iterable[str] | None = None,
        name: str | None = None,
        reason: str | None = None,
        all: bool = False,
    ) -> int:
        """Make dead letters ready again; their attempts are counted afresh from 1.

        Give either `event_ids`, or `all=True` for every dead letter (narrowed by
        `name` and `reason` when given). Many ids go in several calls of 1,000.

        Args:
            subscription: Subscription name.
            event_ids: The events to redrive; ids that are not dead there are skipped.
                An empty collection redrives nothing.
            name: Only events with this name.
            reason: Only those that died for this reason (see `list_dead_letters`).
            all: Redrive every dead letter that matches `name` and `reason`.

        Returns:
            How many deliveries were made ready again.

        Raises:
            ValueError: Neither or both of `event_ids` and `all`, or an unknown `reason`
                (nothing was sent).

        """
        requests = convert.redrive_requests(
            subscription, event_ids=event_ids, name=name, reason=reason, all=all
        )
        return convert.redriven_count(
            self._call(self._stub.RedriveDeadLetters, r) for r in requests
        )

    def seek(self, subscription: str, to: datetime) -> SeekResult:
        """Move a subscription to a time: replay what was published since, skip what came before.

        Events published at or after `to` are delivered again (acked and dead ones
        too, attempts counted afresh); waiting deliveries of events published before
        it are marked acked. Deliveries in flight are left to their consumers.

        Args:
            subscription: Subscription name.
            to: The time (naive means UTC): in the past to replay, now or later to skip
                the backlog.

        Returns:
            How many deliveries were replayed and how many skipped.

        """
        response = self._call(self._stub.Seek, convert.seek_request(subscription, to))
        return convert.seek_result(response)

    # -- consuming (low level; see Consumer for the runtime) -----------------

    def subscribe(
        self,
        subscription: str,
        *,
        max_outstanding: int = 100,
        max_batch_size: int = 100,
        consumer_name: str = "",
    ) -> Generator[list[Message], None, None]:
        """Attach to a subscription and yield each batch of deliveries as it arrives.

        The broker never sends more than `max_outstanding` unacked deliveries; ack or
        nack each one. Closing the iterator disconnects, which gives the unacked
        deliveries back at once.

        Args:
            subscription: Subscription name.
            max_outstanding: Unacked deliveries this consumer may hold at once.
            max_batch_size: Most deliveries in one batch.
            consumer_name: Shown in attempt history and stats.

        """
        request = convert.subscribe_request(
            subscription,
            max_outstanding=max_outstanding,
            max_batch_size=max_batch_size,
            consumer_name=consumer_name,
        )
        for response in self._stream(request):
            yield convert.messages(response)

    def tail(self, filter: str | Sequence[str]) -> Generator[Message, None, None]:
        """Yield new events matching `filter` as they are published (ephemeral: no acks).

        Nothing is left behind on the broker; events published while not tailing are
        not seen. Messages have an empty `ack_id`.
        """
        for response in self._stream(convert.tail_request(filter)):
            yield from convert.messages(response)

    def _stream(self, request: pb.SubscribeRequest) -> Generator[pb.SubscribeResponse, None, None]:
        call = self._stub.Subscribe(request, metadata=self._config.metadata)
        try:
            yield from call
        except grpc.RpcError as error:
            raise error_from_rpc(error, request) from None
        finally:
            call.cancel()

    def ack(self, ack_ids: AckIds) -> AckResult:
        """Acknowledge deliveries (ack ids or Messages): they are done.

        Returns:
            The ack ids not applied (unknown, or their lease expired or moved on).

        """
        return convert.ack_result(
            self._call(self._stub.Ack, r) for r in convert.ack_requests(ack_ids)
        )

    def nack(
        self,
        ack_ids: AckIds,
        *,
        delay: DurationLike | None = None,
        terminal: bool = False,
        error: str = "",
    ) -> AckResult:
        """Give deliveries back: retried after `delay` (default: the subscription's backoff).

        Args:
            ack_ids: Ack ids or Messages.
            delay: Retry after this long instead of the backoff.
            terminal: Dead-letter now instead of retrying.
            error: Why it failed, kept in the delivery's attempt history.

        """
        requests = convert.nack_requests(ack_ids, delay=delay, terminal=terminal, error=error)
        return convert.ack_result(self._call(self._stub.Nack, r) for r in requests)

    def extend_ack_deadline(self, ack_ids: AckIds, extension: DurationLike) -> AckResult:
        """Keep leases longer: each now ends `extension` from now (1 s .. 12 h).

        Like every duration of this client, a number is seconds; `"5m"` or a
        `timedelta` do too.
        """
        requests = convert.extend_requests(ack_ids, extension)
        return convert.ack_result(self._call(self._stub.ExtendAckDeadline, r) for r in requests)
