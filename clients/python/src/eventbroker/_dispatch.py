"""Running one delivery's handlers: their `Context`, the timeout, and the ack-or-nack verdict.

All handlers whose pattern matches run concurrently, each within its own
timeout. The delivery is acked when every one returns; it is nacked with the
failures' reprs when any raises or outlives its timeout (after the longest
`Retry(delay=)` delay, if any raised one), and nacked as terminal when any raises
`Terminal` or when its data does not match a handler's `model=` (no retry can fix it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from eventbroker import _models, durations
from eventbroker._routes import Route
from eventbroker.errors import Retry, Terminal
from eventbroker.types import AckResult, DurationLike, Message

_log = logging.getLogger("eventbroker.consumer")

ExtendLease = Callable[[str, timedelta], Awaitable[AckResult]]


class Context:
    """What a handler has at hand besides the message: the attempt, the deadline, more time.

    One context is shared by all handlers of a delivery.
    """

    __slots__ = ("_deadline", "_extend_lease", "_loop", "_message", "_stopping", "_timeouts")

    def __init__(
        self,
        message: Message,
        *,
        extend_lease: ExtendLease,
        stopping: asyncio.Event,
    ) -> None:
        self._message = message
        self._deadline = message.ack_deadline
        self._extend_lease = extend_lease
        self._stopping = stopping
        self._loop = asyncio.get_running_loop()
        self._timeouts: list[asyncio.Timeout] = []

    @property
    def message(self) -> Message:
        """The delivery as received (data decoded, not validated into a model)."""
        return self._message

    @property
    def attempt(self) -> int:
        """Attempt number: 1 on the first delivery, 2 on the first retry, ..."""
        return self._message.attempt

    @property
    def deadline(self) -> datetime | None:
        """When the lease ends unless acked or extended (UTC)."""
        return self._deadline

    @property
    def stopping(self) -> bool:
        """True once the consumer is shutting down: a long handler may wrap up early."""
        return self._stopping.is_set()

    async def extend(self, extension: DurationLike) -> bool:
        """Keep the lease for `extension` from now (seconds, a timedelta or `"5m"`; 1 s .. 12 h).

        The handlers' timeouts move out as far, so no handler is cancelled before
        the new deadline.

        Returns:
            False when the lease was already lost (expired or given to another
            consumer): the delivery will come again, and this attempt's ack will not count.

        Raises:
            ValueError: The extension is not between 1 s and 12 h (nothing was sent).
            BrokerError: The broker refused the call.

        """
        length = durations.parse_duration(
            extension, name="extension", limits=durations.ACK_DEADLINE
        )
        result = await self._extend_lease(self._message.ack_id, length)
        if result.not_applied:
            return False
        self._deadline = datetime.now(UTC) + length
        extended_to = self._loop.time() + length.total_seconds()
        for timeout in self._timeouts:  # only those of handlers still running
            when = timeout.when()
            if when is not None and not timeout.expired():
                timeout.reschedule(max(when, extended_to))
        return True

    def extend_sync(self, extension: DurationLike) -> bool:
        """`extend` for a sync handler (which runs in a worker thread): blocks until done.

        Raises:
            RuntimeError: Called on the event loop's own thread (use `await extend(...)`).

        """
        if running_loop() is self._loop:
            raise RuntimeError("extend_sync blocks; in an async handler use `await ctx.extend()`")
        return asyncio.run_coroutine_threadsafe(self.extend(extension), self._loop).result()

    def _watch(self, timeout: asyncio.Timeout) -> None:
        self._timeouts.append(timeout)

    def _unwatch(self, timeout: asyncio.Timeout) -> None:
        self._timeouts.remove(timeout)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a delivery after its handlers ran.

    Attributes:
        ack: True to ack; False to nack.
        error: The nack's error: the failures' reprs, joined by `; `.
        terminal: Nack as terminal (dead-letter now).
        delay: Retry after this long instead of the subscription's backoff.
        failures: What the failed handlers raised (for the delivery's trace span).

    """

    ack: bool
    error: str = ""
    terminal: bool = False
    delay: timedelta | None = None
    failures: tuple[BaseException, ...] = ()


async def run_handlers(routes: Sequence[Route], message: Message, context: Context) -> Verdict:
    """Run every route's handler for one delivery concurrently and judge the outcome."""
    if not routes:
        return Verdict(ack=False, error=f"no handler for {message.name}")
    tasks = [asyncio.create_task(_run_route(route, message, context)) for route in routes]
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        raise
    failures: list[BaseException] = []
    for route, task in zip(routes, tasks, strict=True):
        error = _failure(route, task)
        if error is not None:
            _log_failure(route, message, error)
            failures.append(error)
    if not failures:
        return Verdict(ack=True)
    delays = [f.delay for f in failures if isinstance(f, Retry) and f.delay is not None]
    return Verdict(
        ack=False,
        error="; ".join(repr(f) for f in failures),
        terminal=any(isinstance(f, Terminal) for f in failures),
        delay=max(delays) if delays else None,
        failures=tuple(failures),
    )


def _log_failure(route: Route, message: Message, error: BaseException) -> None:
    """`Terminal` and `Retry` are outcomes a handler chose: INFO, no traceback; else WARNING."""
    where = f"{route.handler_name} on {message.name} {message.event_id} (attempt {message.attempt})"
    if isinstance(error, Terminal):
        _log.info("%s: dead-lettered: %s", where, error)
    elif isinstance(error, Retry):
        after = f"in {durations.format_duration(error.delay)}" if error.delay else "after backoff"
        _log.info("%s: retry %s: %s", where, after, error)
    else:
        _log.warning("%s failed: %r", where, error, exc_info=error)


async def _run_route(route: Route, message: Message, context: Context) -> None:
    """Run one handler within its timeout (which `Context.extend` may move out)."""
    scope = asyncio.timeout(route.timeout_s)
    try:
        async with scope:
            context._watch(scope)
            try:
                await _invoke(route, message, context)
            finally:
                context._unwatch(scope)
    except TimeoutError:
        if scope.expired():
            raise TimeoutError(
                f"handler {route.handler_name} did not finish within {route.timeout_s:g} s"
            ) from None
        raise


async def _invoke(route: Route, message: Message, context: Context) -> None:
    if route.model is not None:
        try:
            data = _models.validate(route.model, message.data)
        except (ValueError, TypeError) as error:
            # No retry makes the same data fit: dead-letter it now, saying why.
            name = getattr(route.model, "__name__", repr(route.model))
            raise Terminal(f"data does not match {name}: {error}") from error
        message = dataclasses.replace(message, data=data)
    if is_async(route.handler):
        await route.handler(message, context)
    else:
        await asyncio.to_thread(route.handler, message, context)


def _failure(route: Route, task: asyncio.Task[None]) -> BaseException | None:
    if task.cancelled():
        return asyncio.CancelledError(f"handler {route.handler_name} was cancelled")
    return task.exception()


def is_async(handler: Callable[..., Any]) -> bool:
    """Whether calling the handler gives a coroutine (async def, or an object with one)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 (callable objects with async __call__)
    )


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
