"""The consumer runtime's machinery without a broker: verdicts, timeouts, settler, leaser."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import pytest
from pydantic import BaseModel

from eventbroker import (
    AckResult,
    AsyncClient,
    Consumer,
    Context,
    Message,
    Retry,
    Terminal,
    Unavailable,
)
from eventbroker._dispatch import run_handlers
from eventbroker._leaser import Leaser
from eventbroker._routes import Router
from eventbroker._settle import Settler

WAIT_S = 10.0


@dataclass
class OrderNew:
    order_id: int
    amount: float


class Signup(BaseModel):
    user_id: int
    plan: str


# -- handler dispatch ----------------------------------------------------------


def message(**fields: Any) -> Message:
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "ack_id": "ack-1",
        "event_id": "ev-1",
        "name": "order.new",
        "data": {"order_id": 1, "amount": 2.0},
        "content_type": "application/json",
        "headers": {},
        "publish_time": now,
        "delay": timedelta(0),
        "priority": 0,
        "attempt": 1,
        "ack_deadline": now + timedelta(seconds=30),
        "subscription": "billing",
    }
    return Message(**(base | fields))


def dispatch(
    handlers: list[Callable[..., Any]],
    *,
    timeout_s: float | None = 5.0,
    not_applied: tuple[str, ...] = (),
    model: type[Any] | None = None,
) -> tuple[Any, list[timedelta]]:
    """Run handlers (all on `order.*`) for one message; return the verdict and extensions."""
    extensions: list[timedelta] = []
    router = Router()
    for handler in handlers:
        router.add("order.*", handler, model, timeout_s)

    async def extend_lease(ack_id: str, extension: timedelta) -> AckResult:
        extensions.append(extension)
        return AckResult(not_applied)

    async def main() -> Any:
        delivery = message()
        context = Context(delivery, extend_lease=extend_lease, stopping=asyncio.Event())
        return await run_handlers(router.routes_for(delivery.name), delivery, context)

    return asyncio.run(main()), extensions


def test_verdict_acks_when_all_return_and_nacks_with_reprs_when_any_raise() -> None:
    async def fine(msg: Message, ctx: Context) -> None:
        pass

    async def broken(msg: Message, ctx: Context) -> None:
        raise KeyError("amount")

    def also_broken(msg: Message, ctx: Context) -> None:
        raise ValueError("sync")

    assert dispatch([fine, fine])[0].ack
    verdict, _ = dispatch([fine, broken, also_broken])
    assert not verdict.ack and not verdict.terminal
    assert verdict.error == "KeyError('amount'); ValueError('sync')"


def test_verdict_is_terminal_when_any_handler_says_so() -> None:
    async def broken(msg: Message, ctx: Context) -> None:
        raise KeyError("amount")

    async def hopeless(msg: Message, ctx: Context) -> None:
        raise Terminal("never")

    verdict, _ = dispatch([broken, hopeless])
    assert verdict.terminal and "Terminal('never')" in verdict.error


def test_slow_handler_times_out_unless_it_extends() -> None:
    async def slow(msg: Message, ctx: Context) -> None:
        await asyncio.sleep(0.8)

    async def slow_but_extending(msg: Message, ctx: Context) -> None:
        assert await ctx.extend(5)
        await asyncio.sleep(0.8)

    timed_out, _ = dispatch([slow], timeout_s=0.3)
    assert not timed_out.ack and "TimeoutError" in timed_out.error and "slow" in timed_out.error
    extended, extensions = dispatch([slow_but_extending], timeout_s=0.3)
    assert extended.ack
    assert extensions == [timedelta(seconds=5)]


def test_each_handler_has_its_own_timeout() -> None:
    router = Router()

    async def quick_but_slow(msg: Message, ctx: Context) -> None:
        await asyncio.sleep(0.8)

    async def patient(msg: Message, ctx: Context) -> None:
        await asyncio.sleep(0.8)

    router.add("order.*", quick_but_slow, None, 0.2)
    router.add("order.*", patient, None, 5.0)

    async def main() -> Any:
        delivery = message()

        async def extend_lease(ack_id: str, extension: timedelta) -> AckResult:
            return AckResult()

        context = Context(delivery, extend_lease=extend_lease, stopping=asyncio.Event())
        return await run_handlers(router.routes_for(delivery.name), delivery, context)

    verdict = asyncio.run(main())
    assert not verdict.ack
    assert "quick_but_slow did not finish within 0.2 s" in verdict.error
    assert "patient" not in verdict.error


def test_consumer_timeouts_default_to_the_consumer_and_read_durations() -> None:
    consumer = Consumer("billing", target="127.0.0.1:9", handler_timeout=7)
    consumer.on("order.a")(print)
    consumer.on("order.b", timeout="2m")(print)
    consumer.on("order.c", timeout=None)(print)
    timeouts = [route.timeout_s for route in consumer._router.routes_for("order.a")]
    assert timeouts == [7]
    assert [r.timeout_s for r in consumer._router.routes_for("order.b")] == [120.0]
    assert [r.timeout_s for r in consumer._router.routes_for("order.c")] == [None]
    with pytest.raises(ValueError, match=r"^timeout must be more than 0 s \(None for no limit\)"):
        consumer.on("order.d", timeout=0)
    with pytest.raises(ValueError, match=r"^handler_timeout must be at least 0 s; got -1 s$"):
        Consumer("billing", target="127.0.0.1:9", handler_timeout=-1)
    assert Consumer("billing", handler_timeout="1m").handler_timeout == 60.0


def test_extend_reports_a_lost_lease() -> None:
    results: list[bool] = []

    async def extend_once(msg: Message, ctx: Context) -> None:
        results.append(await ctx.extend("2m"))

    verdict, extensions = dispatch([extend_once], not_applied=("ack-1",))
    assert results == [False] and verdict.ack
    assert extensions == [timedelta(minutes=2)]


def test_data_that_does_not_fit_the_model_is_terminal_with_a_reason() -> None:
    got: list[Any] = []

    async def typed(msg: Message, ctx: Context) -> None:
        got.append(msg.data)

    verdict, _ = dispatch([typed], model=OrderNew)
    assert verdict.ack and got == [OrderNew(order_id=1, amount=2.0)]
    refused, _ = dispatch([typed], model=Signup)
    assert not refused.ack and refused.terminal
    assert refused.error.startswith("""Terminal("data does not match Signup: """)
    assert "validation error" in refused.error


def test_retry_nacks_after_the_longest_delay_asked() -> None:
    async def soon(msg: Message, ctx: Context) -> None:
        raise Retry("rate limited", delay=5)

    async def later(msg: Message, ctx: Context) -> None:
        raise Retry(delay="1m")

    verdict, _ = dispatch([soon, later])
    assert not verdict.ack and not verdict.terminal
    assert verdict.delay == timedelta(minutes=1)
    assert "Retry('rate limited')" in verdict.error


def test_retry_without_a_delay_leaves_it_to_the_backoff() -> None:
    async def again(msg: Message, ctx: Context) -> None:
        raise Retry("later")

    verdict, _ = dispatch([again])
    assert not verdict.ack and verdict.delay is None and not verdict.terminal


def test_retry_delay_follows_the_duration_rule() -> None:
    assert Retry(delay=0.5).delay == timedelta(milliseconds=500)
    assert Retry(delay="PT2M").delay == timedelta(minutes=2)
    with pytest.raises(ValueError, match=r"^delay must be between 0 s and 366 days; got -1 s$"):
        Retry(delay=-1)


def test_intended_outcomes_log_at_info_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def hopeless(msg: Message, ctx: Context) -> None:
        raise Terminal("never")

    async def later(msg: Message, ctx: Context) -> None:
        raise Retry(delay=30)

    async def broken(msg: Message, ctx: Context) -> None:
        raise KeyError("amount")

    caplog.set_level(logging.INFO, logger="eventbroker.consumer")
    dispatch([hopeless, later, broken])
    by_handler = {
        r.getMessage().split(" ", 1)[0].rsplit(".", 1)[-1]: r
        for r in caplog.records
        if r.name == "eventbroker.consumer"
    }
    terminal, retry, failed = by_handler["hopeless"], by_handler["later"], by_handler["broken"]
    assert (terminal.levelno, terminal.exc_info) == (logging.INFO, None)
    assert terminal.getMessage().endswith("dead-lettered: never")
    assert (retry.levelno, retry.exc_info) == (logging.INFO, None)
    assert "retry in 30 s" in retry.getMessage()
    assert failed.levelno == logging.WARNING and failed.exc_info is not None


def test_registering_a_bad_model_or_pattern_fails_at_once() -> None:
    consumer = Consumer("billing", target="127.0.0.1:9")
    with pytest.raises(TypeError, match="model"):
        consumer.on("order.new", model=dict)
    with pytest.raises(ValueError, match="pattern"):
        consumer.on("orders.>.new")(print)


class RecordingClient:
    """Stands in for AsyncClient in the settler: records each Ack and Nack call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], bool, str]] = []
        self.delays: list[timedelta | None] = []
        self.called = asyncio.Event()

    async def ack(self, ack_ids: list[str]) -> AckResult:
        self.calls.append(("ack", list(ack_ids), False, ""))
        self.called.set()
        return AckResult()

    async def nack(
        self, ack_ids: list[str], *, terminal: bool, error: str, delay: timedelta | None = None
    ) -> AckResult:
        self.calls.append(("nack", list(ack_ids), terminal, error))
        self.delays.append(delay)
        self.called.set()
        return AckResult(not_applied=tuple(ack_ids[:1]))


def test_settler_sends_many_acks_in_one_call_and_groups_nacks() -> None:
    async def main() -> list[tuple[str, list[str], bool, str]]:
        recorder = RecordingClient()
        settler = Settler(cast(AsyncClient, recorder), flush_interval_s=0.005, max_pending=100)
        flushing = asyncio.create_task(settler.run())
        for index in range(250):
            settler.ack(f"a{index}")
        await asyncio.wait_for(recorder.called.wait(), WAIT_S)
        settler.nack("n1", error="E1", terminal=False)
        settler.nack("n2", error="E1", terminal=False)
        settler.nack("n3", error="E2", terminal=False)
        settler.nack("n4", error="E1", terminal=True)
        await settler.flush()
        flushing.cancel()
        return recorder.calls

    calls = asyncio.run(main())
    (kind, ids, _, _), *nacks = calls
    assert kind == "ack" and ids == [f"a{index}" for index in range(250)]
    assert sorted(nacks) == [
        ("nack", ["n1", "n2"], False, "E1"),
        ("nack", ["n3"], False, "E2"),
        ("nack", ["n4"], True, "E1"),
    ]


# -- lease renewal -------------------------------------------------------------


class RecordingExtender:
    """Stands in for `AsyncClient.extend_ack_deadline`: records calls, loses or fails on cue."""

    def __init__(self, *, lose: tuple[str, ...] = (), failures: int = 0) -> None:
        self.calls: list[tuple[list[str], timedelta]] = []
        self.lose = lose
        self.failures = failures
        self.called = asyncio.Condition()

    async def __call__(self, ack_ids: list[str], extension: timedelta) -> AckResult:
        async with self.called:
            self.calls.append((list(ack_ids), extension))
            self.called.notify_all()
        if self.failures:
            self.failures -= 1
            raise Unavailable(grpc.StatusCode.UNAVAILABLE, "broker restarting")
        return AckResult(tuple(ack_id for ack_id in ack_ids if ack_id in self.lose))

    async def wait_calls(self, count: int) -> None:
        async with self.called:
            await asyncio.wait_for(self.called.wait_for(lambda: len(self.calls) >= count), WAIT_S)


def leased(ack_id: str, seconds: float) -> Message:
    return message(ack_id=ack_id, ack_deadline=datetime.now(UTC) + timedelta(seconds=seconds))


def test_leases_coming_due_together_are_renewed_in_one_call_by_their_length() -> None:
    async def main() -> RecordingExtender:
        extender = RecordingExtender()
        leaser = Leaser(extender)
        renewing = asyncio.create_task(leaser.run())
        for index in range(3):
            leaser.hold(leased(f"a{index}", 1.0))
        leaser.hold(leased("long", 600.0))
        await extender.wait_calls(2)
        renewing.cancel()
        return extender

    calls = asyncio.run(main()).calls
    # The three 1 s leases come due within the same 10 %: one call, then the next round.
    assert calls[0] == (["a0", "a1", "a2"], timedelta(seconds=1))
    assert calls[1] == (["a0", "a1", "a2"], timedelta(seconds=1))
    assert all("long" not in ids for ids, _ in calls)


def test_a_released_or_lost_lease_is_no_longer_renewed() -> None:
    async def main() -> tuple[RecordingExtender, int]:
        extender = RecordingExtender(lose=("lost",))
        leaser = Leaser(extender)
        renewing = asyncio.create_task(leaser.run())
        leaser.hold(leased("lost", 1.0))
        leaser.hold(leased("kept", 1.0))
        leaser.hold(leased("done", 1.0))
        leaser.release("done")
        await extender.wait_calls(2)
        renewing.cancel()
        return extender, len(leaser)

    extender, held = asyncio.run(main())
    assert extender.calls[0][0] == ["lost", "kept"]
    assert extender.calls[1][0] == ["kept"]
    assert held == 1


def test_a_failed_renewal_is_retried_after_a_pause_not_at_once() -> None:
    async def main() -> tuple[RecordingExtender, list[float]]:
        extender = RecordingExtender(failures=1)
        leaser = Leaser(extender)
        renewing = asyncio.create_task(leaser.run())
        leaser.hold(leased("a", 2.0))
        await extender.wait_calls(1)
        first = asyncio.get_running_loop().time()
        await extender.wait_calls(2)
        second = asyncio.get_running_loop().time()
        renewing.cancel()
        return extender, [first, second]

    extender, (first, second) = asyncio.run(main())
    assert [ids for ids, _ in extender.calls] == [["a"], ["a"]]
    assert second - first >= 0.15, "a failing broker must not be called in a tight loop"


def test_extend_through_the_leaser_sets_the_length_of_later_renewals() -> None:
    async def main() -> tuple[RecordingExtender, AckResult]:
        extender = RecordingExtender()
        leaser = Leaser(extender)
        renewing = asyncio.create_task(leaser.run())
        leaser.hold(leased("a", 600.0))
        result = await leaser.extend("a", timedelta(seconds=1))
        await extender.wait_calls(2)
        renewing.cancel()
        return extender, result

    extender, result = asyncio.run(main())
    assert result == AckResult()
    assert extender.calls == [(["a"], timedelta(seconds=1))] * 2
