from __future__ import annotations

from broker.domain import StoredEvent
from broker.engine.recent import ENTRY_OVERHEAD_BYTES, RecentEvents


def event(event_id: str, size: int) -> StoredEvent:
    return StoredEvent(
        event_id=event_id,
        name="user.joined",
        payload=b"x" * size,
        content_type="application/json",
        headers={},
        dedup_id=None,
        priority=0,
        ordering_key=None,
        published_at_us=1,
        deliver_at_us=1,
        delay_us=0,
    )


def test_recent_events_are_found_and_the_oldest_go_past_the_byte_bound() -> None:
    recent = RecentEvents(max_bytes=250 + 2 * ENTRY_OVERHEAD_BYTES)
    recent.put_many([event("a", 100), event("b", 100)])
    assert set(recent.get_many({"a", "b", "c"})) == {"a", "b"}
    recent.put_many([event("c", 100)])  # three entries are over the bound: "a" goes
    assert set(recent.get_many({"a", "b", "c"})) == {"b", "c"}
    assert len(recent) == 2
    assert (recent.hits, recent.misses) == (4, 2)
