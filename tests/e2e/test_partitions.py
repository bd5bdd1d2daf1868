"""Network faults under two brokers on one PostgreSQL database: partitions and a slow link.

A kill -9 breaks connections at once; a partition leaves them open and silent,
and a slow, lossy link stretches every call across deadlines. Each case puts
one connection behind a veth link of a network namespace made by the test
(`tests/e2e/netns.py`), then faults that link while publishers keep publishing
to both brokers and consumers keep consuming and acking:

- `database`: the second broker runs in the namespace and reaches PostgreSQL
  over the faulted link (through a forwarder bound to its root end); its own
  clients reach it over a second link that stays healthy.
- `consumer`: the second broker's consumer runs in the namespace and reaches
  that broker over the faulted link.

The fault is `partition` (every packet dropped for longer than the ack deadline,
until a lease held behind it has expired and come to the other consumer) or `slow`
(200 ms each way and 5 % loss, for a few seconds). After it heals, everything
is drained and judged: nothing acknowledged lost, nothing unexpected, no event
held by two consumers at once, no ack applied that was sent after its lease's
deadline. Duplicates are reported.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from eventbroker.v1 import broker_pb2 as pb
from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.e2e.checker import QueueChecker
from tests.e2e.faults import (
    CALL_TIMEOUT_S,
    AckRecord,
    Consumer,
    DeliveryLog,
    create_subscription,
    drain,
    late_acks_applied,
    overlapping_holds,
    report,
    wait_for,
)
from tests.e2e.forward import Forwarder
from tests.e2e.netns import Link, Namespace, namespace_or_skip
from tests.e2e.processes import BrokerProcess, publish_batches
from tests.e2e.remote_consumer import RemoteConsumer

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ACK_DEADLINE_S = 2
BATCH = 10
#: Acknowledged publishes before the fault, so that both consumers are busy.
WARM_ACKNOWLEDGED = 200
#: More acknowledged publishes after the fault healed, on both brokers.
AFTER_HEAL_ACKNOWLEDGED = 200
#: A partition lasts at least this long: longer than the ack deadline and a reaper round.
PARTITION_MIN_S = ACK_DEADLINE_S + 1.5
SLOW_S = 4.0
SLOW_DELAY_MS = 200
SLOW_LOSS_PERCENT = 5
#: No fault lasts longer than this, whatever it is waiting for.
FAULT_MAX_S = 12.0
START_TIMEOUT_S = 30.0
HOLD_TIMEOUT_S = 10.0
RECOVERY_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 30.0
#: The consumer whose connection is behind the faulted link, and the other one (which
#: acks at once over healthy connections, so that only leases held behind the link expire).
BEHIND = 1
IN_FRONT = 0


class Setup:
    """Two brokers, a consumer on each, and the faulted connection: its link and forwarder."""

    def __init__(
        self,
        brokers: list[BrokerProcess],
        consumers: list[Consumer | RemoteConsumer],
        link: Link,
        forwarder: Forwarder,
    ) -> None:
        self.brokers = brokers
        self.consumers = consumers
        self.link = link
        self.forwarder = forwarder

    def partition(self) -> None:
        """Drop every packet on the link, while the consumer behind it holds a lease.

        A consumer in this process keeps what it receives unacked until the link
        is cut, so that at least one lease is caught by the partition; one in the
        namespace has deliveries on the way whenever the link is cut.
        """
        behind = self.consumers[BEHIND]
        if isinstance(behind, Consumer):
            behind.holding.set()
            assert behind.holds_one.wait(HOLD_TIMEOUT_S), "nothing came to hold"
        self.link.partition()
        if isinstance(behind, Consumer):
            behind.holding.clear()

    def slow(self) -> None:
        """Delay every chunk each way (in the forwarder) and lose packets (on the link)."""
        self.forwarder.delay(True)
        self.link.lose(SLOW_LOSS_PERCENT)

    def heal(self) -> None:
        """No more loss or delay."""
        self.link.heal()
        self.forwarder.delay(False)

    def streams_open(self) -> list[str]:
        """Why any consumer's stream ended, if one did."""
        ended = []
        for consumer in self.consumers:
            if isinstance(consumer, Consumer) and consumer.reader.ended.is_set():
                ended.append(f"consumer {consumer.index}: {consumer.reader.error}")
            if isinstance(consumer, RemoteConsumer) and consumer.stream_error is not None:
                ended.append(f"consumer {consumer.index}: {consumer.stream_error}")
        return ended


#: Late acks whose whole story a failure message tells.
EVIDENCE_MAX = 3


def _story(ack: AckRecord, log: DeliveryLog, target: str) -> str:
    """A late ack, every receipt and hold of its event, and the broker's history of it."""
    lines = [
        f"ack of {ack.publish_id} attempt {ack.attempt} by consumer {ack.consumer}: "
        f"sent {ack.sent - ack.deadline:+.3f} s after the deadline, "
        f"answered {ack.returned - ack.deadline:+.3f} s, applied={ack.applied}"
    ]
    lines += [
        f"  held by consumer {h.consumer} attempt {h.attempt}: "
        f"{h.received - ack.deadline:+.3f} .. {h.until - ack.deadline:+.3f} s"
        for h in log.holds()
        if h.publish_id == ack.publish_id
    ]
    with grpc.insecure_channel(target) as channel:
        event = pb_grpc.EventBrokerServiceStub(channel).GetEvent(
            pb.GetEventRequest(event_id=ack.event_id), timeout=CALL_TIMEOUT_S
        )
    for status in event.deliveries:
        acked_at = status.update_time.ToMicroseconds() / 1_000_000 - ack.deadline
        lines.append(
            f"  broker: {pb.DeliveryState.Name(status.state)} after {status.attempts} attempts,"
            f" last change {acked_at:+.3f} s"
        )
        lines += [
            f"    attempt {a.attempt} to {a.consumer}: "
            f"{a.delivered_time.ToMicroseconds() / 1e6 - ack.deadline:+.3f} .. "
            f"{a.end_time.ToMicroseconds() / 1e6 - ack.deadline:+.3f} s "
            f"{pb.AttemptOutcome.Name(a.outcome)}"
            for a in status.history
        ]
    return "\n".join(lines)


def _pg_address(url: str) -> str:
    parsed = sa.make_url(url)
    return f"{parsed.host or '127.0.0.1'}:{parsed.port or 5432}"


def _database_behind_link(
    stack: contextlib.ExitStack,
    namespace: Namespace,
    postgres_url: str,
    log: DeliveryLog,
    tmp_path: Path,
) -> Setup:
    """The second broker in the namespace: PostgreSQL over link 0, its clients over link 1."""
    database_link, client_link = namespace.links
    forwarder = Forwarder(
        database_link.root_ip, _pg_address(postgres_url), tmp_path / "fwd.log", SLOW_DELAY_MS
    )
    stack.callback(forwarder.stop)
    behind_url = (
        sa.make_url(postgres_url)
        .set(host=database_link.root_ip, port=forwarder.port)
        .render_as_string(hide_password=False)
    )
    brokers = [
        BrokerProcess(postgres_url, tmp_path / "broker-0.log"),
        BrokerProcess(
            behind_url,
            tmp_path / "broker-1.log",
            ("--insecure",),  # reachable only over the test's own link
            listen=f"{client_link.inner_ip}:0",
            prefix=namespace.exec_prefix,
        ),
    ]
    for broker in brokers:
        stack.callback(broker.terminate)
        broker.start()
    create_subscription(brokers[0].target, ACK_DEADLINE_S)
    consumers: list[Consumer | RemoteConsumer] = []
    for index, broker in enumerate(brokers):
        consumer = Consumer(index, broker.target, log)
        stack.callback(consumer.stop)
        consumers.append(consumer)
    return Setup(brokers, consumers, database_link, forwarder)


def _consumer_behind_link(
    stack: contextlib.ExitStack,
    namespace: Namespace,
    postgres_url: str,
    log: DeliveryLog,
    tmp_path: Path,
) -> Setup:
    """The second broker's consumer in the namespace, reaching its broker over link 0."""
    (link,) = namespace.links
    brokers = [BrokerProcess(postgres_url, tmp_path / f"broker-{i}.log") for i in range(2)]
    for broker in brokers:
        stack.callback(broker.terminate)
        broker.start()
    create_subscription(brokers[0].target, ACK_DEADLINE_S)
    forwarder = Forwarder(link.root_ip, brokers[BEHIND].target, tmp_path / "fwd.log", SLOW_DELAY_MS)
    stack.callback(forwarder.stop)
    local = Consumer(0, brokers[0].target, log)
    stack.callback(local.stop)
    remote = RemoteConsumer(
        BEHIND, forwarder.address, log, tmp_path / "consumer-1.jsonl", namespace.exec_prefix
    )
    stack.callback(remote.stop)
    return Setup(brokers, [local, remote], link, forwarder)


SETUPS: dict[str, tuple[int, Callable[..., Setup]]] = {
    "database": (2, _database_behind_link),
    "consumer": (1, _consumer_behind_link),
}


@pytest.fixture
def make_namespace() -> Iterator[Callable[[int], Namespace]]:
    """Makes the test's network namespace with some links; removed afterwards, pass or fail."""
    made: list[Namespace] = []

    def make(link_count: int) -> Namespace:
        namespace = namespace_or_skip(link_count)
        made.append(namespace)
        return namespace

    try:
        yield make
    finally:
        for namespace in made:
            namespace.close()


def _apply_fault(fault: str, setup: Setup, log: DeliveryLog) -> str:
    """Fault the link until the fault has been felt (bounded); returns what was seen."""
    started = time.time()
    redelivered = log.redelivered(IN_FRONT)

    def slow_acks() -> list[float]:
        return [
            a.returned - a.sent for a in log.acks() if a.consumer == BEHIND and a.sent >= started
        ]

    if fault == "partition":
        setup.partition()

        def felt() -> bool:
            return (
                time.time() - started >= PARTITION_MIN_S and log.redelivered(IN_FRONT) > redelivered
            )

        assert wait_for(felt, FAULT_MAX_S), (
            "no lease held behind the partition expired and came to the other consumer"
        )
        return f"redelivered during the partition: {log.redelivered(IN_FRONT) - redelivered}"

    setup.slow()
    round_trip_s = 2 * SLOW_DELAY_MS / 1000

    behind = setup.consumers[BEHIND]
    failed_acks = behind.failed_acks if isinstance(behind, Consumer) else 0

    def acks_failed() -> int:
        return (behind.failed_acks if isinstance(behind, Consumer) else 0) - failed_acks

    def felt_slow() -> bool:
        # An ack behind the link took at least a round trip, or timed out, or none came
        # back at all: a broker whose database is that far away may lease nothing new
        # and answer no ack within the fault's few seconds.
        answered = slow_acks()
        slowed = any(s >= round_trip_s for s in answered) or acks_failed() > 0 or not answered
        return time.time() - started >= SLOW_S and slowed

    assert wait_for(felt_slow, FAULT_MAX_S), f"acks answered over the slow link: {slow_acks()}"
    slowest = max(slow_acks(), default=0.0)
    return (
        f"slowest ack answered over the slow link: {slowest:.2f} s, acks timed out: {acks_failed()}"
    )


@pytest.mark.parametrize("fault", ["partition", "slow"])
@pytest.mark.parametrize("behind", list(SETUPS))
def test_network_fault_loses_nothing(
    behind: str,
    fault: str,
    make_namespace: Callable[[int], Namespace],
    postgres_url: str,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    link_count, build = SETUPS[behind]
    namespace = make_namespace(link_count)
    checker = QueueChecker()
    log = DeliveryLog(checker)
    stop_publishing = threading.Event()
    with contextlib.ExitStack() as stack:
        setup: Setup = build(stack, namespace, postgres_url, log, tmp_path)
        publishers = [
            threading.Thread(
                target=publish_batches,
                args=(b.target, checker, stop_publishing, BATCH),
                kwargs={"keep_going": True},
            )
            for b in setup.brokers
        ]

        def stop_publishers() -> None:
            stop_publishing.set()
            for thread in publishers:
                thread.join(10)

        stack.callback(stop_publishers)
        stack.callback(setup.heal)
        for thread in publishers:
            thread.start()

        def warm() -> bool:
            return checker.acknowledged >= WARM_ACKNOWLEDGED and all(
                c.received > 0 for c in setup.consumers
            )

        assert wait_for(warm, START_TIMEOUT_S), [c.received for c in setup.consumers]
        try:
            seen = _apply_fault(fault, setup, log)
        finally:
            setup.heal()
        healed = time.time()

        # Both brokers take publishes again, and the consumer behind the link acks again.
        acknowledged = checker.acknowledged
        assert wait_for(
            lambda: checker.acknowledged >= acknowledged + AFTER_HEAL_ACKNOWLEDGED,
            RECOVERY_TIMEOUT_S,
        )
        assert wait_for(
            lambda: any(a.consumer == BEHIND and a.applied and a.sent > healed for a in log.acks()),
            RECOVERY_TIMEOUT_S,
        ), "the consumer behind the link never had an ack applied after the fault healed"
        stop_publishers()
        drain(checker, log, DRAIN_TIMEOUT_S)
        assert setup.streams_open() == []
        # Every consumer leaves: each lease it never settled ends at its deadline.
        for consumer in setup.consumers:
            consumer.stop()

        result = checker.check()
        report(result, started)
        acks = log.acks()
        late = late_acks_applied(acks)
        around_deadline = [a for a in acks if a.applied and a.sent <= a.deadline < a.returned]
        holds = log.holds()
        overlaps = overlapping_holds(holds)
        expired_on_arrival = [h for h in holds if h.received > h.until]
        figures = (
            f"{behind}/{fault}: {seen}; holds={len(holds)} overlapping={len(overlaps)} "
            f"late-acks-applied={len(late)} "
            f"applied-acks-answered-after-deadline={len(around_deadline)} "
            f"received-after-deadline={len(expired_on_arrival)}"
        )
        print(figures)
        assert result.valid, str(result)
        assert result.lost == frozenset()
        assert result.unexpected == frozenset()
        assert overlaps == []
        stories = "\n".join(_story(a, log, setup.brokers[0].target) for a in late[:EVIDENCE_MAX])
        assert late == [], f"acks sent after their lease's deadline were applied:\n{stories}"
