"""Group commit: many operations, one transaction, one flush.

One durable commit costs about as much as writing a hundred rows, so the
broker never commits one request at a time. Callers on the event loop submit
operations (functions of a transaction and the current time); worker threads
take everything queued, run it in one write transaction and commit once, then
answer every caller. If the batch fails, each operation is run again alone, so
one bad operation (say, a subscription that already exists) fails only its own
caller. Operations must therefore have no effects outside the transaction.
A batch that collides with another broker's transaction (a deadlock on
PostgreSQL) is run again, a few times, before anyone is told.

Group commit shares the transaction; `Coalescer` also shares the statements.
Many callers' publishes, say, each a few rows, become one operation that
inserts all their rows with one statement per table, since a statement costs
far more to issue from Python than a row costs to write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from broker.engine.backoff import wait_jittered_exponential
from broker.storage.interface import Storage, StorageConflictError, StorageTx

T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")
#: An operation: runs inside a write transaction, given the time in microseconds.
Operation = Callable[[StorageTx, int], T]

_log = logging.getLogger(__name__)
_STOP = object()
#: Runs of a batch that keeps colliding with other transactions, before it fails.
CONFLICT_ATTEMPTS = 5
#: The commit delay applies after a transaction that served at least this many callers
#: (PostgreSQL's commit_siblings): a lone caller at a steady low rate is never held up.
COMMIT_SIBLINGS = 2
#: ... and only when the next transaction is wanted this soon after the last one ended.
BUSY_WINDOW_S = 0.002


class Committer:
    """Runs operations in batched write transactions on worker threads."""

    def __init__(
        self,
        storage: Storage,
        clock: Callable[[], int],
        *,
        workers: int = 1,
        batch_max: int = 256,
        delay_s: float = 0.0,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._batch_max = batch_max
        self._delay_s = delay_s
        #: Callers served by the transaction being run (operations, and the callers
        #: a Coalescer joined into one of them).
        self._callers = threading.local()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"committer-{i}", daemon=True)
            for i in range(workers)
        ]
        self.transactions = 0
        self.operations = 0

    def start(self) -> None:
        """Start the worker threads."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Finish what is queued, then stop the worker threads."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()

    def joined(self, extra_callers: int) -> None:
        """An operation of the running transaction serves this many callers more (a join)."""
        self._callers.count = getattr(self._callers, "count", 0) + extra_callers

    def submit(self, operation: Operation[T]) -> concurrent.futures.Future[T]:
        """Queue an operation from any thread; the future resolves after its commit."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((operation, future))
        return future

    def schedule(self, operation: Operation[T]) -> asyncio.Future[T]:
        """Queue an operation from the event loop; the future resolves after its commit.

        Every future of one batch that belongs to one loop is resolved by a
        single call into that loop: one thread hand-off per transaction, not
        one per caller.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((operation, future))
        return future

    async def run(self, operation: Operation[T]) -> T:
        """Run an operation in the next group commit and return its result."""
        return await self.schedule(operation)

    def _work(self) -> None:
        busy_until = 0.0
        callers = 0
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            if self._delay_s and callers >= COMMIT_SIBLINGS and time.monotonic() < busy_until:
                # Under load: wait a moment so that callers arriving meanwhile join this
                # transaction and its flush, instead of each paying for one of their own.
                time.sleep(self._delay_s)
            batch = [first]
            stop_seen = False
            while len(batch) < self._batch_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop_seen = True
                    break
                batch.append(item)
            self._callers.count = 0
            self._commit(batch)
            callers = len(batch) + self._callers.count
            busy_until = time.monotonic() + BUSY_WINDOW_S
            if stop_seen:
                return

    def _commit(self, batch: list[tuple[Operation[Any], AnyFuture]]) -> None:
        now = self._clock()
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(StorageConflictError),
                stop=stop_after_attempt(CONFLICT_ATTEMPTS),
                wait=wait_jittered_exponential(multiplier=0.002, max=0.05),
                reraise=True,
            ):
                with attempt, self._storage.write(keep=True) as tx:
                    results = [operation(tx, now) for operation, _ in batch]
        except BaseException as error:  # answered to the caller, never lost
            if len(batch) == 1:
                _answer([(batch[0][1], None, error)])
            else:
                for item in batch:
                    self._commit([item])
            return
        self.transactions += 1
        self.operations += len(batch)
        _answer(
            [(future, result, None) for (_, future), result in zip(batch, results, strict=True)]
        )


#: A caller's future: from `submit` (any thread) or `schedule` (an event loop).
AnyFuture = concurrent.futures.Future[Any] | asyncio.Future[Any]
Answer = tuple[AnyFuture, Any, BaseException | None]


def _answer(answers: list[Answer]) -> None:
    """Resolve futures: thread futures here, each loop's futures in one call into it."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Answer]] = {}
    for answer in answers:
        future = answer[0]
        if isinstance(future, asyncio.Future):
            by_loop.setdefault(future.get_loop(), []).append(answer)
        else:
            _resolve([answer])
    for loop, mine in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, mine)


def _resolve(answers: list[Answer]) -> None:
    for future, result, error in answers:
        if future.done():  # cancelled by its caller
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


@dataclass(eq=False)
class _Joined(Generic[Item, Result]):
    """Items joined into one operation; open until the operation starts."""

    items: list[Item] = field(default_factory=list)
    size: int = 0
    future: asyncio.Future[list[Result]] | None = None


class Coalescer(Generic[Item, Result]):
    """Joins the items of many callers into one operation of the next group commit.

    `run_many(tx, now, items)` returns one result per item, in order. Items join
    the pending operation until it starts running (or holds `max_size`), so the
    busier the committer, the more each operation carries. If the joined
    operation fails, each caller's item runs again alone, so that one bad item
    fails only its own caller.
    """

    def __init__(
        self,
        committer: Committer,
        run_many: Callable[[StorageTx, int, list[Item]], list[Result]],
        *,
        max_size: int,
        size_of: Callable[[Item], int] = lambda _: 1,
    ) -> None:
        self._committer = committer
        self._run_many = run_many
        self._max_size = max_size
        self._size_of = size_of
        self._lock = threading.Lock()
        self._open: _Joined[Item, Result] | None = None
        self.operations = 0
        """Joined operations run (for tests and stats)."""

    async def run(self, item: Item) -> Result:
        """Run `item` in the next joined operation and return its result."""
        size = self._size_of(item)
        with self._lock:
            joined = self._open
            if joined is None or joined.size + size > self._max_size:
                joined = _Joined()
                self._open = joined
                joined.future = self._committer.schedule(partial(self._run_joined, joined))
            index = len(joined.items)
            joined.items.append(item)
            joined.size += size
            future = joined.future
        assert future is not None
        try:
            results = await asyncio.shield(future)
        except Exception:
            if len(joined.items) == 1:
                raise
            return (await self._committer.run(partial(self._run_alone, item)))[0]
        return results[index]

    def _run_joined(self, joined: _Joined[Item, Result], tx: StorageTx, now: int) -> list[Result]:
        with self._lock:
            if self._open is joined:
                self._open = None  # closed: later items join the next operation
        self.operations += 1
        self._committer.joined(len(joined.items) - 1)
        return self._run_many(tx, now, joined.items)

    def _run_alone(self, item: Item, tx: StorageTx, now: int) -> list[Result]:
        return self._run_many(tx, now, [item])
