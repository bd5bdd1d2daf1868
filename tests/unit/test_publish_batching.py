"""Publishes joined at the client: the queue's decisions, and both drivers on a fake call.

The queue is tested without I/O; the asyncio and blocking publishers run against
a `send` that records each call and answers (or refuses) as a broker would, and
that holds a call open until the test has queued what it needs, so every join
is decided by the test, never by timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from broker import config as broker_config
from broker import names as broker_names
from eventbroker import (
    DeadlineExceeded,
    EventSpec,
    InvalidArgument,
    PermissionDenied,
    PublishBatching,
    PublishResult,
    Unauthenticated,
    Unavailable,
    limits,
)
from eventbroker import _batching as batching
from eventbroker import _convert as convert
from eventbroker._batching import (
    AsyncPublisher,
    Batch,
    BlockingPublisher,
    Pending,
    PublishQueue,
)
from eventbroker._publish import Deadline
from eventbroker.errors import BrokerError
from eventbroker.v1 import broker_pb2 as pb

WAIT_S = 10.0


class Slot:
    """An outcome a test reads back (the queue's view of a waiting caller)."""

    def __init__(self) -> None:
        self.result: PublishResult | None = None
        self.error: BaseException | None = None
        self.cancelled = False

    def done(self) -> bool:
        return self.cancelled or self.result is not None or self.error is not None

    def set_result(self, result: PublishResult, /) -> None:
        assert not self.done()
        self.result = result

    def set_exception(self, error: BaseException, /) -> None:
        assert not self.done()
        self.error = error


def event(name: str = "order.new", *, dedup_id: str = "", **fields: Any) -> pb.Event:
    spec = EventSpec(name, {"n": 1}, id=dedup_id or f"id-{name}", **fields)
    return convert.event_message(spec)


def deadline(total_s: float | None = 30.0) -> Deadline:
    return Deadline(total_s, 30.0)


def queued(
    queue: PublishQueue[Slot],
    name: str = "order.new",
    total_s: float | None = 30.0,
    **fields: Any,
) -> Pending[Slot]:
    return queue.pending(name, event(name, **fields), deadline(total_s), Slot())


def names(batch: Batch[Slot] | None) -> list[str]:
    assert batch is not None
    return [m.event.name for m in batch.members]


def result_of(item: pb.Event) -> PublishResult:
    return PublishResult(event_id=f"stored-{item.id}", duplicate=False)


def refusal(code: grpc.StatusCode, *fields: str) -> BrokerError:
    error_class = {
        grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    }.get(code, BrokerError)
    return error_class(code, "refused", field_violations=[(f, "bad") for f in fields])


# -- settings --------------------------------------------------------------------


def test_the_defaults_stay_under_the_brokers_limits() -> None:
    settings = PublishBatching()
    assert settings.enabled and settings.max_in_flight == 1
    assert 1 < settings.max_events < limits.BATCH_MAX_EVENTS_DEFAULT
    assert limits.EVENT_MAX_BYTES_DEFAULT < settings.max_bytes < limits.BATCH_MAX_BYTES_DEFAULT


def test_the_client_limits_are_the_brokers() -> None:
    assert limits.EVENT_MAX_BYTES_DEFAULT == broker_config.EVENT_MAX_BYTES_DEFAULT
    assert limits.BATCH_MAX_EVENTS_DEFAULT == broker_config.BATCH_MAX_EVENTS_DEFAULT
    assert limits.BATCH_MAX_BYTES_DEFAULT == broker_config.BATCH_MAX_BYTES_DEFAULT
    assert (limits.PRIORITY_MIN, limits.PRIORITY_MAX) == (
        broker_config.PRIORITY_MIN,
        broker_config.PRIORITY_MAX,
    )
    assert limits.HEADERS_MAX_COUNT == broker_config.HEADERS_MAX_COUNT
    assert limits.DEDUP_ID_MAX_LENGTH == broker_config.DEDUP_ID_MAX_LENGTH
    assert limits.ORDERING_KEY_MAX_LENGTH == broker_config.ORDERING_KEY_MAX_LENGTH
    assert limits.CONTENT_TYPE_MAX_LENGTH == broker_config.CONTENT_TYPE_MAX_LENGTH
    assert limits.NAME_MAX_LENGTH == broker_names.NAME_MAX_LENGTH
    for name in ["user.joined", "A/b:c-d_e.f", "x" * 255, "x" * 256, "", "bad name!", "é"]:
        assert limits.is_valid_name(name) == (broker_names.normalize_name(name) is not None)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_events": 0}, "PublishBatching.max_events must be at least 1; got 0"),
        ({"max_bytes": 0}, "PublishBatching.max_bytes must be at least 1; got 0"),
        ({"max_in_flight": 0}, "PublishBatching.max_in_flight must be between 1 and 64; got 0"),
        ({"max_in_flight": 65}, "PublishBatching.max_in_flight must be between 1 and 64; got 65"),
    ],
)
def test_bad_settings_name_the_setting_and_its_range(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PublishBatching(**settings)


def test_the_client_argument_is_a_flag_or_the_settings() -> None:
    assert PublishBatching.of(True) == PublishBatching()
    assert PublishBatching.of(False) == PublishBatching(enabled=False)
    bounded = PublishBatching(max_events=10)
    assert PublishBatching.of(bounded) is bounded
    with pytest.raises(TypeError, match="publish_batching must be a bool or a PublishBatching"):
        PublishBatching.of(1)  # type: ignore[arg-type]


# -- the queue ---------------------------------------------------------------------


def test_a_publish_goes_out_at_once_while_no_call_is_in_flight() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching())
    assert names(queue.add(queued(queue, "a.one"))) == ["a.one"]
    assert queue.next() is None  # the call returned, nothing waits: the slot is free
    assert names(queue.add(queued(queue, "a.two"))) == ["a.two"]


def test_publishes_made_during_a_call_go_together_in_queue_order() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching())
    assert queue.add(queued(queue, "a.first")) is not None
    for index in range(5):
        assert queue.add(queued(queue, f"b.{index}")) is None
    assert names(queue.next()) == [f"b.{index}" for index in range(5)]
    assert queue.next() is None


def test_several_calls_in_flight_when_allowed() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching(max_in_flight=2))
    assert queue.add(queued(queue, "a.one")) is not None
    assert queue.add(queued(queue, "a.two")) is not None
    assert queue.add(queued(queue, "a.three")) is None


def test_a_batch_stops_at_its_bounds_of_events_and_bytes() -> None:
    by_count: PublishQueue[Slot] = PublishQueue(PublishBatching(max_events=3))
    by_count.add(queued(by_count, "first"))
    for index in range(7):
        by_count.add(queued(by_count, f"e.{index}"))
    assert [len(names(by_count.next())) for _ in range(3)] == [3, 3, 1]

    probe = queued(by_count, "e.0")
    by_size: PublishQueue[Slot] = PublishQueue(PublishBatching(max_bytes=probe.size_bytes * 2))
    by_size.add(queued(by_size, "first"))
    for index in range(5):
        by_size.add(queued(by_size, f"e.{index}"))
    assert [len(names(by_size.next())) for _ in range(3)] == [2, 2, 1]
    request = pb.BatchPublishRequest(events=[probe.event, probe.event])
    assert request.ByteSize() == probe.size_bytes * 2  # the broker's measure of a batch


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "bad name!"},
        {"name": "x" * 256},
        {"priority": 51},
        {"headers": {f"h{i}": "v" for i in range(65)}},
        {"headers": {"": "v"}},
        {"ordering_key": "k" * 256},
        {"data": "x" * (256 * 1024)},
    ],
    ids=lambda bad: next(iter(bad)),
)
def test_an_event_the_broker_would_refuse_goes_alone(bad: dict[str, object]) -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching())
    spec = EventSpec(**{"name": "order.bad", "id": "bad", **bad})  # type: ignore[arg-type]
    poisoned = queue.pending(spec.name, convert.event_message(spec), deadline(), Slot())
    assert poisoned.alone
    queue.add(queued(queue, "first"))
    queue.add(queued(queue, "before"))
    queue.add(poisoned)
    queue.add(queued(queue, "after"))
    assert names(queue.next()) == ["before"]
    assert names(queue.next()) == [poisoned.event.name]
    assert names(queue.next()) == ["after"]


def test_an_event_larger_than_a_batch_may_be_goes_alone() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching(max_bytes=100))
    assert queued(queue, "big", dedup_id="x" * 100).alone
    assert not queued(queue, "small").alone


def test_a_caller_that_stopped_waiting_is_not_sent() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching())
    queue.add(queued(queue, "first"))
    gone = queued(queue, "gone")
    queue.add(gone)
    queue.add(queued(queue, "kept"))
    gone.outcome.cancelled = True
    assert names(queue.next()) == ["kept"]


def test_results_go_to_their_own_callers() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching())
    queue.add(queued(queue, "first"))
    items = [queued(queue, f"e.{index}") for index in range(3)]
    for item in items:
        queue.add(item)
    batch = queue.next()
    assert batch is not None
    queue.succeeded(batch.members, [result_of(m.event) for m in batch.members])
    assert [i.outcome.result for i in items] == [result_of(i.event) for i in items]


def test_a_failed_call_goes_back_to_the_front_and_waits_for_the_backoff() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching())
    batch = queue.add(queued(queue, "first"))
    assert batch is not None
    later = queued(queue, "later")
    queue.add(later)
    unavailable = Unavailable(grpc.StatusCode.UNAVAILABLE, "connection refused")
    assert queue.failed(batch, unavailable) == []
    assert batch.members[0].outcome.error is None  # it is retried, not failed
    retry = queue.next()
    assert names(retry) == ["first", "later"]  # same event, same id, and what joined
    assert retry is not None and 0.09 <= queue.pause_s(retry) <= 0.2
    assert queue.next() is None


def test_the_backoff_is_each_events_own() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching())
    unavailable = Unavailable(grpc.StatusCode.UNAVAILABLE, "connection refused")
    old = queued(queue, "old", total_s=None)
    batch = queue.add(old)
    for _ in range(5):
        assert batch is not None
        queue.failed(batch, unavailable)
        batch = queue.next()
    assert batch is not None and old.failures == 5
    assert queue.pause_s(batch) >= 1.6  # 0.1 s doubled four times
    old.outcome.cancelled = True
    assert queue.next() is None
    fresh = queue.add(queued(queue, "fresh"))
    assert fresh is not None and queue.pause_s(fresh) == 0.0  # no backoff of another's


def test_a_caller_whose_time_runs_out_before_the_retry_gets_the_error() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching())
    short = queued(queue, "short", total_s=0.05)
    batch = queue.add(short)
    assert batch is not None
    long = queued(queue, "long")
    queue.add(long)
    joined = queue.next()
    assert joined is not None
    both = Batch([short, *joined.members])
    unavailable = Unavailable(grpc.StatusCode.UNAVAILABLE, "connection refused")
    queue.failed(both, unavailable)
    assert short.outcome.error is unavailable
    assert long.outcome.error is None
    assert names(queue.next()) == ["long"]


def test_a_caller_whose_time_ran_out_while_waiting_gets_its_last_error() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching())
    unavailable = Unavailable(grpc.StatusCode.UNAVAILABLE, "storage full")
    retried = queued(queue, "retried", total_s=10)
    batch = queue.add(retried)
    assert batch is not None
    queue.failed(batch, unavailable)
    retry = queue.next()
    assert retry is not None
    retried.deadline._started -= 20  # its time ran out during the backoff
    assert queue.sendable(retry) == []
    assert retried.outcome.error is unavailable

    never_sent = queued(queue, "never", total_s=10)
    never_sent.deadline._started -= 20
    assert queue.sendable(Batch([never_sent])) == []
    assert isinstance(never_sent.outcome.error, DeadlineExceeded)


def test_a_refused_batch_sends_the_named_events_alone_and_the_rest_together() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching())
    items = [queued(queue, f"e.{index}") for index in range(5)]
    error = refusal(grpc.StatusCode.INVALID_ARGUMENT, "events[1].binary_data", "events[3]")
    parts = queue.failed(Batch(items), error)
    assert [names(part) for part in parts] == [["e.0", "e.2", "e.4"], ["e.1"], ["e.3"]]
    assert parts[0].after_refusal
    assert items[1].alone and items[3].alone and not items[0].alone
    assert all(item.outcome.error is None for item in items)

    again = refusal(grpc.StatusCode.PERMISSION_DENIED)
    assert [names(part) for part in queue.failed(parts[0], again)] == [["e.0"], ["e.2"], ["e.4"]]


def test_the_named_indexes_are_those_of_the_call_as_sent() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching())
    items = [queued(queue, f"e.{index}") for index in range(4)]
    items[1].outcome.cancelled = True  # its caller stopped waiting during the call
    error = refusal(grpc.StatusCode.INVALID_ARGUMENT, "events[2].name")
    parts = queue.failed(Batch(items), error)
    assert [names(part) for part in parts] == [["e.0", "e.3"], ["e.2"]]


def test_a_refused_batch_that_names_no_event_sends_each_alone() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching())
    items = [queued(queue, f"e.{index}") for index in range(3)]
    parts = queue.failed(Batch(items), refusal(grpc.StatusCode.PERMISSION_DENIED))
    assert [names(part) for part in parts] == [["e.0"], ["e.1"], ["e.2"]]
    assert all(item.alone for item in items)


def test_a_refused_single_event_and_other_errors_go_to_the_callers() -> None:
    queue: PublishQueue[Slot] = PublishQueue(PublishBatching())
    alone = queued(queue, "alone")
    error = refusal(grpc.StatusCode.INVALID_ARGUMENT, "event.name")
    assert queue.failed(Batch([alone]), error) == []
    assert alone.outcome.error is error

    items = [queued(queue, f"e.{index}") for index in range(3)]
    wrong_key = Unauthenticated(grpc.StatusCode.UNAUTHENTICATED, "wrong key")
    assert queue.failed(Batch(items), wrong_key) == []  # about the key, not an event
    assert all(item.outcome.error is wrong_key for item in items)


# -- the drivers, on a fake broker ------------------------------------------------------


@dataclass
class FakeBroker:
    """Records each call's events; refuses batches holding `refused` names; may hold calls."""

    refused: dict[str, BrokerError] = field(default_factory=dict)
    failures: list[BrokerError] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    stored: dict[str, int] = field(default_factory=dict)

    def answer(self, events: Sequence[pb.Event]) -> list[PublishResult]:
        self.calls.append([e.name for e in events])
        if self.failures:
            raise self.failures.pop(0)
        for index, item in enumerate(events):
            if item.name in self.refused:
                error = self.refused[item.name]
                if len(events) == 1:
                    raise error
                raise type(error)(
                    error.code,
                    "batch refused",
                    field_violations=[
                        (f"events[{index}].name", f) for f, _ in error.field_violations
                    ],
                )
        for item in events:
            self.stored[item.id] = self.stored.get(item.id, 0) + 1
        return [result_of(item) for item in events]


async def _publish_many(
    publisher: AsyncPublisher, names_: Sequence[str]
) -> list[PublishResult | BaseException]:
    return await asyncio.gather(
        *(publisher.publish(n, event(n), deadline()) for n in names_), return_exceptions=True
    )


def test_async_publishes_made_together_share_one_call_after_the_first() -> None:
    broker = FakeBroker()

    async def send(events: Sequence[pb.Event], timeout_s: float | None) -> list[PublishResult]:
        await asyncio.sleep(0)  # the call is on its way: the others queue meanwhile
        return broker.answer(events)

    async def main() -> list[PublishResult | BaseException]:
        return await _publish_many(
            AsyncPublisher(PublishBatching(), send), [f"e.{i}" for i in range(10)]
        )

    results = asyncio.run(main())
    assert broker.calls == [["e.0"], [f"e.{i}" for i in range(1, 10)]]
    assert results == [result_of(event(f"e.{i}")) for i in range(10)]


def test_async_one_refused_event_fails_only_its_caller() -> None:
    broker = FakeBroker(refused={"e.3": PermissionDenied(grpc.StatusCode.PERMISSION_DENIED, "no")})

    async def send(events: Sequence[pb.Event], timeout_s: float | None) -> list[PublishResult]:
        await asyncio.sleep(0)
        return broker.answer(events)

    async def main() -> list[PublishResult | BaseException]:
        return await _publish_many(
            AsyncPublisher(PublishBatching(), send), [f"e.{i}" for i in range(6)]
        )

    results = asyncio.run(main())
    assert isinstance(results[3], PermissionDenied)
    assert [r for i, r in enumerate(results) if i != 3] == [
        result_of(event(f"e.{i}")) for i in range(6) if i != 3
    ]
    # alone, then refused whole (naming no event), then each alone
    assert broker.calls == [["e.0"], ["e.1", "e.2", "e.3", "e.4", "e.5"]] + [
        [f"e.{i}"] for i in range(1, 6)
    ]
    assert set(broker.stored.values()) == {1}


def test_async_a_failed_call_is_retried_under_the_same_ids_with_what_joined() -> None:
    broker = FakeBroker(failures=[Unavailable(grpc.StatusCode.UNAVAILABLE, "restarting")])

    async def main() -> list[PublishResult | BaseException]:
        gate = asyncio.Event()

        async def send(events: Sequence[pb.Event], timeout_s: float | None) -> list[PublishResult]:
            if not broker.calls:
                await gate.wait()
            return broker.answer(events)

        publisher = AsyncPublisher(PublishBatching(), send)
        first = asyncio.ensure_future(publisher.publish("e.0", event("e.0"), deadline()))
        await asyncio.sleep(0)  # e.0 is on its way (held by the gate)
        others = asyncio.ensure_future(_publish_many(publisher, ["e.1", "e.2"]))
        await asyncio.sleep(0)
        gate.set()
        return [await first, *await others]

    results = asyncio.run(main())
    assert broker.calls == [["e.0"], ["e.0", "e.1", "e.2"]]
    assert results == [result_of(event(n)) for n in ("e.0", "e.1", "e.2")]
    assert set(broker.stored.values()) == {1}


def test_async_a_caller_queued_past_its_timeout_gets_deadline_exceeded_and_is_not_sent() -> None:
    broker = FakeBroker()

    async def main() -> BaseException | PublishResult:
        gate = asyncio.Event()

        async def send(events: Sequence[pb.Event], timeout_s: float | None) -> list[PublishResult]:
            if not broker.calls:
                broker.calls.append([e.name for e in events])
                await gate.wait()
                return [result_of(e) for e in events]
            return broker.answer(events)

        publisher = AsyncPublisher(PublishBatching(), send)
        held = asyncio.ensure_future(publisher.publish("held", event("held"), deadline()))
        await asyncio.sleep(0)
        try:
            outcome: BaseException | PublishResult = await publisher.publish(
                "short", event("short"), deadline(0.05)
            )
        except DeadlineExceeded as error:
            outcome = error
        gate.set()
        await held
        await publisher.drain()
        return outcome

    outcome = asyncio.run(main())
    assert isinstance(outcome, DeadlineExceeded)
    assert "publish of short did not finish within its timeout of 0.05 s" in outcome.message
    assert broker.calls == [["held"]]


class CountingQueue:
    """Counts the publishes added to a publisher's queue; `all_queued` is set at `expected`."""

    def __init__(self, publisher: BlockingPublisher, expected: int) -> None:
        self.all_queued = threading.Event()
        self._count = 0
        self._expected = expected
        self._changed = threading.Condition()
        queue = publisher._queue
        original = queue.add

        def add(item: Any) -> Any:
            batch = original(item)
            with self._changed:
                self._count += 1
                self._changed.notify_all()
            if self._count >= self._expected:
                self.all_queued.set()
            return batch

        queue.add = add  # type: ignore[method-assign]

    def wait_for(self, count: int) -> bool:
        """Wait until `count` publishes were added."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count >= count, WAIT_S)


def _threads(
    count: int, publish: Callable[[int], PublishResult]
) -> tuple[list[threading.Thread], dict[int, PublishResult | BaseException]]:
    outcomes: dict[int, PublishResult | BaseException] = {}

    def run(index: int) -> None:
        try:
            outcomes[index] = publish(index)
        except BaseException as error:  # handed to the test thread
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    return threads, outcomes


def test_blocking_publishes_made_during_a_call_are_sent_together_by_one_of_their_callers() -> None:
    broker = FakeBroker()
    gate = threading.Event()
    senders: list[str] = []

    def send(events: Sequence[pb.Event], timeout_s: float | None) -> list[PublishResult]:
        senders.append(threading.current_thread().name)
        if not broker.calls:
            assert gate.wait(WAIT_S)
        return broker.answer(events)

    publisher = BlockingPublisher(PublishBatching(), send)
    counting = CountingQueue(publisher, 6)
    threads, outcomes = _threads(
        6, lambda i: publisher.publish(f"e.{i}", event(f"e.{i}"), deadline())
    )
    threads[0].start()
    for thread in threads[1:]:
        thread.start()
    assert counting.all_queued.wait(WAIT_S)
    gate.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert broker.calls[0] == ["e.0"]
    assert sorted(broker.calls[1]) == [f"e.{i}" for i in range(1, 6)]
    assert len(broker.calls) == 2
    assert outcomes == {i: result_of(event(f"e.{i}")) for i in range(6)}
    # the first caller sent its own; the joined call went from its first event's thread
    first_joined = int(broker.calls[1][0].split(".")[1])
    assert senders == [threads[0].name, threads[first_joined].name]


def test_blocking_a_sender_interrupted_hands_its_batch_on() -> None:
    broker = FakeBroker()
    gate = threading.Event()

    def send(events: Sequence[pb.Event], timeout_s: float | None) -> list[PublishResult]:
        if not broker.calls:
            broker.calls.append([e.name for e in events])
            assert gate.wait(WAIT_S)
            return [result_of(e) for e in events]
        if len(broker.calls) == 1:
            broker.calls.append([e.name for e in events])
            raise KeyboardInterrupt  # in the thread sending the joined batch
        return broker.answer(events)

    publisher = BlockingPublisher(PublishBatching(), send)
    counting = CountingQueue(publisher, 5)
    threads, outcomes = _threads(
        5, lambda i: publisher.publish(f"e.{i}", event(f"e.{i}"), deadline())
    )
    threads[0].start()
    for thread in threads[1:]:
        thread.start()
    assert counting.all_queued.wait(WAIT_S)
    gate.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads)
    interrupted = [i for i, outcome in outcomes.items() if isinstance(outcome, KeyboardInterrupt)]
    assert len(interrupted) == 1
    (sender,) = interrupted
    assert broker.calls[1][0] == f"e.{sender}"  # it sent the batch of its own event
    assert broker.calls[2:] == [broker.calls[1][1:]]  # the rest went on, in their order
    assert {i: o for i, o in outcomes.items() if i != sender} == {
        i: result_of(event(f"e.{i}")) for i in range(5) if i != sender
    }


def test_blocking_one_refused_event_fails_only_its_caller() -> None:
    broker = FakeBroker(
        refused={
            "e.2": InvalidArgument(
                grpc.StatusCode.INVALID_ARGUMENT, "bad", field_violations=[("x", "y")]
            )
        }
    )
    gate = threading.Event()

    def send(events: Sequence[pb.Event], timeout_s: float | None) -> list[PublishResult]:
        if not broker.calls:
            assert gate.wait(WAIT_S)
        return broker.answer(events)

    publisher = BlockingPublisher(PublishBatching(), send)
    counting = CountingQueue(publisher, 5)
    threads, outcomes = _threads(
        5, lambda i: publisher.publish(f"e.{i}", event(f"e.{i}"), deadline())
    )
    threads[0].start()
    for thread in threads[1:]:
        thread.start()
    assert counting.all_queued.wait(WAIT_S)
    gate.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert isinstance(outcomes[2], InvalidArgument)
    assert {i: o for i, o in outcomes.items() if i != 2} == {
        i: result_of(event(f"e.{i}")) for i in range(5) if i != 2
    }
    assert broker.calls[-1] == ["e.2"]  # alone, after the rest went together
    assert len(broker.calls) == 4
    assert set(broker.stored.values()) == {1}


class _InterruptedWhileWaiting(threading.Event):
    """The wait of a thread named `interrupted`: Ctrl-C arrives as it is woken."""

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        if threading.current_thread().name == "interrupted":
            raise KeyboardInterrupt
        return woken


def test_blocking_a_caller_interrupted_while_handed_a_batch_passes_it_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original_init = batching._Waiter.__init__

    def init(waiter: Any) -> None:
        original_init(waiter)
        waiter.woken = _InterruptedWhileWaiting()

    monkeypatch.setattr(batching._Waiter, "__init__", init)
    broker = FakeBroker()
    gate = threading.Event()

    def send(events: Sequence[pb.Event], timeout_s: float | None) -> list[PublishResult]:
        if not broker.calls:
            assert gate.wait(WAIT_S)
        return broker.answer(events)

    publisher = BlockingPublisher(PublishBatching(), send)
    counting = CountingQueue(publisher, 3)
    threads, outcomes = _threads(
        3, lambda i: publisher.publish(f"e.{i}", event(f"e.{i}"), deadline())
    )
    threads[1].name = "interrupted"
    for index, thread in enumerate(threads):
        thread.start()
        assert counting.wait_for(index + 1)  # queued in thread order: e.1 is handed e.1 and e.2
    gate.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads)
    assert isinstance(outcomes[1], KeyboardInterrupt)
    assert outcomes[0] == result_of(event("e.0"))
    assert outcomes[2] == result_of(event("e.2"))  # sent by its own thread instead
    assert broker.calls == [["e.0"], ["e.2"]]
