from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from broker.engine.committer import Coalescer, Committer, LoopCommitter


class FakeStorage:
    """Counts transactions; a transaction whose operations raise is rolled back."""

    dialect = "fake"
    max_concurrent_writers = 1

    def __init__(self) -> None:
        self.commits: list[list[Any]] = []
        self.gate = threading.Event()

    @contextmanager
    def write(self, *, keep: bool = False) -> Iterator[list[Any]]:
        self.gate.wait(5)
        tx: list[Any] = []
        yield tx
        self.commits.append(tx)


def test_operations_queued_together_share_one_commit() -> None:
    storage = FakeStorage()
    committer = Committer(storage, lambda: 42)  # type: ignore[arg-type]
    committer.start()

    async def run() -> list[int]:
        futures = [
            committer.run(lambda tx, now, i=i: (tx.append(i), now + i)[1])  # type: ignore[misc]
            for i in range(10)
        ]
        tasks = [asyncio.ensure_future(f) for f in futures]
        await asyncio.sleep(0)
        storage.gate.set()
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(run()) == [42 + i for i in range(10)]
    committer.stop()
    assert sum(len(c) for c in storage.commits) == 10
    assert len(storage.commits) < 10
    assert committer.operations == 10


def test_a_failing_operation_fails_alone() -> None:
    storage = FakeStorage()
    storage.gate.set()
    committer = Committer(storage, lambda: 0)  # type: ignore[arg-type]
    committer.start()

    def boom(tx: Any, now: int) -> int:
        raise ValueError("bad")

    futures = [committer.submit(lambda tx, now: 1), committer.submit(boom)]
    futures.append(committer.submit(lambda tx, now: 3))
    assert futures[0].result(5) == 1
    assert futures[2].result(5) == 3
    with pytest.raises(ValueError, match="bad"):
        futures[1].result(5)
    committer.stop()


def test_coalescer_joins_items_waiting_for_the_committer_into_one_operation() -> None:
    storage = FakeStorage()  # the gate holds the first transaction back
    committer = Committer(storage, lambda: 7)  # type: ignore[arg-type]
    committer.start()
    calls: list[list[int]] = []

    def run_many(tx: Any, now: int, items: list[int]) -> list[int]:
        calls.append(list(items))
        return [item * 10 + now for item in items]

    coalescer: Coalescer[int, int] = Coalescer(committer, run_many, max_size=3)

    async def main() -> list[int]:
        tasks = [asyncio.ensure_future(coalescer.run(i)) for i in range(7)]
        await asyncio.sleep(0)  # every item is queued before the committer may run
        storage.gate.set()
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(main()) == [i * 10 + 7 for i in range(7)]
    committer.stop()
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert coalescer.operations == 3


def test_coalescer_runs_each_item_alone_when_the_joined_operation_fails() -> None:
    storage = FakeStorage()
    committer = Committer(storage, lambda: 0)  # type: ignore[arg-type]
    committer.start()

    def run_many(tx: Any, now: int, items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return [-item for item in items]

    coalescer: Coalescer[int, int] = Coalescer(committer, run_many, max_size=100)

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(coalescer.run(i)) for i in (1, 13, 2)]
        await asyncio.sleep(0)
        storage.gate.set()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    first, unlucky, second = asyncio.run(main())
    committer.stop()
    assert (first, second) == (-1, -2)
    assert isinstance(unlucky, ValueError)


# -- on the event loop ------------------------------------------------------------


def _open_storage() -> FakeStorage:
    storage = FakeStorage()
    storage.gate.set()  # a transaction on the loop must not wait for the test
    return storage


def test_on_the_loop_operations_scheduled_together_share_one_commit() -> None:
    storage = _open_storage()
    committer = LoopCommitter(storage, lambda: 42)  # type: ignore[arg-type]

    async def main() -> list[int]:
        futures = [
            committer.schedule(lambda tx, now, i=i: (tx.append(i), now + i)[1])  # type: ignore[misc]
            for i in range(10)
        ]
        return list(await asyncio.gather(*futures))

    assert asyncio.run(main()) == [42 + i for i in range(10)]
    assert storage.commits == [list(range(10))]
    assert (committer.transactions, committer.operations) == (1, 10)


def test_on_the_loop_a_failing_operation_fails_alone() -> None:
    storage = _open_storage()
    committer = LoopCommitter(storage, lambda: 0)  # type: ignore[arg-type]

    def boom(tx: Any, now: int) -> int:
        raise ValueError("bad")

    async def main() -> list[Any]:
        futures = [committer.schedule(lambda tx, now: 1), committer.schedule(boom)]
        futures.append(committer.schedule(lambda tx, now: 3))
        return list(await asyncio.gather(*futures, return_exceptions=True))

    first, bad, third = asyncio.run(main())
    assert (first, third) == (1, 3)
    assert isinstance(bad, ValueError)
    assert committer.transactions == 2  # the batch failed; the good two ran alone


def test_on_the_loop_a_busy_committer_waits_while_waiting_brings_callers() -> None:
    storage = _open_storage()
    # Always busy; a wait long enough for the test to look at what is done meanwhile.
    committer = LoopCommitter(
        storage,  # type: ignore[arg-type]
        lambda: 0,
        delay_s=0.2,
        busy_window_s=3600,
    )

    def op(name: str) -> Callable[[Any, int], str]:
        return lambda tx, now: (tx.append(name), name)[1]

    async def held(name: str) -> bool:
        """Schedule an operation; whether its transaction waits (is not run at once)."""
        future = committer.schedule(op(name))
        await asyncio.sleep(0)  # a transaction that does not wait has run by now
        waits = not future.done()
        assert await future == name
        return waits

    async def main() -> None:
        # No caller arrived lately: nobody waits.
        assert not await held("first")

        # Many callers at once: callers arrive fast, so the next transaction waits,
        # and what comes meanwhile joins it.
        await asyncio.gather(*(committer.schedule(op(f"{i}")) for i in range(10)))
        waiting = committer.schedule(op("c"))
        await asyncio.sleep(0)
        assert not waiting.done()
        assert list(await asyncio.gather(waiting, committer.schedule(op("d")))) == ["c", "d"]

        # A wait that brought nobody: the next transaction does not wait.
        assert await held("alone")
        assert not await held("next")

        # Several callers found without waiting: waiting pays again.
        await asyncio.gather(committer.schedule(op("p")), committer.schedule(op("q")))
        assert await held("z")

    asyncio.run(main())
    assert storage.commits == [
        ["first"],
        [f"{i}" for i in range(10)],
        ["c", "d"],
        ["alone"],
        ["next"],
        ["p", "q"],
        ["z"],
    ]


def test_on_the_loop_stop_commits_what_is_queued() -> None:
    storage = _open_storage()
    committer = LoopCommitter(storage, lambda: 5)  # type: ignore[arg-type]

    async def main() -> asyncio.Future[int]:
        future = committer.schedule(lambda tx, now: now)
        committer.stop()
        return future

    future = asyncio.run(main())
    assert future.result() == 5
    assert committer.transactions == 1
