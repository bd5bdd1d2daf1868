"""Event ids: ULIDs (48 bits of milliseconds, 80 random bits, Crockford base32).

Every published event gets one, so making it is on the hot path of publishing.
python-ulid's `ULID.from_timestamp` costs about 4 µs per id (objects, bytes and
a generic base32 encoder); this makes the same 26 characters in about 1.7 µs:
the time part is encoded once per millisecond, the random part ten bits at a
time from a table of all two-character pairs. The ids are ULIDs to the letter
(the tests parse them back with the library): sortable by publish time to the
millisecond, random within it.
"""

from __future__ import annotations

import os

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Every 10-bit value as its two Crockford base32 characters.
_PAIRS = [first + second for first in _ALPHABET for second in _ALPHABET]
_RANDOM_SHIFTS = (70, 60, 50, 40, 30, 20, 10, 0)
_TIME_SHIFTS = (40, 30, 20, 10, 0)


class _TimePart:
    """The encoded time part of the last millisecond asked for (replaced whole, never edited)."""

    last: tuple[int, str] = (-1, "")


def new_event_id(now_us: int) -> str:
    """A new ULID for an event published at `now_us` (microseconds since the epoch)."""
    ms = now_us // 1000
    last = _TimePart.last
    if last[0] != ms:
        last = (ms, "".join([_PAIRS[(ms >> shift) & 1023] for shift in _TIME_SHIFTS]))
        _TimePart.last = last  # one assignment: other threads see the old pair or the new
    randomness = int.from_bytes(os.urandom(10), "big")
    return last[1] + "".join([_PAIRS[(randomness >> shift) & 1023] for shift in _RANDOM_SHIFTS])
