"""A `Consumer` in a child process (one a test can put in a network namespace), and its proxy.

`python -m tests.e2e.remote_consumer INDEX TARGET LOG` runs a `Consumer` of the
fault tests against the broker at TARGET and writes what its delivery log
records (receipts, holds, answered acks), and whether its stream ended, to LOG
as JSON lines, flushed as they happen. SIGTERM makes it leave as `Consumer.stop`
does. `RemoteConsumer` starts it and feeds those lines into the test's own
`DeliveryLog` as they arrive, so the checker sees its deliveries like any other
consumer's.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from eventbroker.v1 import broker_pb2 as pb
from tests.e2e.checker import QueueChecker
from tests.e2e.faults import POLL_S, AckRecord, Consumer, DeliveryLog, Hold

STOP_TIMEOUT_S = 20.0
#: Longest a child consumer runs: a test that forgets it does not leave it behind for long.
LIFETIME_MAX_S = 600.0
_REPO = Path(__file__).resolve().parents[2]


class _LineLog(DeliveryLog):
    """A delivery log that also writes each record to a file as a JSON line."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(QueueChecker())
        self._out = out
        self._write_lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        with self._write_lock:
            self._out.write(json.dumps(record) + "\n")
            self._out.flush()

    def received(self, consumer: int, deliveries: list[pb.Delivery]) -> None:
        if deliveries:
            self.write(
                {"received": [[d.dedup_id, d.attempt] for d in deliveries], "consumer": consumer}
            )

    def ended(self, holds: list[Hold]) -> None:
        if holds:
            self.write({"ended": [dataclasses.astuple(h) for h in holds]})

    def acked(self, records: list[AckRecord]) -> None:
        if records:
            self.write({"acked": [dataclasses.astuple(r) for r in records]})


def main() -> None:
    """Consume until SIGTERM (or LIFETIME_MAX_S), logging to the file named."""
    index, target, path = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with path.open("a") as out:
        log = _LineLog(out)
        consumer = Consumer(index, target, log)
        log.write({"started": True})
        deadline = time.monotonic() + LIFETIME_MAX_S
        ended_reported = False
        while not stop.wait(POLL_S) and time.monotonic() < deadline:
            if consumer.reader.ended.is_set() and not ended_reported:
                log.write({"stream_ended": str(consumer.reader.error)})
                ended_reported = True
        consumer.stop()
        log.write({"stopped": True, "failed_acks": consumer.failed_acks})


class RemoteConsumer:
    """A consumer in a child process, run under `prefix`, feeding the test's delivery log."""

    def __init__(
        self, index: int, target: str, log: DeliveryLog, path: Path, prefix: Sequence[str] = ()
    ) -> None:
        self.index = index
        self.log = log
        self.path = path
        self.received = 0
        self.stream_error: str | None = None
        self.stopped = threading.Event()
        self._started = threading.Event()
        self._offset = 0
        self._partial = ""
        self._done = threading.Event()
        path.touch()
        self._stderr = path.with_suffix(".stderr").open("wb")
        self.proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "tests.e2e.remote_consumer",
                str(index),
                target,
                str(path),
            ],
            stdout=self._stderr,
            stderr=subprocess.STDOUT,
            cwd=_REPO,
        )
        self._thread = threading.Thread(target=self._tail, name=f"remote-{index}", daemon=True)
        self._thread.start()
        if not self._started.wait(STOP_TIMEOUT_S):
            self.stop()
            raise AssertionError(f"remote consumer {index} did not start: {self.output()}")

    def output(self) -> str:
        """What the child printed (tracebacks, if any)."""
        return path_text(self.path.with_suffix(".stderr"))

    def _tail(self) -> None:
        while not self._done.is_set():
            self._read_new()
            self._done.wait(POLL_S)
        self._read_new()

    def _read_new(self) -> None:
        with self.path.open() as source:
            source.seek(self._offset)
            text = source.read()
            self._offset = source.tell()
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line:
                self._apply(json.loads(line))

    def _apply(self, record: dict[str, Any]) -> None:
        if "received" in record:
            deliveries = [pb.Delivery(dedup_id=i, attempt=a) for i, a in record["received"]]
            self.received += len(deliveries)
            self.log.received(record["consumer"], deliveries)
        elif "ended" in record:
            self.log.ended([Hold(*fields) for fields in record["ended"]])
        elif "acked" in record:
            self.log.acked([AckRecord(*fields) for fields in record["acked"]])
        elif "stream_ended" in record:
            self.stream_error = record["stream_ended"]
        elif "started" in record:
            self._started.set()
        elif "stopped" in record:
            self.stopped.set()

    def stop(self) -> None:
        """SIGTERM: the child leaves (its unacked leases end at their deadline); read the rest."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._done.set()
        self._thread.join(STOP_TIMEOUT_S)
        self._stderr.close()


def path_text(path: Path) -> str:
    """A file's text, or "" if it is not there."""
    return path.read_text(errors="replace") if path.exists() else ""


if __name__ == "__main__":
    main()
