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
