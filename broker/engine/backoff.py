"""The retry delay of a failed delivery: exponential, capped, with jitter.

The jitter spreads retries of deliveries that failed together (a downstream
outage) so they do not come back at the same instant.
"""

from __future__ import annotations

import random

from tenacity import RetryCallState
from tenacity.wait import wait_exponential

from broker.domain import Subscription

#: Our own generator, so that the shared `random` of an embedding program is left alone.
_jitter = random.Random()


def retry_delay_us(attempt: int, min_us: int, max_us: int) -> int:
    """Delay before attempt `attempt + 1`: min·2^(attempt-1), capped at max, jittered.

    The result lies between half the exponential value (but never below
    `min_us`) and the value itself ("equal jitter").
    """
    exponent = max(attempt - 1, 0)
    ceiling = max_us if exponent >= 62 else min(max_us, min_us * (1 << exponent))
    floor = min(ceiling, max(min_us, ceiling // 2))
    return _jitter.randint(floor, ceiling) if ceiling > floor else ceiling


def subscription_retry_delay_us(subscription: Subscription, attempt: int) -> int:
    """The subscription's delay after a failed attempt: its table if it has one, else backoff."""
    table = subscription.retry_delays_us
    if table:
        return table[min(attempt, len(table)) - 1]
    return retry_delay_us(attempt, subscription.min_backoff_us, subscription.max_backoff_us)


class wait_jittered_exponential(wait_exponential):
    """tenacity's `wait_random_exponential` ("full jitter"), drawing from our own generator.

    tenacity's own draws from the shared `random`, which an embedding program
    (or a property-based test generating its examples) may have seeded.
    """

    def __call__(self, retry_state: RetryCallState) -> float:
        """A delay drawn between 0 and the exponential value."""
        return _jitter.uniform(0, super().__call__(retry_state))
