from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from broker.engine.committer import Coalescer, Committer


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
