"""Two storage models for the delivery core, measured on SQLite through the driver.

The row-per-delivery model (what the broker stores): an event row, and one
delivery row per matching subscription, which a lease and an ack each update.
The log-plus-cursor model (JetStream's, Kafka's): an event row appended once;
per subscription a cursor moved by a lease, and a row only for the exceptional
delivery (here: none fail). Both run the same life on the same 1 KiB events:
publish in transactions of 100, lease 100 at a time for each subscription,
ack them, each step one durable commit (WAL, synchronous=FULL), and print the
CPU time per event of each step, for one subscription and for ten.

    .venv/bin/python -m tests.bench.storage_models [--events 10000]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PAYLOAD = b'{"pad":"' + b"x" * 1000 + b'"}'
BATCH = 100

ROW_SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY, name TEXT, payload BLOB, published_at INTEGER);
CREATE TABLE deliveries (id INTEGER PRIMARY KEY, subscription_id INTEGER, event_id INTEGER,
    state INTEGER, rank INTEGER, attempt INTEGER, lease_expires_at INTEGER, updated_at INTEGER);
CREATE INDEX ready ON deliveries (subscription_id, rank, id) WHERE state = 2;
CREATE INDEX in_flight ON deliveries (lease_expires_at) WHERE state = 3;
CREATE INDEX by_state ON deliveries (subscription_id, state);
"""
LOG_SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY, name TEXT, payload BLOB, published_at INTEGER);
CREATE TABLE cursors (subscription_id INTEGER PRIMARY KEY, delivered INTEGER, acked INTEGER);
"""


def _connect(path: Path, schema: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(schema)
    return conn


def _tx(conn: sqlite3.Connection, work: Callable[[sqlite3.Cursor], object]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    work(conn.cursor())
    conn.execute("COMMIT")


def row_model(path: Path, events: int, subscriptions: int) -> dict[str, float]:
    """CPU seconds of publish, lease and ack in the row-per-delivery model."""
    conn = _connect(path, ROW_SCHEMA)
    spent = {"publish": 0.0, "lease": 0.0, "ack": 0.0}
    next_id = 1
    for _ in range(events // BATCH):
        ids = range(next_id, next_id + BATCH)
        next_id += BATCH
        began = time.process_time()

        def publish(c: sqlite3.Cursor, ids: range = ids) -> None:
            c.executemany(
                "INSERT INTO events VALUES (?, 'bench', ?, 0)", [(i, PAYLOAD) for i in ids]
            )
            c.executemany(
                "INSERT INTO deliveries (subscription_id, event_id, state, rank, attempt,"
                " updated_at) VALUES (?, ?, 2, 0, 0, 0)",
                [(s, i) for i in ids for s in range(subscriptions)],
            )

        _tx(conn, publish)
        spent["publish"] += time.process_time() - began
        for sub in range(subscriptions):
            leased: list[int] = []
            began = time.process_time()

            def lease(c: sqlite3.Cursor, sub: int = sub, leased: list[int] = leased) -> None:
                rows = c.execute(
                    "UPDATE deliveries SET state = 3, attempt = attempt + 1,"
                    " lease_expires_at = 1, updated_at = 1 WHERE id IN (SELECT id FROM"
                    " deliveries WHERE subscription_id = ? AND state = 2 ORDER BY rank, id"
                    " LIMIT ?) RETURNING id, event_id",
                    (sub, BATCH),
                ).fetchall()
                wanted = ",".join(str(r[1]) for r in rows)
                c.execute(f"SELECT id, payload FROM events WHERE id IN ({wanted})").fetchall()
                leased.extend(r[0] for r in rows)

            _tx(conn, lease)
            spent["lease"] += time.process_time() - began
            began = time.process_time()
            marks = ",".join("?" * len(leased))

            def ack(c: sqlite3.Cursor, marks: str = marks, leased: list[int] = leased) -> None:
                c.execute(
                    f"UPDATE deliveries SET state = 4, updated_at = 2 WHERE state = 3"
                    f" AND id IN ({marks})",
                    leased,
                )

            _tx(conn, ack)
            spent["ack"] += time.process_time() - began
    conn.close()
    return spent


def log_model(path: Path, events: int, subscriptions: int) -> dict[str, float]:
    """CPU seconds of publish, lease and ack in the log-plus-cursor model."""
    conn = _connect(path, LOG_SCHEMA)
    conn.executemany("INSERT INTO cursors VALUES (?, 0, 0)", [(s,) for s in range(subscriptions)])
    spent = {"publish": 0.0, "lease": 0.0, "ack": 0.0}
    next_id = 1
    for _ in range(events // BATCH):
        ids = range(next_id, next_id + BATCH)
        next_id += BATCH
        began = time.process_time()

        def publish(c: sqlite3.Cursor, ids: range = ids) -> None:
            c.executemany(
                "INSERT INTO events VALUES (?, 'bench', ?, 0)", [(i, PAYLOAD) for i in ids]
            )

        _tx(conn, publish)
        spent["publish"] += time.process_time() - began
        for sub in range(subscriptions):
            began = time.process_time()

            def lease(c: sqlite3.Cursor, sub: int = sub) -> None:
                (delivered,) = c.execute(
                    "SELECT delivered FROM cursors WHERE subscription_id = ?", (sub,)
                ).fetchone()
                rows = c.execute(
                    "SELECT id, payload FROM events WHERE id > ? ORDER BY id LIMIT ?",
                    (delivered, BATCH),
                ).fetchall()
                c.execute(
                    "UPDATE cursors SET delivered = ? WHERE subscription_id = ?",
                    (rows[-1][0], sub),
                )

            _tx(conn, lease)
            spent["lease"] += time.process_time() - began
            began = time.process_time()

            def ack(c: sqlite3.Cursor, sub: int = sub) -> None:
                c.execute("UPDATE cursors SET acked = delivered WHERE subscription_id = ?", (sub,))

            _tx(conn, ack)
            spent["ack"] += time.process_time() - began
    conn.close()
    return spent


def main() -> None:
    """Run both models for one and ten subscriptions and print microseconds per event."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    events = parser.parse_args().events
    print(f"{events:,} events of 1 KiB, SQLite WAL synchronous=FULL, {BATCH} per transaction")
    print(f"{'model':22}{'subs':>5}{'publish':>10}{'lease':>10}{'ack':>10}{'total':>10}  us/event")
    with tempfile.TemporaryDirectory() as directory:
        for subscriptions in (1, 10):
            for label, model in (("row per delivery", row_model), ("log plus cursor", log_model)):
                path = Path(directory) / f"{label[:3]}-{subscriptions}.db"
                spent = model(path, events, subscriptions)
                cells = [spent[k] * 1e6 / events for k in ("publish", "lease", "ack")]
                print(
                    f"{label:22}{subscriptions:>5}"
                    + "".join(f"{c:>10.1f}" for c in cells)
                    + f"{sum(cells):>10.1f}"
                )


if __name__ == "__main__":
    main()
