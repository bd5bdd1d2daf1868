"""Event ids are ULIDs to the letter, sortable by publish time, unique within it."""

from __future__ import annotations

from ulid import ULID

from broker.ids import new_event_id

NOW_US = 1_764_480_000_123_456


def test_an_event_id_is_the_ulid_of_its_millisecond() -> None:
    for now_us in (0, 999, NOW_US, (2**48 - 1) * 1000):
        event_id = new_event_id(now_us)
        parsed = ULID.from_str(event_id)
        assert str(parsed) == event_id
        assert len(event_id) == 26
        assert parsed.milliseconds == now_us // 1000


def test_ids_sort_by_millisecond_and_are_unique_within_one() -> None:
    earlier = [new_event_id(NOW_US) for _ in range(5_000)]
    later = [new_event_id(NOW_US + 1_000) for _ in range(100)]
    assert len(set(earlier)) == len(earlier)
    assert max(earlier) < min(later)
    randomness = {ULID.from_str(i).bytes[6:] for i in earlier}
    assert len(randomness) == len(earlier)


def test_the_time_part_follows_the_clock_back_and_forth() -> None:
    first = new_event_id(NOW_US)
    other = new_event_id(NOW_US - 5_000)
    again = new_event_id(NOW_US)
    assert ULID.from_str(other).milliseconds == (NOW_US - 5_000) // 1000
    assert first[:10] == again[:10] != other[:10]
