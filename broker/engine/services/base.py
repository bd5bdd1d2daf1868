"""The loop every background service runs: one step at a time, on a timer or when woken.

A step returns how long to wait before the next one (None: the service's
interval). A step that fails is logged and tried again an interval later: a
database that cannot be reached is a warning (it will come back), anything
else an error with its traceback. This is the one place that handling lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from broker.domain import SettleOutcome
from broker.storage.interface import StorageUnavailableError

_log = logging.getLogger(__name__)

#: The current time in microseconds since the epoch; tests pass their own.
Clock = Callable[[], int]


class Outcomes(Protocol):
    """Where services report what their steps changed (`Signals`: dispatchers, timer, brokers)."""

    def ready(self, subscription_ids: Collection[int], due_us: int | None = None) -> None:
        """These subscriptions may deliver more now; a delivery comes due at `due_us`."""
        ...

    def settled(self, ack_ids: Sequence[str], outcome: SettleOutcome) -> None:
        """These leases ended (expired or lost): their consumers' credit comes back."""
        ...


class Service:
    """A background loop with start, stop and wake; subclasses implement `step`."""

    #: Named in logs and task names.
    name = "service"

    def __init__(self, clock: Clock, interval_s: float) -> None:
        self.clock = clock
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.steps = 0
        """Steps run so far, failed ones included (for tests)."""

    async def step(self) -> float | None:
        """Do one round of work; return the seconds until the next (None: the interval)."""
        raise NotImplementedError

    def start(self) -> None:
        """Run the loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    def wake(self) -> None:
        """Run the next step now instead of at the end of the wait."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop after the step in progress, if any."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        wait_s: float | None = self.interval_s
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, wait_s or 0.0))
            self._wake.clear()
            if self._stopping:
                return
            self.steps += 1
            try:
                wait_s = await self.step()
            except StorageUnavailableError as error:
                _log.warning("%s waits for the database: %s", self.name, error)
                wait_s = None
            except Exception:
                _log.exception("%s failed; retrying", self.name)
                wait_s = None
            if wait_s is None:
                wait_s = self.interval_s
