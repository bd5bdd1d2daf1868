"""Events this broker published recently, kept in memory for their first delivery.

Most deliveries go out moments after their event was published, often by the
broker that stored it. Reading the event back from the database for each
lease (a query and a row of up to 256 KiB decoded per event) cost about a
third of leasing. The committer puts each event it stores and that is ready at
once here; a lease takes what it finds and reads only the rest. The cache is
bounded by bytes and forgets the oldest first; it is only an optimisation, so
missing entries are always fine.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable

from broker.domain import StoredEvent

#: Bytes kept at most, payloads plus `ENTRY_OVERHEAD_BYTES` each (about 5,000 events
#: of 1 KiB: seconds of traffic, which is what first deliveries need).
RECENT_EVENTS_MAX_BYTES = 8 * 1024 * 1024
#: What one remembered event costs besides its payload (objects, strings, dict slot).
ENTRY_OVERHEAD_BYTES = 600


class RecentEvents:
    """A thread-safe LRU of stored events, bounded by bytes."""

    def __init__(self, max_bytes: int = RECENT_EVENTS_MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._events: OrderedDict[str, StoredEvent] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._events)

    def put_many(self, events: Iterable[StoredEvent]) -> None:
        """Remember events (the oldest are forgotten past the byte bound)."""
        with self._lock:
            for event in events:
                if event.event_id in self._events:
                    continue
                self._events[event.event_id] = event
                self._bytes += len(event.payload) + ENTRY_OVERHEAD_BYTES
            while self._bytes > self._max_bytes and self._events:
                _, old = self._events.popitem(last=False)
                self._bytes -= len(old.payload) + ENTRY_OVERHEAD_BYTES

    def get_many(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        """The events of these ids that are remembered."""
        found: dict[str, StoredEvent] = {}
        with self._lock:
            for event_id in event_ids:
                event = self._events.get(event_id)
                if event is not None:
                    found[event_id] = event
            self.hits += len(found)
            self.misses += len(event_ids) - len(found)
        return found
