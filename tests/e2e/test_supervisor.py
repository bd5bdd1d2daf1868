"""`broker serve --processes N`: several broker processes on one port and one database."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventbroker import Client

START_TIMEOUT_S = 30.0
#: A worker's grace period (the default 10 s) and then some.
STOP_TIMEOUT_S = 20.0
_LISTENING_RE = re.compile(r"pid=(\d+) logger=broker\.app [^\n]*?msg='broker listening")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Supervised:
    """`broker serve --processes N` in a child process, with its log."""

    def __init__(self, database_url: str, processes: int, log: Path) -> None:
        self.port = free_port()
        self.http_port = free_port()  # shared by the workers, as the gRPC port is
        self.log = log
        self.output = log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from broker.cli import main; main()",
                "serve",
                "--processes",
                str(processes),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--http-listen",
                f"127.0.0.1:{self.http_port}",
                "--database-url",
                database_url,
            ],
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def wait_for_workers(self, count: int) -> list[int]:
        """Pids of the workers listening, once `count` have said so."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            pids = [int(pid) for pid in _LISTENING_RE.findall(self.text())]
            if len(pids) >= count:
                return pids
            assert self.proc.poll() is None, f"supervisor exited early:\n{self.text()}"
            time.sleep(0.05)
        raise AssertionError(f"{count} workers did not start in time:\n{self.text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.output.close()
        return self.proc.returncode


@pytest.fixture
def supervised(postgres_url: str, tmp_path: Path) -> Iterator[Supervised]:
    running = Supervised(postgres_url, 2, tmp_path / "broker.log")
    try:
        yield running
    finally:
        running.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def port_free(port: int) -> bool:
    """Nothing listens on the port: it can be bound and listened on without SO_REUSEPORT."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
    return True


def test_two_processes_share_the_port_and_stop_together(supervised: Supervised) -> None:
    pids = supervised.wait_for_workers(2)
    assert len(set(pids)) == 2
    with Client(supervised.target) as admin:
        admin.create_subscription("billing", "order.*")
    published = set()
    for n in range(20):  # a new connection each time: the kernel spreads them
        with Client(supervised.target) as client:
            published.add(client.publish("order.new", {"n": n}).event_id)
    received: set[str] = set()
    with Client(supervised.target) as consumer:
        for batch in consumer.subscribe("billing", max_outstanding=50):
            received.update(m.event_id for m in batch)
            consumer.ack(batch)
            if received >= published:
                break
    assert received == published
    assert supervised.stop() == 0
    log = supervised.text()
    assert log.count("broker stopped") == 2, log
    assert not any(alive(pid) for pid in pids)


def test_a_worker_that_dies_is_restarted(supervised: Supervised) -> None:
    first, second = supervised.wait_for_workers(2)
    os.kill(first, signal.SIGKILL)
    pids = supervised.wait_for_workers(3)
    assert pids[2] not in (first, second)
    assert "restarting" in supervised.text()
    with Client(supervised.target) as client:
        assert client.publish("order.new", {"after": "restart"}).event_id


def test_several_processes_need_postgresql(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from broker.cli import main; main()",
            "serve",
            "--processes",
            "2",
            "--database-url",
            str(tmp_path / "broker.db"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "several broker processes need PostgreSQL" in result.stderr


def test_workers_die_with_a_killed_supervisor(supervised: Supervised) -> None:
    pids = supervised.wait_for_workers(2)
    supervised.proc.kill()  # SIGKILL: the supervisor passes nothing on
    supervised.proc.wait(10)
    try:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(running(pid) for pid in pids), f"orphans left:\n{supervised.text()}"
        assert port_free(supervised.port)
    finally:
        for pid in pids:  # leave no orphan behind when the test fails
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_refused_configuration_ends_the_supervisor_without_restarts(
    postgres_url: str, tmp_path: Path
) -> None:
    """Without API keys a public address is refused: by every worker, so by the supervisor."""
    port = free_port()
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from broker.cli import main; main()",
            "serve",
            "--processes",
            "2",
            "--listen",
            f"0.0.0.0:{port}",  # refused before anything binds it
            "--http-listen",
            "",
            "--database-url",
            postgres_url,
        ],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < START_TIMEOUT_S
    assert "beyond loopback the broker needs API keys" in result.stderr
    assert "restarting" not in result.stderr
    assert "broker listening" not in result.stderr


def test_one_scrape_counts_the_publishes_of_every_process(supervised: Supervised) -> None:
    supervised.wait_for_workers(2)
    publishes = 40
    for n in range(publishes):  # a new connection each: the kernel spreads them over both
        with Client(supervised.target) as client:
            client.publish("order.new", {"n": n})
    for _ in range(10):  # each scrape a new connection, so it may reach either process
        with urllib.request.urlopen(
            f"http://127.0.0.1:{supervised.http_port}/metrics", timeout=10
        ) as response:
            text = response.read().decode()
        assert f"eventbroker_events_published_total {publishes}.0" in text, text
        assert f"eventbroker_stored_events {publishes}.0" in text
