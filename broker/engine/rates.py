"""Per-second counters over the last minute, for the rates `GetStats` reports."""

from __future__ import annotations

import time
from collections import deque

WINDOW_S = 60


class RateMeter:
    """Counts events in one-second buckets and reports the rate over the window."""

    def __init__(self) -> None:
        self._buckets: deque[list[int]] = deque()

    def add(self, count: int = 1, now_s: int | None = None) -> None:
        """Count `count` events now."""
        second = int(time.monotonic()) if now_s is None else now_s
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
        self._trim(second)

    def rate(self, now_s: int | None = None) -> float:
        """Events per second over the last minute."""
        second = int(time.monotonic()) if now_s is None else now_s
        self._trim(second)
        return sum(count for _, count in self._buckets) / WINDOW_S

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - WINDOW_S:
            self._buckets.popleft()
