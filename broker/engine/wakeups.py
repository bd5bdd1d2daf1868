"""Wake-ups between broker processes that share one database.

A broker wakes its own dispatchers when a publish, a settle or a timer makes
deliveries ready. With several brokers on one PostgreSQL database, the
consumers that can take those deliveries may be attached to another broker:
`Wakeups` tells the others, in one message per send (never one per event),
which subscriptions may deliver more, the earliest time a scheduled delivery
comes due (so the broker with the consumer wakes on time), and which
subscriptions were deleted. Sends are coalesced: while one is on its way,
everything noted meanwhile waits for the next. Polling in each dispatcher stays
as the fallback for a message lost while a listener reconnects.

Messages are `origin|kind|ids|due`: `w` (wake) with comma-separated
subscription ids or `*` for all, and the earliest due time in microseconds or
empty; `d` (deleted) with the ids; `h` (here), a heartbeat. A broker ignores
its own messages. A message with an empty origin comes from no broker but from
the database itself: `eventbroker.publish(...)` (`broker.storage.sql_publish`)
sends `|w|*|due` as its caller's transaction commits. It wakes every broker,
one alone too (each listens whether or not it has heard others), and makes
nobody a peer.

A broker alone on its database has nobody to tell, and a `NOTIFY` costs a
round trip and a commit: so every broker says `h` once it listens and every
`HEARTBEAT_S`, answers a broker it had not heard with an `h` of its own at
once, and sends wake-ups only while it has heard another broker within
`PEER_TTL_S`. A newcomer is known to the others within a round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from tenacity import Retrying, retry_if_exception_type

from broker.engine.backoff import wait_jittered_exponential
from broker.storage.interface import Notifier, StorageUnavailableError

_log = logging.getLogger(__name__)

#: More subscription ids than this in one message are sent as "all".
MAX_IDS_PER_MESSAGE = 500
#: Reconnecting a lost listener backs off up to this long.
RECONNECT_MAX_S = 5.0
#: Every broker says it is here this often ...
HEARTBEAT_S = 1.0
#: ... and is taken for gone when not heard for this long.
PEER_TTL_S = 3.5

#: What a broker does on a message: wake these subscriptions (None: all) and
#: schedule a timer for the due time (None: no new timer).
WakeFn = Callable[[frozenset[int] | None, int | None], None]
DeletedFn = Callable[[frozenset[int]], None]


class Wakeups:
    """Sends this broker's wake-ups to the others and hands theirs to the engine."""

    def __init__(self, notifier: Notifier, on_wake: WakeFn, on_deleted: DeletedFn) -> None:
        self._notifier = notifier
        self._on_wake = on_wake
        self._on_deleted = on_deleted
        self.origin = uuid.uuid4().hex[:12]
        self._ready: set[int] = set()
        self._due_us: int | None = None
        self._deleted: set[int] = set()
        self._here = False
        #: When each other broker was last heard (monotonic seconds), by origin.
        self._peers: dict[str, float] = {}
        self._pending = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self._sender: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._sending: asyncio.Future[None] | None = None
        self._listener = threading.Thread(target=self._listen, name="wakeup-listener", daemon=True)
        self.sent = 0
        """Messages sent (for tests and stats)."""

    def start(self) -> None:
        """Start sending and listening."""
        self._sender = self._loop.create_task(self._send_loop(), name="wakeup-sender")
        self._heartbeat = self._loop.create_task(self._heartbeat_loop(), name="wakeup-heartbeat")
        self._listener.start()

    async def stop(self) -> None:
        """Stop listening and sending; what was not sent yet is dropped (polling covers it)."""
        self._stop.set()
        for task in (self._sender, self._heartbeat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._sending is not None:
            await asyncio.wait([self._sending])
            if not self._sending.cancelled():
                self._sending.exception()  # retrieved: it was logged, or not worth it now
        await asyncio.to_thread(self._listener.join)

    def ready(self, subscription_ids: Iterable[int], due_us: int | None = None) -> None:
        """Note that these subscriptions may deliver more, and a delivery comes due then."""
        self._ready.update(subscription_ids)
        if due_us is not None and (self._due_us is None or due_us < self._due_us):
            self._due_us = due_us
        if self._ready or self._due_us is not None:
            self._pending.set()

    def deleted(self, subscription_id: int) -> None:
        """Note that a subscription was deleted: the others end its streams."""
        self._deleted.add(subscription_id)
        self._pending.set()

    @property
    def peers(self) -> int:
        """How many other brokers were heard lately."""
        now = time.monotonic()
        return sum(1 for heard in self._peers.values() if now - heard < PEER_TTL_S)

    def _say_here(self) -> None:
        self._here = True
        self._pending.set()

    def _heard(self, origin: str) -> None:
        """Another broker spoke; answer one not heard lately, so it learns of this one."""
        now = time.monotonic()
        last = self._peers.get(origin)
        self._peers[origin] = now
        if last is None or now - last >= PEER_TTL_S:
            self._say_here()

    # -- sending ---------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            now = time.monotonic()
            for origin in [o for o, heard in self._peers.items() if now - heard >= PEER_TTL_S]:
                del self._peers[origin]
            self._say_here()

    async def _send_loop(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            messages = self._take()
            try:
                for message in messages:
                    # Shielded and kept: a send under way when stopping is waited for,
                    # so its pooled connection is back before the storage closes.
                    self._sending = asyncio.ensure_future(
                        asyncio.to_thread(self._notifier.notify, message)
                    )
                    await asyncio.shield(self._sending)
                    self.sent += 1
            except StorageUnavailableError as error:
                _log.warning("could not tell the other brokers what is ready: %s", error)

    def _take(self) -> list[str]:
        messages = []
        if self._here:
            messages.append(f"{self.origin}|h||")
            self._here = False
        if not self.peers:  # nobody to tell
            self._ready, self._due_us, self._deleted = set(), None, set()
            return messages
        if self._ready or self._due_us is not None:
            if len(self._ready) > MAX_IDS_PER_MESSAGE:
                ids = "*"
            else:
                ids = ",".join(str(i) for i in sorted(self._ready))
            due = "" if self._due_us is None else str(self._due_us)
            messages.append(f"{self.origin}|w|{ids}|{due}")
        if self._deleted:
            ids = ",".join(str(i) for i in sorted(self._deleted))
            messages.append(f"{self.origin}|d|{ids}|")
        self._ready, self._due_us, self._deleted = set(), None, set()
        return messages

    # -- listening ---------------------------------------------------------------

    def _listen(self) -> None:
        """Listen until stopped, reconnecting with backoff; after a gap, wake everything."""
        first = True

        def on_listening() -> None:
            nonlocal first
            self._call(self._say_here)
            if not first:
                _log.info("listening for other brokers again")
                self._call(self._on_wake, None, None)  # messages may have been missed
            first = False

        def listen_once() -> None:
            self._notifier.listen(self._received, self._stop, on_listening)

        def log_retry(state: object) -> None:
            _log.warning("lost the connection that hears other brokers; reconnecting")

        def pause(seconds: float) -> None:
            self._stop.wait(seconds)

        with contextlib.suppress(StorageUnavailableError):
            for attempt in Retrying(
                retry=retry_if_exception_type(StorageUnavailableError),
                wait=wait_jittered_exponential(multiplier=0.1, max=RECONNECT_MAX_S),
                sleep=pause,
                before_sleep=log_retry,
            ):
                with attempt:
                    if self._stop.is_set():
                        return
                    listen_once()

    def _received(self, message: str) -> None:
        try:
            origin, kind, ids_text, due_text = message.split("|")
            if origin == self.origin:
                return
            if origin:  # not the database's own (empty) origin
                self._call(self._heard, origin)
            if ids_text == "*":
                ids: frozenset[int] | None = None
            else:
                ids = frozenset(int(i) for i in ids_text.split(",") if i)
            due = int(due_text) if due_text else None
        except ValueError:
            _log.warning("ignored a malformed wake-up message %r", message[:100])
            return
        if kind == "w":
            self._call(self._on_wake, ids, due)
        elif kind == "d" and ids:
            self._call(self._on_deleted, ids)

    def _call(self, function: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while stopping
            self._loop.call_soon_threadsafe(function, *args)
