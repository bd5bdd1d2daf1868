"""Wake-ups between brokers: what a broker does when its listening connection breaks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from broker.engine.wakeups import Wakeups
from broker.storage.interface import StorageUnavailableError


class FlakyNotifier:
    """Listens, loses the connection, fails to reconnect once, then listens until stopped."""

    def __init__(self) -> None:
        self.calls = 0
        self.listening = 0
        self.settled = threading.Event()

    def notify(self, payload: str) -> None:
        """Sends nothing."""

    def listen(
        self,
        on_message: Callable[[str], None],
        stop: threading.Event,
        on_listening: Callable[[], None],
    ) -> None:
        """One call per connection attempt."""
        self.calls += 1
        if self.calls == 2:
            raise StorageUnavailableError("the database is not accepting connections")
        self.listening += 1
        on_listening()
        if self.calls == 1:
            raise StorageUnavailableError("terminating connection due to administrator command")
        self.settled.set()
        stop.wait()


def test_a_listener_that_reconnects_wakes_everything_once_it_listens_again() -> None:
    notifier = FlakyNotifier()
    wakes: list[tuple[frozenset[int] | None, int | None, int]] = []

    async def run() -> None:
        wakeups = Wakeups(
            notifier,
            lambda ids, due: wakes.append((ids, due, notifier.listening)),
            lambda ids: None,
        )
        wakeups.start()
        assert await asyncio.to_thread(notifier.settled.wait, 10)
        await wakeups.stop()
        await asyncio.sleep(0)  # run the wake-ups the listener thread handed to the loop

    asyncio.run(run())
    assert notifier.calls == 3
    # Not on the failed attempt, not before: messages sent until then were not heard.
    assert wakes == [(None, None, 2)]


class Bus:
    """NOTIFY and LISTEN in memory: every message reaches every listener (its sender too)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()

    def notify(self, payload: str) -> None:
        with self._lock:
            self.sent.append(payload)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(payload)

    def listen(
        self,
        on_message: Callable[[str], None],
        stop: threading.Event,
        on_listening: Callable[[], None],
    ) -> None:
        with self._lock:
            self._listeners.append(on_message)
        on_listening()
        stop.wait()


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def test_a_broker_alone_sends_no_wake_ups_and_one_that_has_company_does() -> None:
    bus = Bus()
    heard: list[frozenset[int] | None] = []

    async def run() -> None:
        alone = Wakeups(bus, lambda ids, due: None, lambda ids: None)
        alone.start()
        await _until(lambda: any(m.startswith(f"{alone.origin}|h") for m in bus.sent))
        alone.ready([7])
        await asyncio.sleep(0.05)
        assert not [m for m in bus.sent if "|w|" in m]  # nobody to tell: nothing sent
        other = Wakeups(bus, lambda ids, due: heard.append(ids), lambda ids: None)
        other.start()
        # The newcomer says it is here; the first answers at once: each knows the other.
        await _until(lambda: alone.peers == 1 and other.peers == 1)
        alone.ready([7])
        await _until(lambda: heard == [frozenset({7})])
        await other.stop()
        await alone.stop()

    asyncio.run(run())


def test_a_message_from_the_database_wakes_a_broker_alone_and_makes_no_peer() -> None:
    bus = Bus()
    heard: list[tuple[frozenset[int] | None, int | None]] = []

    async def run() -> None:
        alone = Wakeups(bus, lambda ids, due: heard.append((ids, due)), lambda ids: None)
        alone.start()
        await _until(lambda: any(m.startswith(f"{alone.origin}|h") for m in bus.sent))
        bus.notify("|w|*|")  # what eventbroker.publish(...) sends at commit
        bus.notify("|w|*|1234")
        await _until(lambda: len(heard) == 2)
        assert heard == [(None, None), (None, 1234)]
        assert alone.peers == 0  # so it still sends no wake-ups of its own
        await alone.stop()

    asyncio.run(run())
