"""The queue checker every fault test uses, after Jepsen's.

Each publish carries a unique id and ends ok, failed or unknown (the call
broke off: it may or may not have been stored). Every delivery is logged. After
a full drain the history passes only with no acknowledged publish lost and no
delivery of something never sent; duplicates are counted, not failed
(at-least-once).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckResult:
    """What the history shows."""

    ok: int
    failed: int
    unknown: int
    delivered: int
    lost: frozenset[str]
    unexpected: frozenset[str]
    duplicates: int
    recovered_unknown: int

    @property
    def valid(self) -> bool:
        """No acknowledged publish lost, nothing delivered that was never sent."""
        return not self.lost and not self.unexpected

    def __str__(self) -> str:
        return (
            f"ok={self.ok} failed={self.failed} unknown={self.unknown} "
            f"delivered={self.delivered} lost={len(self.lost)} "
            f"unexpected={len(self.unexpected)} duplicates={self.duplicates} "
            f"unknown-but-delivered={self.recovered_unknown}"
        )


@dataclass
class QueueChecker:
    """Records publishes and deliveries from any thread."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _outcomes: dict[str, str] = field(default_factory=dict)
    _delivered: Counter[str] = field(default_factory=Counter)

    def attempt(self, publish_id: str) -> None:
        """A publish is about to be sent."""
        with self._lock:
            self._outcomes[publish_id] = "unknown"

    def ok(self, publish_id: str) -> None:
        """The broker acknowledged the publish."""
        with self._lock:
            self._outcomes[publish_id] = "ok"

    def failed(self, publish_id: str) -> None:
        """The broker said the publish was not stored."""
        with self._lock:
            self._outcomes[publish_id] = "failed"

    def delivered(self, publish_id: str) -> None:
        """A consumer received a delivery of this publish."""
        with self._lock:
            self._delivered[publish_id] += 1

    @property
    def acknowledged(self) -> int:
        """Publishes acknowledged so far."""
        with self._lock:
            return sum(1 for o in self._outcomes.values() if o == "ok")

    def expected_at_least(self) -> frozenset[str]:
        """Ids that must be delivered (acknowledged)."""
        with self._lock:
            return frozenset(i for i, o in self._outcomes.items() if o == "ok")

    def seen(self) -> frozenset[str]:
        """Ids delivered so far."""
        with self._lock:
            return frozenset(self._delivered)

    def check(self) -> CheckResult:
        """Judge the history."""
        with self._lock:
            outcomes = dict(self._outcomes)
            delivered = Counter(self._delivered)
        by_kind = Counter(outcomes.values())
        sent = set(outcomes)
        return CheckResult(
            ok=by_kind["ok"],
            failed=by_kind["failed"],
            unknown=by_kind["unknown"],
            delivered=sum(delivered.values()),
            lost=frozenset(i for i, o in outcomes.items() if o == "ok" and i not in delivered),
            unexpected=frozenset(i for i in delivered if i not in sent),
            duplicates=sum(n - 1 for n in delivered.values() if n > 1),
            recovered_unknown=sum(
                1 for i, o in outcomes.items() if o == "unknown" and i in delivered
            ),
        )
