"""Ephemeral tails: new events matching a filter, as they are published, with nothing stored."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from broker.domain import EventDraft, StoredEvent
from broker.names import matches

TAIL_QUEUE_MAX = 10_000


@dataclass(eq=False)
class TailStream:
    """An ephemeral tail: new events matching a filter, no acks, nothing stored."""

    filters: tuple[str, ...]
    outbox: asyncio.Queue[StoredEvent] = field(
        default_factory=lambda: asyncio.Queue(maxsize=TAIL_QUEUE_MAX)
    )
    dropped: int = 0


class Tails:
    """The tails open on this broker process."""

    def __init__(self) -> None:
        self._tails: list[TailStream] = []

    def __bool__(self) -> bool:
        return bool(self._tails)

    def open(self, filters: tuple[str, ...]) -> TailStream:
        """Start a tail."""
        stream = TailStream(filters)
        self._tails.append(stream)
        return stream

    def close(self, stream: TailStream) -> None:
        """End a tail."""
        if stream in self._tails:
            self._tails.remove(stream)

    def feed(self, drafts: Sequence[EventDraft], now_us: int) -> None:
        """Events just stored: each goes to the tails it matches (dropped when a tail is full)."""
        for draft in drafts:
            event: StoredEvent | None = None
            for tail in self._tails:
                if matches(tail.filters, draft.name):
                    event = event or draft.stored_at(now_us)
                    try:
                        tail.outbox.put_nowait(event)
                    except asyncio.QueueFull:
                        tail.dropped += 1
