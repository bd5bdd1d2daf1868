"""The soak, bounded for CI: the broker's memory and file descriptors stay flat.

`BROKER_SOAK_S` sets its length (default 60 s); `python -m tests.soak.soak
--seconds 3600` runs a long one by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

from broker.engine.recent import RECENT_EVENTS_MAX_BYTES
from tests.soak.soak import soak

SOAK_S = float(os.environ.get("BROKER_SOAK_S", "60"))
WARM_UP_S = 15.0


def test_rss_and_fds_stay_flat_under_steady_load(tmp_path: Path) -> None:
    samples = soak(f"sqlite:///{tmp_path / 'soak.db'}", SOAK_S, 300, tmp_path / "broker.log")
    warm = next(s for s in samples if s.at_s >= WARM_UP_S)
    last = samples[-1]
    print(
        f"soak {last.at_s:.0f} s: RSS {warm.rss_mib:.1f} -> {last.rss_mib:.1f} MiB, "
        f"fds {warm.fds} -> {last.fds}, {last.published} published, {last.acked} acked"
    )
    assert last.published >= 300 * (SOAK_S - 5) * 0.8, "the load did not run at its rate"
    assert last.acked >= last.published * 0.9, "the consumer fell behind"
    assert last.fds <= warm.fds + 5, "file descriptors grow"
    # The cache of recent events fills up to its bound in the first minutes; beyond
    # that (and SQLite's page cache) memory must not grow.
    bound_mib = RECENT_EVENTS_MAX_BYTES / 2**20 + 16
    assert last.rss_mib <= warm.rss_mib * 1.1 + bound_mib, "memory grows"
