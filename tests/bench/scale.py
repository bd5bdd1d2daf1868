"""One broker process against two on one PostgreSQL database: publish and end to end.

Runs `broker serve --processes N` (N = 1, then 2) on a fresh database each
time and drives it from this process over eight channels, each with its own
connection, so the kernel spreads them over the processes sharing the port.
Workloads and bounds are those of `tests.bench.quick`. Prints one line per
run and the two-to-one ratios.

    .venv/bin/python -m tests.bench.scale [--events 20000] [--server-url URL]

The server URL is an administrative connection (default: the local server as
`postgres`); a database is created and dropped around each run.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path

import grpc
import sqlalchemy as sa

from eventbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.bench.quick import batched_publish, end_to_end
from tests.e2e.test_supervisor import Supervised

DEFAULT_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CHANNELS = 8


def _measure(database_url: str, processes: int, events: int, log: Path) -> tuple[float, float]:
    broker = Supervised(database_url, processes, log)
    try:
        broker.wait_for_workers(processes)
        channels = [
            grpc.insecure_channel(broker.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CHANNELS)
        ]
        stubs = [pb_grpc.EventBrokerServiceStub(channel) for channel in channels]
        try:
            published = batched_publish(stubs, events, CHANNELS)
            delivered = end_to_end(stubs, events, 4)
        finally:
            for channel in channels:
                channel.close()
    finally:
        broker.stop()
    return published, delivered


def main() -> None:
    """Parse arguments, run one and two processes, print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--server-url", default=DEFAULT_SERVER_URL)
    args = parser.parse_args()
    admin = sa.create_engine(args.server_url, isolation_level="AUTOCOMMIT")
    results: dict[int, tuple[float, float]] = {}
    print("brokers on PostgreSQL (synchronous_commit=on), 1 KiB JSON events")
    with tempfile.TemporaryDirectory() as directory:
        for processes in (1, 2):
            name = f"broker_bench_{uuid.uuid4().hex[:8]}"
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            url = sa.make_url(args.server_url).set(database=name)
            try:
                results[processes] = _measure(
                    url.render_as_string(hide_password=False),
                    processes,
                    args.events,
                    Path(directory) / f"broker-{processes}.log",
                )
            finally:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            published, delivered = results[processes]
            print(
                f"{processes} process{'es' if processes > 1 else '  '}  "
                f"batched publish {published:>9,.0f} events/s   "
                f"end to end {delivered:>9,.0f} events/s",
                flush=True,
            )
    admin.dispose()
    (p1, e1), (p2, e2) = results[1], results[2]
    print(f"two / one: batched publish x{p2 / p1:.2f}, end to end x{e2 / e1:.2f}")


if __name__ == "__main__":
    main()
