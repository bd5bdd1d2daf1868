"""The `broker` command line against a real broker."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from broker.cli import app
from eventbroker import Client


@pytest.fixture
def cli(broker_target: str) -> CliRunner:
    return CliRunner(env={"EVENTBROKER_TARGET": broker_target, "COLUMNS": "200"})


def test_publish_prints_the_id_and_dedups(cli: CliRunner, broker_target: str) -> None:
    first = cli.invoke(app, ["publish", "User.Joined", '{"plan":"pro"}', "--id", "a1", "-H", "k=v"])
    assert first.exit_code == 0, first.output
    status, event_id = first.output.split()
    assert status == "created"
    again = cli.invoke(app, ["publish", "user.joined", "--id", "a1"])
    assert again.output.split() == ["duplicate", event_id]
    with Client(broker_target) as client:
        info = client.get_event(event_id)
    assert info.name == "user.joined" and info.data == {"plan": "pro"}
    assert info.headers == {"k": "v"}


def test_bad_input_is_one_line_and_exit_1(cli: CliRunner) -> None:
    result = cli.invoke(app, ["publish", "bad name"])
    assert result.exit_code == 1
    assert "INVALID_ARGUMENT" in result.output and "event.name" in result.output
    assert "Traceback" not in result.output
    not_json = cli.invoke(app, ["publish", "a", "{oops"])
    assert not_json.exit_code == 1 and "not JSON" in not_json.output


def test_subscriptions_create_list_get_update_delete(cli: CliRunner) -> None:
    created = cli.invoke(
        app,
        [
            "subs",
            "create",
            "mails",
            "-f",
            "user.*",
            "--max-in-flight",
            "6",
            "--ack-deadline",
            "45s",
        ],
    )
    assert created.exit_code == 0, created.output
    assert "mails" in created.output and "45s" in created.output
    listed = cli.invoke(app, ["subs", "list"])
    assert "mails" in listed.output and "user.*" in listed.output
    updated = cli.invoke(app, ["subs", "update", "mails", "--max-attempts", "3"])
    assert updated.exit_code == 0 and " 3 " in updated.output
    shown = cli.invoke(app, ["subs", "get", "mails"])
    assert "1s .. 10m" in shown.output and "7d" in shown.output
    missing = cli.invoke(app, ["subs", "get", "nope"])
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output
    deleted = cli.invoke(app, ["subs", "delete", "mails"])
    assert deleted.exit_code == 0
    assert "mails" not in cli.invoke(app, ["subs", "list"]).output


def test_stats_and_event_show(cli: CliRunner) -> None:
    cli.invoke(app, ["subs", "create", "work", "-f", "job.>"])
    event_id = cli.invoke(app, ["publish", "job.run"]).output.split()[1]
    stats = cli.invoke(app, ["stats"])
    assert stats.exit_code == 0
    row = next(line for line in stats.output.splitlines() if "work" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells[:6] == ["work", "0", "1", "0", "0", "0"]  # one ready
    assert "1 events stored" in stats.output
    shown = cli.invoke(app, ["events", "show", event_id])
    assert "job.run" in shown.output and "waiting for a consumer" in shown.output


def test_tail_prints_new_events(broker_target: str) -> None:
    tail = subprocess.Popen(
        [sys.executable, "-m", "broker", "tail", "orders.>", "--target", broker_target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with Client(broker_target) as client:
            # The tail attaches asynchronously: publish until it prints one (bounded).
            deadline = time.monotonic() + 20
            seen = ""
            published: list[str] = []
            while time.monotonic() < deadline and not any(e in seen for e in published):
                published.append(client.publish("orders.created", {"n": 1}).event_id)
                time.sleep(0.2)
                seen += _read_available(tail)
            assert any(event_id in seen for event_id in published)
            assert "orders.created" in seen and '{"n":1}' in seen
    finally:
        tail.terminate()
        tail.communicate(timeout=10)


def _read_available(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    chunks = []
    fd = process.stdout.fileno()
    while select.select([fd], [], [], 0)[0]:
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data.decode())
    return "".join(chunks)


def test_stats_watch_refreshes_until_interrupted(broker_target: str) -> None:
    import signal
    import subprocess
    import sys
    import threading

    with Client(broker_target) as client:
        client.create_subscription("watched", "w.*")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from broker.cli import main; main()", "stats", "--watch", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "EVENTBROKER_TARGET": broker_target,
            "COLUMNS": "200",
            "TTY_INTERACTIVE": "1",
            "TTY_COMPATIBLE": "1",
        },
    )
    seen: list[str] = []
    refreshed = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "watched" in line and line.split("│")[3].strip() == "2":  # ready column
                refreshed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        with Client(broker_target) as client:
            client.publish_batch([{"name": "w.x"}] * 2)
        assert refreshed.wait(15), "".join(seen[-20:])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
