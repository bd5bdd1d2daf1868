"""The side-by-side benchmark runs end to end in its quick mode: a table, a JSON file, figures.

One run of `python -m tests.bench.run --quick` (a few hundred events per
workload) against the broker on SQLite and every peer whose library imports
and whose server answers; a peer that cannot be measured here is skipped with
the harness's reason. Nothing about speed is asserted.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEERS = ["grpc-floor", "nats", "rabbitmq", "pgqueuer"]
BROKER_WORKLOADS = [
    "batched_publish",
    "single_publish",
    "client_publish",
    "end_to_end",
    "latency",
    "fan_out",
    "many_subscriptions",
    "idle_streams",
    "slow_consumer",
]
RUN_TIMEOUT_S = 150

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT_S + 30)]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    command = [sys.executable, "-m", "tests.bench.run", "--quick", "--json", str(path)]
    command += ["--systems", ",".join(["broker-sqlite", *PEERS])]
    server = os.environ.get("BROKER_TEST_DATABASE_URL")
    if server:
        command += ["--postgres", server.replace("postgresql+psycopg://", "postgresql://", 1)]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    report = json.loads(path.read_text()) if path.exists() else {}
    return Run(done.returncode, done.stdout, done.stderr, report)


def test_the_table_and_the_json_are_written(quick_run: Run) -> None:
    assert quick_run.returncode == 0, quick_run.stderr[-4000:]
    assert "Side by side" in quick_run.stdout
    assert "goals" in quick_run.stdout
    assert set(quick_run.report["systems"]) == {"broker-sqlite", *PEERS}
    assert len(quick_run.report["goals"]) >= 10


def test_the_broker_has_a_figure_for_every_workload(quick_run: Run) -> None:
    broker = quick_run.report["systems"]["broker-sqlite"]
    assert broker["status"] == "ok", broker.get("reason")
    assert broker["durability"]
    for workload in BROKER_WORKLOADS:
        entry = broker["workloads"][workload]
        assert entry["status"] == "ok", (workload, entry.get("reason"))
        assert entry["figures"], workload
        for name, value in entry["figures"].items():
            assert value is not None and math.isfinite(value), (workload, name)
            assert value >= 0 or "growth" in name, (workload, name)  # memory may shrink
        if workload not in ("idle_streams", "slow_consumer"):
            assert "cpu_us_per_event" in entry["figures"], workload
    assert broker["workloads"]["scale_out"]["status"] == "n/a"  # PostgreSQL only


@pytest.mark.parametrize("peer", PEERS)
def test_a_peer_is_measured_or_skipped_with_a_reason(quick_run: Run, peer: str) -> None:
    entry = quick_run.report["systems"][peer]
    if entry["status"] == "skipped":
        pytest.skip(f"{peer}: {entry['reason']}")
    assert entry["status"] == "ok", entry.get("reason")
    assert entry["durability"]
    assert {"batched_publish", "end_to_end", "latency"} <= set(entry["workloads"])
