"""The retry delay of a failed delivery: exponential, capped, with jitter.

The jitter spreads retries of deliveries that failed together (a downstream
outage) so they do not come back at the same instant.
"""

from __future__ import annotations

import random

from broker.domain import Subscription


def retry_delay_us(attempt: int, min_us: int, max_us: int) -> int:
    """Delay before attempt `attempt + 1`: min·2^(attempt-1), capped at max, jittered.

    The result lies between half the exponential value (but never below
    `min_us`) and the value itself ("equal jitter").
    """
    exponent = max(attempt - 1, 0)
    ceiling = max_us if exponent >= 62 else min(max_us, min_us * (1 << exponent))
    floor = min(ceiling, max(min_us, ceiling // 2))
    return random.randint(floor, ceiling) if ceiling > floor else ceiling


def subscription_retry_delay_us(subscription: Subscription, attempt: int) -> int:
    """The subscription's delay after a failed attempt: its table if it has one, else backoff."""
    table = subscription.retry_delays_us
    if table:
        return table[min(attempt, len(table)) - 1]
    return retry_delay_us(attempt, subscription.min_backoff_us, subscription.max_backoff_us)
