"""What the fault tests on several brokers share: consumers that log every lease, and its checks.

Each consumer records every delivery in the queue checker and, per lease, how
long it held it (a `Hold`) and what became of its ack (an `AckRecord`). After
the drain, `overlapping_holds` finds an event held by two consumers at once and
`late_acks_applied` finds an ack the broker applied although it was sent after
the lease's deadline.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2

from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.checker import CheckResult, QueueChecker
from tests.e2e.streams import StreamReader

SUBSCRIPTION = "orders"
#: Deliveries each consumer may hold at once.
CREDIT = 50
#: How often a test looks at a condition it waits for.
POLL_S = 0.02
#: No delivery for this long after everything expected came: the drain is over.
QUIET_S = 1.0
CALL_TIMEOUT_S = 5.0


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Look at a condition until it holds or the time is up; True if it held."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


@dataclass(frozen=True)
class Hold:
    """One delivery as a consumer held it, in wall-clock seconds.

    `until` is when the lease ended at the latest: when the ack returned, or the
    lease's deadline if that came first, the ack was not applied or there was
    no ack. No other consumer may receive the same event before then.
    """

    publish_id: str
    consumer: int
    attempt: int
    received: float
    until: float


@dataclass(frozen=True)
class AckRecord:
    """One ack of one lease that the broker answered, in wall-clock seconds.

    The broker applied it (or refused it) somewhere between `sent` and
    `returned`; an ack applied although `sent` is after `deadline` is one the
    broker should have refused.
    """

    publish_id: str
    consumer: int
    attempt: int
    deadline: float
    sent: float
    returned: float
    applied: bool
    #: The broker's id of the event, to look up its delivery history.
    event_id: str


def deadline_s(delivery: pb.Delivery) -> float:
    """The lease's deadline, in wall-clock seconds."""
    return float(delivery.ack_deadline.ToMicroseconds()) / 1_000_000


class DeliveryLog:
    """Every delivery any consumer received: in the checker, as holds and as acks."""

    def __init__(self, checker: QueueChecker) -> None:
        self.checker = checker
        self._lock = threading.Lock()
        self._holds: list[Hold] = []
        self._acks: list[AckRecord] = []
        self._receipts: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
        self._redelivered: Counter[int] = Counter()
        self._last_received = time.monotonic()

    def received(self, consumer: int, deliveries: list[pb.Delivery]) -> None:
        """Deliveries arrived at a consumer (their leases are not over yet)."""
        if not deliveries:
            return
        for delivery in deliveries:
            self.checker.delivered(delivery.dedup_id)
        with self._lock:
            for delivery in deliveries:
                self._receipts[delivery.dedup_id].append((consumer, delivery.attempt))
                if delivery.attempt > 1:
                    self._redelivered[consumer] += 1
            self._last_received = time.monotonic()

    def received_by(self, publish_id: str) -> list[tuple[int, int]]:
        """(consumer, attempt) of every delivery of a publish so far."""
        with self._lock:
            return list(self._receipts.get(publish_id, ()))

    def redelivered(self, consumer: int) -> int:
        """Deliveries a consumer received that were not the first attempt."""
        with self._lock:
            return self._redelivered[consumer]

    def ended(self, holds: list[Hold]) -> None:
        """Leases that are over."""
        with self._lock:
            self._holds.extend(holds)

    def acked(self, records: list[AckRecord]) -> None:
        """Acks the broker answered."""
        with self._lock:
            self._acks.extend(records)

    def quiet_for(self, seconds: float) -> bool:
        """True when no delivery arrived in the last `seconds`."""
        with self._lock:
            return time.monotonic() - self._last_received >= seconds

    def holds(self) -> list[Hold]:
        """Every lease that ended, in the order they were logged."""
        with self._lock:
            return list(self._holds)

    def acks(self) -> list[AckRecord]:
        """Every answered ack, in the order they were logged."""
        with self._lock:
            return list(self._acks)


def overlapping_holds(holds: list[Hold]) -> list[tuple[Hold, Hold]]:
    """Pairs of holds of one event that overlap in time (two consumers at once)."""
    by_publish: defaultdict[str, list[Hold]] = defaultdict(list)
    for hold in holds:
        by_publish[hold.publish_id].append(hold)
    overlaps = []
    for same_event in by_publish.values():
        same_event.sort(key=lambda h: h.received)
        longest = same_event[0]
        for hold in same_event[1:]:
            if hold.received < longest.until:
                overlaps.append((longest, hold))
            if hold.until > longest.until:
                longest = hold
    return overlaps


def late_acks_applied(acks: list[AckRecord]) -> list[AckRecord]:
    """Acks applied although sent after their lease's deadline (the lease was over)."""
    return [a for a in acks if a.applied and a.sent > a.deadline]


class Consumer:
    """A consumer of the subscription on one broker, on a thread of its own.

    It records every delivery in the log and acks each batch at once; an ack
    that fails is tried again in the next round. While `holding` is set, it
    keeps what it receives unacked (and lists it in `held`), and sets
    `holds_one`; once `holding` is cleared it acks all it kept.
    """

    def __init__(self, index: int, target: str, log: DeliveryLog) -> None:
        self.index = index
        self.log = log
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.EventBrokerServiceStub(self.channel)
        self.reader = StreamReader(
            self.stub,
            pb.SubscribeRequest(
                subscription=SUBSCRIPTION, max_outstanding=CREDIT, consumer_name=f"c{index}"
            ),
        )
        self.holding = threading.Event()
        self.holds_one = threading.Event()
        self.held: list[tuple[pb.Delivery, float]] = []
        self.received = 0
        self.failed_acks = 0
        self._unacked: list[tuple[pb.Delivery, float]] = []
        self._stop = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"consumer-{index}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self.reader.take_available(POLL_S)
            if not batch and self._stop.is_set():
                return
            now = time.time()
            self.log.received(self.index, batch)
            self.received += len(batch)
            self._unacked.extend((d, now) for d in batch)
            if self.holding.is_set():
                self.held.extend((d, now) for d in batch)
                if self.held:
                    self.holds_one.set()
            elif self._unacked:
                self._ack()

    @property
    def unsettled(self) -> int:
        """Deliveries received and not acked yet."""
        return len(self._unacked)

    def _ack(self) -> None:
        request = pb.AckRequest(ack_ids=[d.ack_id for d, _ in self._unacked])
        sent = time.time()
        try:
            response = self.stub.Ack(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError:
            self.failed_acks += 1
            return  # the broker or its database is away: try again with the next round
        settled = time.time()
        not_applied = set(response.not_applied_ack_ids)
        self.log.acked(
            [
                AckRecord(
                    d.dedup_id,
                    self.index,
                    d.attempt,
                    deadline_s(d),
                    sent,
                    settled,
                    d.ack_id not in not_applied,
                    d.event_id,
                )
                for d, _ in self._unacked
            ]
        )
        self.log.ended(
            [
                Hold(
                    d.dedup_id,
                    self.index,
                    d.attempt,
                    received,
                    deadline_s(d) if d.ack_id in not_applied else min(settled, deadline_s(d)),
                )
                for d, received in self._unacked
            ]
        )
        self._unacked = []

    def stop(self) -> None:
        """Leave: end the stream and the thread; what was never acked ends at its deadline."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self.reader.close()
        self._thread.join(CALL_TIMEOUT_S * 2)
        assert not self._thread.is_alive(), f"consumer {self.index} did not stop"
        self.log.ended(
            [
                Hold(d.dedup_id, self.index, d.attempt, received, deadline_s(d))
                for d, received in self._unacked
            ]
        )
        self._unacked = []
        self.channel.close()


def create_subscription(target: str, ack_deadline_s: int) -> None:
    """Create the subscription every consumer here reads, on `orders.>`."""
    with grpc.insecure_channel(target) as channel:
        pb_grpc.EventBrokerServiceStub(channel).CreateSubscription(
            pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(
                    name=SUBSCRIPTION,
                    filter=["orders.>"],
                    ack_deadline=duration_pb2.Duration(seconds=ack_deadline_s),
                )
            ),
            timeout=CALL_TIMEOUT_S,
        )


def drain(checker: QueueChecker, log: DeliveryLog, timeout_s: float) -> None:
    """Wait until every acknowledged publish was delivered, then for a quiet spell."""
    expected = checker.expected_at_least()
    came = wait_for(lambda: expected <= checker.seen(), timeout_s)
    missing = len(expected - checker.seen())
    assert came, f"{missing} acknowledged publishes not delivered within {timeout_s} s"
    assert wait_for(lambda: log.quiet_for(QUIET_S), timeout_s), "deliveries never stopped"


def report(result: CheckResult, started: float) -> None:
    """Print the checker's figures and how long the test took (shown with -s or -rA)."""
    print(f"\nchecker: {result} ({time.monotonic() - started:.1f} s)")
