"""The broker's own randomness for retries: the jitter of backoffs and of tenacity's waits.

Drawn from a generator of the broker's, never the shared `random`: an
embedding program (or a property-based test generating its examples) may
have seeded that one, and must not see its sequence move.
"""

from __future__ import annotations

import random

from tenacity import RetryCallState
from tenacity.wait import wait_exponential

from broker.delivery import failure

_jitter = random.Random()
#: The `Draw` the delivery decisions take: an integer in [low, high].
draw: failure.Draw = _jitter.randint


def retry_delay_us(attempt: int, min_us: int, max_us: int) -> int:
    """`failure.retry_delay_us` with the broker's jitter."""
    return failure.retry_delay_us(attempt, min_us, max_us, draw)


class wait_jittered_exponential(wait_exponential):
    """tenacity's `wait_random_exponential` ("full jitter"), drawing from our own generator."""

    def __call__(self, retry_state: RetryCallState) -> float:
        """A delay drawn between 0 and the exponential value."""
        return _jitter.uniform(0, super().__call__(retry_state))
