"""Group commit at the client: publishes made while a call is on its way go out together.

A publish goes out at once when the client has a call slot free (no publish call
in flight, by default). Publishes made while every slot is busy wait in a queue;
when a call returns, its slot takes everything that waited, up to the bounds of
`PublishBatching`, as one `BatchPublish` (a batch of one goes as a `Publish`).
No timer is involved: at a low rate each publish is a call of its own, at a high
rate the batches grow with the load, as a database's group commit does.

Each caller still gets its own `PublishResult` or error:

- an event the broker would refuse (a bad name, a size, a priority, ...) is seen
  here and never joined to others: it goes alone and its refusal is its own;
- a joined batch the broker refuses whole anyway (what only it knows: a key's name
  patterns, a rate, a limit set lower) is sent again in parts: the events its
  field violations name (`events[3].name`) alone and the rest together, or, when
  none is named, each alone; so only the bad event's caller gets the error;
- a batch that fails with `UNAVAILABLE` or `DEADLINE_EXCEEDED` goes back to the
  front of the queue and is sent again (with what joined meanwhile) after the
  retry backoff, each event under its own id, so a retried batch stores each
  event once; each event keeps its own count of attempts and backoff, as a
  publish sent alone does, and a caller whose timeout would run out before its
  next attempt gets the error instead.

`PublishQueue` holds that logic without any I/O; `AsyncPublisher` (asyncio: one
task per busy slot) and `BlockingPublisher` (threads: the caller of a batch's
first event sends it) drive it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import grpc

from eventbroker import limits
from eventbroker._publish import RETRY_CODES, Deadline, log_retry_of
from eventbroker.errors import BrokerError, DeadlineExceeded
from eventbroker.types import PublishResult
from eventbroker.v1 import broker_pb2 as pb

_log = logging.getLogger("eventbroker.client")

#: A joined batch at most, by default: half the broker's default limits (1,000 events,
#: 4 MiB), so a batch is never refused for its size by a broker with the defaults.
BATCH_EVENTS_DEFAULT = limits.BATCH_MAX_EVENTS_DEFAULT // 2
BATCH_BYTES_DEFAULT = limits.BATCH_MAX_BYTES_DEFAULT // 2
#: Publish calls a client keeps on their way at once, by default, and at most.
IN_FLIGHT_DEFAULT = 1
IN_FLIGHT_MAX = 64
#: How long after its own deadline a caller stops waiting by itself: its call's own
#: DEADLINE_EXCEEDED comes first; this ends the wait of one queued behind, or sent in, a
#: call that outlasts it (a batch's call may take until the latest deadline of its events).
DEADLINE_GRACE_S = 0.25
#: Codes of a refusal that may be about one event of a batch (a bad field, a size, a
#: name a key may not use): the batch is sent again in parts.
REFUSAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)
_EVENT_INDEX = re.compile(r"events\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class PublishBatching:
    """How a client joins concurrent publishes into one call.

    Pass it as `Client(publish_batching=...)` or `AsyncClient(publish_batching=...)`;
    `True` (the default) is `PublishBatching()`, `False` sends one call per event.

    Attributes:
        enabled: Join publishes made while a call is in flight; False sends each
            publish as its own `Publish` call.
        max_events: Most events in one joined batch.
        max_bytes: Most bytes of one joined `BatchPublish` request. An event larger
            than this goes alone.
        max_in_flight: Publish calls on their way at once; a publish goes out at once
            while fewer are, and waits to join the next batch otherwise.

    Raises:
        ValueError: A bound is out of range (the message names it).

    """

    enabled: bool = True
    max_events: int = BATCH_EVENTS_DEFAULT
    max_bytes: int = BATCH_BYTES_DEFAULT
    max_in_flight: int = IN_FLIGHT_DEFAULT

    def __post_init__(self) -> None:
        if self.max_events < 1:
            raise ValueError(
                f"PublishBatching.max_events must be at least 1; got {self.max_events}"
            )
        if self.max_bytes < 1:
            raise ValueError(f"PublishBatching.max_bytes must be at least 1; got {self.max_bytes}")
        if not 1 <= self.max_in_flight <= IN_FLIGHT_MAX:
            raise ValueError(
                f"PublishBatching.max_in_flight must be between 1 and {IN_FLIGHT_MAX}; "
                f"got {self.max_in_flight}"
            )

    @classmethod
    def of(cls, value: bool | PublishBatching) -> PublishBatching:
        """The settings a client's `publish_batching` argument stands for."""
        if isinstance(value, PublishBatching):
            return value
        if isinstance(value, bool):
            return cls(enabled=value)
        raise TypeError(
            f"publish_batching must be a bool or a PublishBatching; got {type(value).__name__}"
        )


class Outcome(Protocol):
    """Where a caller waits for its publish: an asyncio or a blocking future."""

    def done(self) -> bool:
        """Whether it has a result, an error, or its caller stopped waiting."""
        ...

    def set_result(self, result: PublishResult, /) -> None:
        """The event is stored (or was already): the caller's result."""
        ...

    def set_exception(self, error: BaseException, /) -> None:
        """The publish failed: the caller's error."""
        ...


OutcomeT = TypeVar("OutcomeT", bound=Outcome)


@dataclass(eq=False, slots=True)
class Pending(Generic[OutcomeT]):
    """One publish waiting for its result.

    Attributes:
        name: The event name as given (for logs and errors).
        event: The proto event, its id assigned before its first send.
        deadline: The caller's total time, shared by the attempts.
        outcome: Where the caller waits.
        size_bytes: Its share of a BatchPublish request, in bytes.
        alone: Never joined to others: the broker would refuse it, it is larger than a
            batch may be, or a batch with it was refused.
        failures: Its failed attempts (`UNAVAILABLE`, `DEADLINE_EXCEEDED`) so far.
        retry_at: When its next attempt may go (`time.monotonic`); 0 for at once.
        last_error: The error of its last failed attempt, its caller's when time runs out.

    """

    name: str
    event: pb.Event
    deadline: Deadline
    outcome: OutcomeT
    size_bytes: int = 0
    alone: bool = False
    failures: int = 0
    retry_at: float = 0.0
    last_error: BaseException | None = None


@dataclass(eq=False, slots=True)
class Batch(Generic[OutcomeT]):
    """Publishes to send in one call, in queue order.

    Attributes:
        members: The publishes.
        after_refusal: What was left of a refused batch: refused again, each is sent alone.

    """

    members: list[Pending[OutcomeT]]
    after_refusal: bool = False

    def what(self) -> str:
        """How logs name the call."""
        if len(self.members) == 1:
            return f"publish of {self.members[0].name}"
        return f"publish of {len(self.members)} events"


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _is_refused_by_broker(event: pb.Event) -> bool:
    """Whether the broker would refuse the event for something cheap to see here."""
    if not limits.is_valid_name(event.name):
        return True
    if not limits.PRIORITY_MIN <= event.priority <= limits.PRIORITY_MAX:
        return True
    if (
        len(event.id) > limits.DEDUP_ID_MAX_LENGTH
        or len(event.ordering_key) > limits.ORDERING_KEY_MAX_LENGTH
        or "\x00" in event.ordering_key
        or len(event.content_type) > limits.CONTENT_TYPE_MAX_LENGTH
    ):
        return True
    headers = event.headers
    if len(headers) > limits.HEADERS_MAX_COUNT or any(not key for key in headers):
        return True
    size = len(event.name) + len(event.binary_data)
    size += sum(len(key) + len(value) for key, value in headers.items())
    return size > limits.EVENT_MAX_BYTES_DEFAULT


def _late(item: Pending[OutcomeT]) -> DeadlineExceeded:
    return DeadlineExceeded(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"publish of {item.name} did not finish within its timeout of {item.deadline.total_s:g} s",
    )


class PublishQueue(Generic[OutcomeT]):
    """The publishes waiting for a call, the call slots in use, and the retry backoff.

    No I/O and no locking: a driver sends what `add` and `next` hand it, reports
    what came back with `succeeded` and `failed`, and serialises the calls (the
    asyncio driver by its loop, the blocking one with a lock).
    """

    def __init__(self, settings: PublishBatching) -> None:
        self.settings = settings
        self._waiting: deque[Pending[OutcomeT]] = deque()
        self._busy_slots = 0

    def pending(
        self, name: str, event: pb.Event, deadline: Deadline, outcome: OutcomeT
    ) -> Pending[OutcomeT]:
        """A publish for `add`, with its size and whether it may join others."""
        size = event.ByteSize()
        size_in_batch = 1 + _varint_bytes(size) + size
        alone = size_in_batch > self.settings.max_bytes or _is_refused_by_broker(event)
        return Pending(name, event, deadline, outcome, size_in_batch, alone)

    def add(self, item: Pending[OutcomeT]) -> Batch[OutcomeT] | None:
        """Queue a publish; a batch to send now when a call slot is free (the slot is taken)."""
        self._waiting.append(item)
        if self._busy_slots >= self.settings.max_in_flight:
            return None
        batch = self._take()
        if batch is not None:
            self._busy_slots += 1
        return batch

    def next(self) -> Batch[OutcomeT] | None:
        """After a slot's call: its next batch, or None (and the slot is free again)."""
        batch = self._take()
        if batch is None:
            self._busy_slots -= 1
        return batch

    def requeue(self, members: Sequence[Pending[OutcomeT]]) -> None:
        """Put publishes back at the front of the queue, in their order (a call was abandoned)."""
        self._waiting.extendleft(reversed([m for m in members if not m.outcome.done()]))

    def release(self) -> None:
        """Free a slot whose sender stopped without asking for its next batch."""
        self._busy_slots -= 1

    @staticmethod
    def pause_s(batch: Batch[OutcomeT]) -> float:
        """How long to wait before sending a batch: the retry backoff of its retried events.

        A batch of new publishes goes at once; one holding a retried event waits
        for that event's backoff (the others would meet the same failure).
        """
        due = max(m.retry_at for m in batch.members)
        return max(0.0, due - time.monotonic()) if due else 0.0

    def _take(self) -> Batch[OutcomeT] | None:
        """The next batch from the front: one that goes alone, or as many as the bounds allow."""
        waiting = self._waiting
        while waiting and waiting[0].outcome.done():
            waiting.popleft()
        if not waiting:
            return None
        first = waiting.popleft()
        members = [first]
        if first.alone:
            return Batch(members)
        size = first.size_bytes
        max_events, max_bytes = self.settings.max_events, self.settings.max_bytes
        while waiting and len(members) < max_events:
            candidate = waiting[0]
            if candidate.outcome.done():
                waiting.popleft()
                continue
            if candidate.alone or size + candidate.size_bytes > max_bytes:
                break
            members.append(waiting.popleft())
            size += candidate.size_bytes
        return Batch(members)

    @staticmethod
    def sendable(batch: Batch[OutcomeT]) -> list[Pending[OutcomeT]]:
        """The members to send: those still waiting; one whose time ran out gets its error.

        That is its last attempt's error, or `DeadlineExceeded` if it was never sent.
        """
        members = []
        for member in batch.members:
            if member.outcome.done():
                continue
            if member.deadline.left_s() == 0.0:
                member.outcome.set_exception(member.last_error or _late(member))
                continue
            members.append(member)
        return members

    @staticmethod
    def attempt_timeout_s(members: Sequence[Pending[OutcomeT]]) -> float | None:
        """How long one call may take: the client's call limit, cut to the latest deadline.

        A member whose deadline comes sooner stops waiting by itself at its deadline.
        """
        per_call = members[0].deadline.per_call_s
        left = [m.deadline.left_s() for m in members]
        if any(value is None for value in left):
            return per_call
        latest = max(value for value in left if value is not None)
        return latest if per_call is None else min(latest, per_call)

    def succeeded(
        self, members: Sequence[Pending[OutcomeT]], results: Sequence[PublishResult]
    ) -> None:
        """The call stored them: each caller gets its result."""
        for member, result in zip(members, results, strict=True):
            if not member.outcome.done():
                member.outcome.set_result(result)

    def failed(self, batch: Batch[OutcomeT], error: BaseException) -> list[Batch[OutcomeT]]:
        """The call of `batch` (its members as sent) failed; the batches to send at once.

        Retryable: the members go back to the front of the queue (their callers with
        too little time left get the error). A refusal of several: the parts to send
        (see the module). Anything else: every member gets the error.
        """
        members = [m for m in batch.members if not m.outcome.done()]
        if isinstance(error, BrokerError) and error.code in RETRY_CODES:
            self._retry_later(members, error)
            return []
        if (
            isinstance(error, BrokerError)
            and error.code in REFUSAL_CODES
            and len(batch.members) > 1
        ):
            parts = self._parts(batch, error)
            for part in parts:  # without callers that stopped waiting meanwhile
                part.members[:] = [m for m in part.members if not m.outcome.done()]
            return [part for part in parts if part.members]
        for member in members:
            member.outcome.set_exception(error)
        return []

    def _retry_later(self, members: list[Pending[OutcomeT]], error: BrokerError) -> None:
        """Each member again after its own backoff, or its error when its time runs out first."""
        now = time.monotonic()
        again: list[Pending[OutcomeT]] = []
        for member in members:
            member.failures += 1
            member.deadline.record(error)
            pause = member.deadline.next_pause_s(member.failures)
            if pause is None:
                member.outcome.set_exception(member.deadline.failure(error))
            else:
                member.retry_at = now + pause
                member.last_error = error
                again.append(member)
        if again:
            retry = Batch(again)
            attempt = max(m.failures for m in again) + 1
            log_retry_of(
                retry.what(), error, attempt, self.pause_s(retry), again[0].deadline.total_s
            )
            self.requeue(again)

    @staticmethod
    def _parts(batch: Batch[OutcomeT], error: BrokerError) -> list[Batch[OutcomeT]]:
        """A refused batch in parts: by the indexes its field violations name, else one by one."""
        members = batch.members
        named = {
            int(match.group(1))
            for field_path, _ in error.field_violations
            if (match := _EVENT_INDEX.match(field_path)) is not None
        }
        named &= set(range(len(members)))
        _log.debug("%s refused (%s); sending it again in parts", batch.what(), error)
        if named and len(named) < len(members) and not batch.after_refusal:
            rest = [m for index, m in enumerate(members) if index not in named]
            bad = [members[index] for index in sorted(named)]
            for member in bad:
                member.alone = True
            return [Batch(rest, after_refusal=True), *(Batch([m]) for m in bad)]
        for member in members:
            member.alone = True
        return [Batch([m]) for m in members]


Send = Callable[[Sequence[pb.Event], float | None], Awaitable[list[PublishResult]]]
SendBlocking = Callable[[Sequence[pb.Event], float | None], list[PublishResult]]


def _wait_limit_s(deadline: Deadline) -> float | None:
    left = deadline.left_s()
    return None if left is None else left + DEADLINE_GRACE_S


class AsyncPublisher:
    """Drives a `PublishQueue` on an asyncio loop: one task per busy call slot.

    Args:
        settings: The bounds (batching must be enabled).
        send: Sends events in one call (`Publish` for one, `BatchPublish` for more)
            with a timeout; returns one result per event, raises `BrokerError`.

    """

    def __init__(self, settings: PublishBatching, send: Send) -> None:
        self._queue: PublishQueue[asyncio.Future[PublishResult]] = PublishQueue(settings)
        self._send = send
        self._slots: set[asyncio.Task[None]] = set()

    async def publish(self, name: str, event: pb.Event, deadline: Deadline) -> PublishResult:
        """Send one event, alone or with others; its result or its error."""
        outcome: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        item = self._queue.pending(name, event, deadline, outcome)
        batch = self._queue.add(item)
        if batch is not None:
            slot = asyncio.create_task(self._run(batch))
            self._slots.add(slot)
            slot.add_done_callback(self._slots.discard)
        try:
            async with asyncio.timeout(_wait_limit_s(deadline)):
                return await outcome
        except TimeoutError:
            raise _late(item) from None
        except BrokerError as error:  # afresh: the sending task's frames are not the caller's
            raise error.with_traceback(None) from None

    async def drain(self) -> None:
        """Wait until every queued publish has its result (before the channel closes)."""
        while self._slots:
            await asyncio.gather(*self._slots, return_exceptions=True)

    async def _run(self, batch: Batch[asyncio.Future[PublishResult]] | None) -> None:
        """One busy slot: send its batch, then the next, until nothing waits."""
        try:
            while batch is not None:
                await self._deliver(batch)
                batch = self._queue.next()
        except BaseException:  # cancelled with its loop: so are its callers
            if batch is not None:
                for member in batch.members:
                    member.outcome.cancel()
            self._queue.release()
            raise

    async def _deliver(self, batch: Batch[asyncio.Future[PublishResult]]) -> None:
        pause = self._queue.pause_s(batch)
        if pause > 0:
            await asyncio.sleep(pause)
        members = self._queue.sendable(batch)
        if not members:
            return
        try:
            results = await self._send(
                [m.event for m in members], self._queue.attempt_timeout_s(members)
            )
        except Exception as error:  # each caller gets it as its own
            sent = Batch(members, batch.after_refusal)
            for part in self._queue.failed(sent, error):
                await self._deliver(part)
            return
        self._queue.succeeded(members, results)


class _Waiter:
    """Where a blocking caller waits: for its result, or for a batch it is to send.

    Changed only under its publisher's lock.
    """

    def __init__(self) -> None:
        self.woken = threading.Event()
        self.finished = False  # a result, an error, or its caller stopped waiting
        self.result: PublishResult | None = None
        self.error: BaseException | None = None
        self.lead: Batch[_Waiter] | None = None

    def done(self) -> bool:
        """Whether nothing more is to be sent for it."""
        return self.finished

    def set_result(self, result: PublishResult, /) -> None:
        """Its event is stored."""
        self.result, self.finished = result, True
        self.woken.set()

    def set_exception(self, error: BaseException, /) -> None:
        """Its publish failed."""
        self.error, self.finished = error, True
        self.woken.set()

    def hand(self, batch: Batch[_Waiter]) -> None:
        """Ask its caller's thread to send `batch` (it holds a call slot)."""
        self.lead = batch
        self.woken.set()

    def take_lead(self) -> Batch[_Waiter] | None:
        """The batch handed to it, if any (taken once)."""
        batch, self.lead = self.lead, None
        if batch is not None and not self.finished:
            self.woken.clear()
        return batch


class BlockingPublisher:
    """Drives a `PublishQueue` from the callers' own threads, without a thread of its own.

    The caller whose publish finds a call slot free sends it; when a call returns,
    its sender hands the slot and the next batch to the thread of that batch's
    first caller, which sends it (or keeps both when its own event is in it). So
    every thread sends only batches its own event is in, and a lone publish is
    sent by its caller at once.

    Args:
        settings: The bounds (batching must be enabled).
        send: Sends events in one blocking call (`Publish` for one, `BatchPublish`
            for more) with a timeout; returns one result per event.

    """

    def __init__(self, settings: PublishBatching, send: SendBlocking) -> None:
        self._queue: PublishQueue[_Waiter] = PublishQueue(settings)
        self._send = send
        self._lock = threading.Lock()

    def publish(self, name: str, event: pb.Event, deadline: Deadline) -> PublishResult:
        """Send one event, alone or with others; its result or its error."""
        waiter = _Waiter()
        item = self._queue.pending(name, event, deadline, waiter)
        with self._lock:
            batch = self._queue.add(item)
        try:
            if batch is not None:
                self._lead(batch, waiter)
            self._wait(waiter, item)
        except BaseException:  # KeyboardInterrupt, or its timeout: pass on what it was handed
            with self._lock:
                waiter.finished = True
                orphan = waiter.take_lead()
                if orphan is not None:
                    self._queue.requeue(orphan.members)
                    self._hand_over(self._queue.next())
            raise
        if waiter.error is not None:
            # Raised afresh here: the frames of whichever caller sent the batch are not
            # this caller's to read (a bad name reads as one line and a short traceback).
            raise waiter.error.with_traceback(None)
        assert waiter.result is not None
        return waiter.result

    def _wait(self, waiter: _Waiter, item: Pending[_Waiter]) -> None:
        """Wait for the result, sending each batch handed over meanwhile."""
        while True:
            with self._lock:
                batch = waiter.take_lead()
                if batch is None and waiter.finished:
                    return
            if batch is not None:
                self._lead(batch, waiter)
                continue
            if not waiter.woken.wait(_wait_limit_s(item.deadline)):
                with self._lock:
                    if not waiter.finished and waiter.lead is None:
                        raise _late(item)

    def _lead(self, batch: Batch[_Waiter] | None, me: _Waiter) -> None:
        """Send `batch` and the ones after it, until the next is another thread's to send."""
        while batch is not None:
            try:
                self._deliver(batch)
            except BaseException:  # KeyboardInterrupt: the others go on without this thread
                with self._lock:
                    me.finished = True
                    self._queue.requeue(batch.members)
                    self._hand_over(self._queue.next())
                raise
            with self._lock:
                batch = self._queue.next()
                if batch is not None and all(m.outcome is not me for m in batch.members):
                    self._hand_over(batch)
                    batch = None

    @staticmethod
    def _hand_over(batch: Batch[_Waiter] | None) -> None:
        if batch is not None:
            batch.members[0].outcome.hand(batch)

    def _deliver(self, batch: Batch[_Waiter]) -> None:
        with self._lock:
            pause = self._queue.pause_s(batch)
        if pause > 0:
            time.sleep(pause)
        with self._lock:
            members = self._queue.sendable(batch)
            timeout = self._queue.attempt_timeout_s(members) if members else None
        if not members:
            return
        try:
            results = self._send([m.event for m in members], timeout)
        except Exception as error:  # each caller gets it as its own
            with self._lock:
                parts = self._queue.failed(Batch(members, batch.after_refusal), error)
            for part in parts:
                self._deliver(part)
            return
        with self._lock:
            self._queue.succeeded(members, results)
