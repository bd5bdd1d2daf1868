"""How the Python client's errors read, and what a retried publish that gives up says.

A mistake reads as one line with the reason and the bad value, under a short
traceback; a publish that runs out of time reports the broker's own last reason.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from broker.errors import storage_full
from eventbroker import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from eventbroker.v1 import broker_pb2 as pb

#: Longest traceback a mistake in a script may print, with its one-line reason.
TRACEBACK_MAX_LINES = 15
#: Frames of the libraries under the client, which say nothing about the caller's mistake.
LIBRARY_FRAMES = ("tenacity", "grpc/_channel", "concurrent/futures", "grpc/aio")
SERVICE = "eventbroker.v1.EventBrokerService"
NAME_RULE = "must be 1 to 255 characters of letters, digits and . _ - / :"


def run_script(code: str, target: str) -> list[str]:
    """Run a script that fails; return the lines it printed on stderr."""
    done = subprocess.run(
        [sys.executable, "-c", code, target],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stderr.splitlines()


def assert_short(lines: list[str], last: str, max_lines: int = TRACEBACK_MAX_LINES) -> None:
    """A traceback of at most `max_lines`, no library frames, ending in `last`."""
    text = "\n".join(lines)
    assert lines[-1] == last, text
    assert len(lines) <= max_lines, f"{len(lines)} lines:\n{text}"
    assert "During handling" not in text and "direct cause" not in text, text
    for frame in LIBRARY_FRAMES:
        assert frame not in text, text


def test_a_bad_name_reads_as_one_line_with_the_value_and_a_short_traceback(
    broker_target: str,
) -> None:
    code = (
        "import sys\n"
        "from eventbroker import Client\n"
        "with Client(sys.argv[1]) as client:\n"
        "    client.publish('User Joined!', {'plan': 'pro'})\n"
    )
    lines = run_script(code, broker_target)
    assert_short(
        lines,
        "eventbroker.errors.InvalidArgument: "
        f"INVALID_ARGUMENT: event.name 'User Joined!': {NAME_RULE}",
    )


def test_a_missing_subscription_reads_as_one_line_with_its_reason(broker_target: str) -> None:
    code = (
        "import sys\n"
        "from eventbroker import Client\n"
        "with Client(sys.argv[1]) as client:\n"
        "    client.get_subscription('nope')\n"
    )
    lines = run_script(code, broker_target)
    assert_short(
        lines,
        "eventbroker.errors.NotFound: "
        "NOT_FOUND: subscription 'nope' does not exist [SUBSCRIPTION_NOT_FOUND]",
    )


def test_the_asyncio_client_raises_the_same_line_without_library_frames(
    broker_target: str,
) -> None:
    code = (
        "import asyncio, sys\n"
        "from eventbroker import AsyncClient\n"
        "async def main():\n"
        "    async with AsyncClient(sys.argv[1]) as client:\n"
        "        await client.publish('User Joined!')\n"
        "asyncio.run(main())\n"
    )
    lines = run_script(code, broker_target)
    # asyncio.run adds its own frames (runners, base_events) above the caller's.
    assert_short(
        lines,
        "eventbroker.errors.InvalidArgument: "
        f"INVALID_ARGUMENT: event.name 'User Joined!': {NAME_RULE}",
        max_lines=TRACEBACK_MAX_LINES + 12,
    )


def test_the_error_keeps_everything_the_grpc_error_held(broker_target: str) -> None:
    with Client(broker_target) as client, pytest.raises(InvalidArgument) as caught:
        client.publish_batch([{"name": "ok.one"}, {"name": "Not OK!"}])
    error = caught.value
    assert error.__cause__ is None and error.__suppress_context__
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    assert error.field_violations == [("events[1].name", NAME_RULE)]
    assert error.field_values == {"events[1].name": "Not OK!"}
    assert error.message == f"events[1].name: {NAME_RULE}"  # the broker's words, as sent
    info = error_details_pb2.ErrorInfo()
    assert error.details[0].Unpack(info) and info.reason == "INVALID_ARGUMENT"
    assert str(error) == f"INVALID_ARGUMENT: events[1].name 'Not OK!': {NAME_RULE}"
    assert str(error).count("INVALID_ARGUMENT") == 1


# -- a retried publish that gives up -----------------------------------------------


class FullThenSilent:
    """A broker that answers the first publish STORAGE_FULL, then never answers in time.

    It is what a loaded broker with a full disk looks like to a client with a short
    timeout: the last attempt is cut short by the deadline.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()

    def publish(self, request: pb.PublishRequest, context: grpc.ServicerContext) -> Any:
        self.calls += 1
        if self.calls == 1:
            context.abort_with_status(rpc_status.to_status(storage_full().to_status_proto()))
        self.release.wait(10)
        context.abort(grpc.StatusCode.CANCELLED, "too late")


@pytest.fixture
def full_then_silent() -> Iterator[tuple[str, FullThenSilent]]:
    fake = FullThenSilent()
    handler = grpc.unary_unary_rpc_method_handler(
        fake.publish,
        request_deserializer=pb.PublishRequest.FromString,
        response_serializer=pb.PublishResponse.SerializeToString,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Publish": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", fake
    finally:
        fake.release.set()
        server.stop(None)


def assert_brokers_reason(error: Unavailable) -> None:
    assert (error.reason, error.message) == ("STORAGE_FULL", storage_full().message)
    assert error.attempts >= 2
    assert any("DEADLINE_EXCEEDED" in note for note in getattr(error, "__notes__", [])), error
    assert str(error).startswith("UNAVAILABLE: the broker's storage is full")
    assert error.__traceback__ is not None
    assert "tenacity" not in repr(error.__traceback__.tb_frame.f_code)


def test_a_publish_that_gives_up_reports_the_brokers_last_reason(
    full_then_silent: tuple[str, FullThenSilent],
) -> None:
    target, servicer = full_then_silent
    with Client(target) as client, pytest.raises(Unavailable) as caught:
        client.publish("order.new", {"n": 1}, timeout=1.0)
    assert servicer.calls >= 2
    assert_brokers_reason(caught.value)


def test_the_asyncio_publish_reports_the_brokers_last_reason_too(
    full_then_silent: tuple[str, FullThenSilent],
) -> None:
    target, _ = full_then_silent

    async def publish() -> None:
        async with AsyncClient(target) as client:
            await client.publish("order.new", {"n": 1}, timeout=1.0)

    with pytest.raises(Unavailable) as caught:
        asyncio.run(publish())
    assert_brokers_reason(caught.value)


def test_a_broker_that_never_answers_is_still_deadline_exceeded(
    full_then_silent: tuple[str, FullThenSilent],
) -> None:
    target, servicer = full_then_silent
    servicer.calls = 1  # every call is a silent one
    with Client(target) as client, pytest.raises(DeadlineExceeded) as caught:
        client.publish("order.new", timeout=0.5)
    assert caught.value.reason is None


def test_an_error_without_a_request_value_is_the_brokers_message(broker_target: str) -> None:
    with Client(broker_target) as client, pytest.raises(NotFound) as caught:
        client.delete_subscription("gone")
    assert caught.value.field_values == {}
    assert str(caught.value) == (
        "NOT_FOUND: subscription 'gone' does not exist [SUBSCRIPTION_NOT_FOUND]"
    )
