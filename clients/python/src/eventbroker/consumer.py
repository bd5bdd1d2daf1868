"""`Consumer`: the runtime for long-lived consumer processes.

    consumer = Consumer("billing")

    @consumer.on("order.new", model=OrderNew)
    async def charge(msg: Message, ctx: Context) -> None: ...

    consumer.run()  # until SIGINT/SIGTERM, then drains

One stream to the broker delivers at most `max_outstanding` deliveries at a
time; each runs its matching handlers (see `eventbroker._dispatch`) while the
leaser keeps its lease (`eventbroker._leaser`), and is acked or nacked through
a batching settler (`eventbroker._settle`). A dropped stream
is reconnected with exponential backoff and jitter, forever, until `stop()`;
errors that retrying cannot fix (bad arguments, unknown subscription, bad key)
end `run()` by raising.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import socket
import threading
from collections.abc import AsyncIterable, Callable
from datetime import timedelta
from typing import Any, TypeVar, overload

import grpc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.wait import wait_exponential, wait_random

from eventbroker import _models, durations
from eventbroker import _tracing as tracing
from eventbroker._config import TLSConfig
from eventbroker._dispatch import Context, Verdict, run_handlers, running_loop
from eventbroker._leaser import Leaser
from eventbroker._routes import Router
from eventbroker._settle import Settler
from eventbroker.aio import AsyncClient, SubscribeStream
from eventbroker.errors import BrokerError
from eventbroker.types import DurationLike, Message

__all__ = ["Consumer", "Context"]

_log = logging.getLogger("eventbroker.consumer")
# What a consumer process does (connected, stream lost, draining) is worth seeing
# in its log: INFO shows once the application configures logging (even with the
# root at WARNING, as `logging.basicConfig()` leaves it), unless it sets a level here.
if _log.level == logging.NOTSET:
    _log.setLevel(logging.INFO)

Handler = TypeVar("Handler", bound=Callable[..., Any])
ModelT = TypeVar("ModelT")
R = TypeVar("R")
#: A handler of messages whose data is a `ModelT`, async or not.
ModelHandler = Callable[[Message[ModelT], Context], R]

DEFAULT_MAX_OUTSTANDING = 100
DEFAULT_HANDLER_TIMEOUT_S = 30.0
MAX_BATCH_SIZE = 100
#: Reconnect backoff: 0.1 s growing by 1.6 per failure up to 10 s (as gRPC's own
#: reconnect grows), plus up to half a second of jitter so consumers spread out.
#: Refused connections fail fast, so a doubling backoff would reach its maximum
#: within a broker's restart and leave consumers idle long after it is back.
RECONNECT_INITIAL_S = 0.1
RECONNECT_GROWTH = 1.6
RECONNECT_MAX_S = 10.0
RECONNECT_JITTER_S = 0.5
#: A stream that lived this long, or delivered anything, was healthy: when it
#: drops, reconnecting starts again from the shortest backoff.
HEALTHY_STREAM_S = 10.0
#: Status codes that no retry can fix; they end `run()`.
FATAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class _Default(enum.Enum):
    """Marks an argument left to the consumer's default."""

    HANDLER_TIMEOUT = "handler_timeout"


class _StreamEndedError(Exception):
    """The broker ended the stream without an error before it delivered anything."""


def _timeout_s(name: str, timeout: DurationLike | None) -> float | None:
    """A handler timeout in seconds (None for no limit).

    Raises:
        ValueError: It cannot be read, or is not more than zero.

    """
    if timeout is None:
        return None
    length = durations.parse_duration(timeout, name=name)
    if length <= timedelta(0):
        raise ValueError(f"{name} must be more than 0 s (None for no limit); got 0 s")
    return length.total_seconds()


def _retryable(error: BaseException) -> bool:
    if isinstance(error, BrokerError):
        return error.code not in FATAL_CODES
    return isinstance(error, _StreamEndedError)


class Consumer:
    """Runs handlers for the deliveries of one subscription, acking and nacking for them.

    Each delivery runs every handler whose pattern matches its name, concurrently:
    all return, and it is acked; any raises or takes longer than its timeout,
    and it is nacked with the error (the broker retries after the subscription's
    backoff); any raises `Terminal`, and it is dead-lettered. A delivery that no
    handler matches is nacked too ("no handler for <name>"), never dropped.
    Deliveries come at least once: handlers should be idempotent.

    Args:
        subscription: The durable subscription to consume.
        target: `HOST:PORT`; default `EVENTBROKER_TARGET`, else 127.0.0.1:50051.
        api_key: Bearer key; default `EVENTBROKER_API_KEY`.
        tls: As for `Client`.
        max_outstanding: Deliveries held at once, hence handlers running at once.
        handler_timeout: Default time a handler may run (seconds, a timedelta or
            `"10m"`; `Context.extend` moves it out; `on(..., timeout=)` sets one
            handler's own); None for no limit.
            It may exceed the subscription's ack deadline: while handlers run,
            their lease is renewed automatically.
        consumer_name: Shown in attempt history and stats; default `host:pid`.

    """

    def __init__(
        self,
        subscription: str,
        *,
        target: str | None = None,
        api_key: str | None = None,
        tls: bool | TLSConfig | None = None,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
        handler_timeout: DurationLike | None = DEFAULT_HANDLER_TIMEOUT_S,
        consumer_name: str | None = None,
    ) -> None:
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be at least 1; got {max_outstanding}")
        self.subscription = subscription
        self.max_outstanding = max_outstanding
        self.handler_timeout = _timeout_s("handler_timeout", handler_timeout)
        self.consumer_name = consumer_name or f"{socket.gethostname()}:{os.getpid()}"
        self._client_args: dict[str, Any] = {"target": target, "api_key": api_key, "tls": tls}
        self._router = Router()
        self._lock = threading.Lock()
        self._stop_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._finished = threading.Event()
        self._attached = threading.Event()
        self._in_flight: set[asyncio.Task[None]] = set()

    # -- registration --------------------------------------------------------

    @overload
    def on(
        self,
        pattern: str,
        *,
        model: type[ModelT],
        timeout: DurationLike | _Default | None = ...,
    ) -> Callable[[ModelHandler[ModelT, R]], ModelHandler[ModelT, R]]: ...

    @overload
    def on(
        self,
        pattern: str,
        *,
        model: None = None,
        timeout: DurationLike | _Default | None = ...,
    ) -> Callable[[Handler], Handler]: ...

    def on(
        self,
        pattern: str,
        *,
        model: type[Any] | None = None,
        timeout: DurationLike | _Default | None = _Default.HANDLER_TIMEOUT,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as a handler for events matching `pattern`.

        Args:
            pattern: An event name, or a pattern with `*` (one segment) or a final `>`
                (the rest): `"user.joined"`, `"user.*"`, `"orders.>"`. Case-insensitive.
            model: A dataclass or pydantic model: the handler then gets `msg.data`
                validated into it, typed (`msg: Message[Order]` for `model=Order`).
                Data that does not fit is dead-lettered at once ("data does not
                match Order: ..."), since no retry would make it fit.
            timeout: How long this handler may run (seconds, a timedelta or `"10m"`);
                None for no limit; default the consumer's `handler_timeout`.

        The handler is `async def handler(msg: Message, ctx: Context)`, or a plain
        function of the same arguments, which runs in a worker thread.
        Several handlers may match one name; they all run.

        """
        if model is not None:
            _models.check_model(model)
        timeout_s = (
            self.handler_timeout
            if timeout is _Default.HANDLER_TIMEOUT
            else _timeout_s("timeout", timeout)
        )

        def register(handler: Handler) -> Handler:
            self._router.add(pattern, handler, model, timeout_s)
            return handler

        return register

    # -- running -------------------------------------------------------------

    def run(self) -> None:
        """Consume until `stop()` or SIGINT/SIGTERM, then drain; blocks the calling thread.

        Raises:
            BrokerError: An error no reconnect can fix (e.g. `NotFound` for the
                subscription, `Unauthenticated`).

        """
        asyncio.run(self.run_async(handle_signals=True))

    async def run_async(self, *, handle_signals: bool = False) -> None:
        """Consume until `stop()`, then drain; the asyncio form of `run()`.

        Args:
            handle_signals: Also stop on SIGINT/SIGTERM (main thread only); a second
                signal is not caught.

        Raises:
            BrokerError: An error no reconnect can fix.
            RuntimeError: No handler is registered, or the consumer is running already.

        """
        if not self._router:
            raise RuntimeError("no handlers: register one with @consumer.on('event.name')")
        stopping = self._attach(asyncio.get_running_loop())
        client = AsyncClient(**self._client_args)
        settler = Settler(client, subscription=self.subscription)
        leaser = Leaser(client.extend_ack_deadline)
        helpers = [asyncio.create_task(settler.run()), asyncio.create_task(leaser.run())]
        signals = self._catch_signals() if handle_signals else ()
        try:
            await self._consume(client, settler, leaser, stopping)
        finally:
            for signum in signals:
                asyncio.get_running_loop().remove_signal_handler(signum)
            await self._drain(settler)
            for helper in helpers:
                helper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*helpers)
            await client.close()
            self._detach()

    def stop(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Stop receiving, let in-flight handlers finish, settle them, and end `run()`.

        Safe from any thread. From another thread it blocks until the drain is done
        (unless `wait=False`); on the consumer's own event loop it only asks for the
        stop. A sync handler asking to stop must pass `wait=False` (it is in flight).
        Called before `run()`, it makes that run return at once.
        """
        with self._lock:
            self._stop_requested = True
            loop, stopping = self._loop, self._stopping
        if loop is None or stopping is None:
            return
        if running_loop() is loop:
            stopping.set()
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stopping.set)
        if wait:
            self._finished.wait(timeout)

    def wait_attached(self, timeout: float | None = None) -> bool:
        """Block until the broker has attached this consumer (True) or `timeout` s pass (False).

        Attached means deliveries will come: the broker says so before the first
        one. It turns false again while the stream reconnects. Call it from another
        thread than the one running `run()`.
        """
        return self._attached.wait(timeout)

    @property
    def attached(self) -> bool:
        """True while the consumer is attached to the broker."""
        return self._attached.is_set()

    @property
    def stopping(self) -> bool:
        """True from a stop request until `run()` returns: the consumer is draining."""
        return self._stop_requested

    def _attach(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        stopping = asyncio.Event()
        with self._lock:
            if self._loop is not None:
                raise RuntimeError("this consumer is running already")
            self._loop, self._stopping = loop, stopping
            self._finished.clear()
            if self._stop_requested:
                stopping.set()
        return stopping

    def _detach(self) -> None:
        with self._lock:
            self._loop, self._stopping = None, None
            self._stop_requested = False
        self._finished.set()

    def _catch_signals(self) -> tuple[signal.Signals, ...]:
        if threading.current_thread() is not threading.main_thread():
            return ()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)

        def on_signal(signum: signal.Signals) -> None:
            _log.info("%s: draining in-flight handlers; signal again to exit now", signum.name)
            for caught in signals:
                loop.remove_signal_handler(caught)
            self.stop(wait=False)

        try:
            for signum in signals:
                loop.add_signal_handler(signum, on_signal, signum)
        except NotImplementedError:  # event loops without signal support (Windows)
            return ()
        return signals

    # -- the stream ----------------------------------------------------------

    async def _consume(
        self, client: AsyncClient, settler: Settler, leaser: Leaser, stopping: asyncio.Event
    ) -> None:
        """Stream sessions until stopping; reconnect with backoff while retrying can help."""

        async def sleep_unless_stopping(seconds: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), seconds)

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            _log.warning("stream lost (%s); reconnecting in %.1f s", error, delay)

        while not stopping.is_set():
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_retryable),
                wait=wait_exponential(
                    multiplier=RECONNECT_INITIAL_S, exp_base=RECONNECT_GROWTH, max=RECONNECT_MAX_S
                )
                + wait_random(0, RECONNECT_JITTER_S),
                sleep=sleep_unless_stopping,
                before_sleep=log_retry,
                reraise=True,
            ):
                with attempt:
                    await self._session(client, settler, leaser, stopping)

    async def _session(
        self, client: AsyncClient, settler: Settler, leaser: Leaser, stopping: asyncio.Event
    ) -> None:
        """One stream: returns on stop (after draining) or after a healthy stream dropped."""
        if stopping.is_set():
            return
        stream = client.open_subscription(
            self.subscription,
            max_outstanding=self.max_outstanding,
            max_batch_size=min(self.max_outstanding, MAX_BATCH_SIZE),
            consumer_name=self.consumer_name,
        )
        try:
            await self._stream_session(stream, client.target, settler, leaser, stopping)
        finally:
            self._attached.clear()
            stream.cancel()

    async def _stream_session(
        self,
        stream: SubscribeStream,
        target: str,
        settler: Settler,
        leaser: Leaser,
        stopping: asyncio.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        opened = loop.time()
        received = asyncio.Event()
        attach = asyncio.create_task(self._watch_attach(stream, target))
        reader = asyncio.create_task(self._read(stream, settler, leaser, stopping, received))
        stop_wait = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait({reader, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            attach.cancel()
        if not reader.done():
            # Settle what is in flight while the stream (and so the leases) still stand;
            # deliveries not yet started are given back when the stream closes.
            await self._drain(settler)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, BrokerError):
                await reader
            return
        healthy = received.is_set() or loop.time() - opened >= HEALTHY_STREAM_S
        try:
            reader.result()
        except BrokerError as error:
            if not (healthy and _retryable(error)):
                raise
            _log.warning("stream lost (%s); reconnecting now", error)
            return
        if not healthy:
            raise _StreamEndedError("the broker ended the stream")
        _log.info("stream lost (ended by the broker); reconnecting now")

    async def _watch_attach(self, stream: SubscribeStream, target: str) -> None:
        with contextlib.suppress(BrokerError):  # the reader reports a failed stream
            consumer_id = await stream.attached()
            _log.info("connected to %s, subscription %s", target, self.subscription)
            _log.debug("attached as consumer %s", consumer_id)
            self._attached.set()

    async def _read(
        self,
        stream: AsyncIterable[list[Message]],
        settler: Settler,
        leaser: Leaser,
        stopping: asyncio.Event,
        received: asyncio.Event,
    ) -> None:
        async for batch in stream:
            received.set()
            for message in batch:
                if stopping.is_set():
                    continue
                task = asyncio.create_task(self._deliver(message, settler, leaser, stopping))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    async def _deliver(
        self, message: Message, settler: Settler, leaser: Leaser, stopping: asyncio.Event
    ) -> None:
        # The handlers run inside the delivery's process span (when tracing is on).
        with tracing.Processing(self.subscription, message) as traced:
            try:
                routes = self._router.routes_for(message.name)
                if not routes:
                    _log.warning(
                        "no handler for %s (event %s); nacked", message.name, message.event_id
                    )
                context = Context(message, extend_lease=leaser.extend, stopping=stopping)
                leaser.hold(message)
                try:
                    verdict = await run_handlers(routes, message, context)
                finally:
                    leaser.release(message.ack_id)
            except Exception as error:
                _log.exception("delivery of %s %s failed", message.name, message.event_id)
                verdict = Verdict(ack=False, error=repr(error), failures=(error,))
            if not verdict.ack:
                traced.failed(verdict.error, verdict.failures)
        if verdict.ack:
            settler.ack(message.ack_id, traced=traced.span_context)
        else:
            settler.nack(
                message.ack_id,
                error=verdict.error,
                terminal=verdict.terminal,
                delay=verdict.delay,
                traced=traced.span_context,
            )

    async def _drain(self, settler: Settler) -> None:
        if self._in_flight:
            _log.info("draining %d deliveries", len(self._in_flight))
            await asyncio.wait(set(self._in_flight))
            await settler.flush()
            _log.info("drained")
        await settler.flush()
