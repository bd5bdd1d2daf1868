"""Side-by-side benchmark: this broker against the systems users would pick instead.

Runs the same workloads, on 1 KiB JSON events, against this broker on SQLite
and on PostgreSQL, NATS JetStream, RabbitMQ and pgqueuer, one system at a
time, on this machine; prints one table (with ratios and the goals the team
tracks) and writes it as JSON. Every workload is bounded in count and in
time. A system whose library is missing or whose server does not answer is
skipped with the reason; this broker is never skipped.

    .venv/bin/python -m tests.bench.run [--quick] [--systems broker-sqlite,nats,...]
        [--workloads idle_streams,...] [--events N] [--json PATH]

The exit status is 1 when a workload of this broker failed, else 0. Speed is
reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from tests.bench.peers.base import (
    Endpoints,
    NotApplicable,
    Peer,
    Plan,
    Progress,
    Unavailable,
    cpu_seconds,
)
from tests.bench.peers.grpc_floor import GrpcFloorPeer
from tests.bench.peers.nats_jetstream import NatsPeer
from tests.bench.peers.pgqueuer_jobs import PgqueuerPeer
from tests.bench.peers.rabbitmq import RabbitPeer
from tests.bench.peers.this_broker import BrokerPostgresPeer, BrokerSqlitePeer
from tests.bench.report import Report, add_derived, add_ratios, evaluate_goals, render

SYSTEMS: dict[str, type[Peer]] = {
    peer.key: peer
    for peer in (
        BrokerSqlitePeer,
        BrokerPostgresPeer,
        GrpcFloorPeer,
        NatsPeer,
        RabbitPeer,
        PgqueuerPeer,
    )
}
OURS = ("broker-sqlite", "broker-pg")
WORKLOADS = [
    ("batched_publish", "batched publish"),
    ("single_publish", "single publish"),
    ("client_publish", "publish through the Python client"),
    ("end_to_end", "end to end"),
    ("latency", "latency at a steady rate"),
    ("fan_out", "fan-out"),
    ("many_subscriptions", "100 subscriptions"),
    ("idle_streams", "idle streams"),
    ("scale_out", "two processes against one"),
    ("slow_consumer", "consumers that stop reading"),
]
WORKLOAD_KEYS = tuple(workload for workload, _ in WORKLOADS)
HARD_CAP_GRACE_S = 30.0
#: Workloads made of several capped parts: their hard cap is this many caps.
CAPS_PER_WORKLOAD = {"scale_out": 4, "idle_streams": 2, "slow_consumer": 3, "client_publish": 2}


def _workload(peer: Peer, key: str) -> Callable[[], Awaitable[Any]]:
    method: Callable[[], Awaitable[Any]] = getattr(peer, key)
    return method


async def measure(
    key: str,
    plan: Plan,
    endpoints: Endpoints,
    progress: Progress,
    workloads: Sequence[str] = WORKLOAD_KEYS,
) -> dict[str, Any]:
    """The chosen workloads (all by default) against one system; its part of the report."""
    peer = SYSTEMS[key](plan, progress, endpoints)
    entry: dict[str, Any] = {
        "label": peer.label,
        "durability": "",
        "durability_short": "",
        "status": "ok",
        "reason": None,
        "workloads": {},
    }
    print(f"{peer.label}:", file=sys.stderr, flush=True)
    try:
        await peer.start()
    except Unavailable as error:
        entry.update(status="skipped", reason=str(error))
        print(f"  skipped: {error}", file=sys.stderr, flush=True)
        await peer.stop()
        return entry
    except Exception as error:
        traceback.print_exc()
        entry.update(status="error", reason=f"could not start: {error!r}")
        await peer.stop()
        return entry
    entry.update(durability=peer.durability, durability_short=peer.durability_short)
    try:
        for workload, label in WORKLOADS:
            if workload not in workloads:
                continue
            entry["workloads"][workload] = await _run_one(peer, workload, label, plan, progress)
    finally:
        await peer.stop()
    return entry


async def _run_one(
    peer: Peer, workload: str, label: str, plan: Plan, progress: Progress
) -> dict[str, Any]:
    hard_cap_s = plan.cap_s * CAPS_PER_WORKLOAD.get(workload, 1) + HARD_CAP_GRACE_S
    progress.begin(label)
    began = time.perf_counter()
    pid = peer.server_pid()
    cpu_before = cpu_seconds(pid) if pid else None
    try:
        result = await asyncio.wait_for(_workload(peer, workload)(), hard_cap_s)
    except NotApplicable as error:
        progress.end(f"n/a: {error}")
        return {"status": "n/a", "reason": str(error)}
    except TimeoutError:
        progress.end(f"error: not done within the hard cap of {hard_cap_s:g} s")
        return {"status": "error", "reason": f"not done within the hard cap of {hard_cap_s:g} s"}
    except Exception as error:
        traceback.print_exc()
        progress.end(f"error: {error!r}")
        return {"status": "error", "reason": repr(error)}
    took = time.perf_counter() - began
    cpu_after = cpu_seconds(pid) if pid else None
    events = result.figures.get("events", 0.0)
    if cpu_before is not None and cpu_after is not None and events > 0:
        # The server's own CPU per event: steadier than throughput on a shared machine.
        # A workload of several parts measures it per part itself.
        result.figures.setdefault("cpu_us_per_event", (cpu_after - cpu_before) * 1e6 / events)
    shown = ", ".join(f"{k} {v:,.1f}" for k, v in result.figures.items() if not math.isnan(v))
    progress.end(f"{shown} ({took:.1f} s{', capped' if result.capped else ''})")
    return {
        "status": "ok",
        "figures": result.figures,
        "notes": result.notes,
        "capped": result.capped,
        "seconds": took,
    }


async def run(
    systems: Sequence[str],
    plan: Plan,
    endpoints: Endpoints,
    quick: bool = False,
    workloads: Sequence[str] = WORKLOAD_KEYS,
) -> Report:
    """Measure every system in turn, on the chosen workloads, and build the report."""
    started = time.perf_counter()
    report: Report = {
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "plan": dataclasses.asdict(plan),
        "systems": {},
    }
    progress = Progress()
    for key in systems:
        report["systems"][key] = await measure(key, plan, endpoints, progress, workloads)
    report["duration_s"] = time.perf_counter() - started
    add_derived(report)
    add_ratios(report)
    evaluate_goals(report)
    return report


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def broker_failed(report: Report) -> bool:
    """Whether this broker could not be measured or a workload of it failed."""
    for key in OURS:
        entry = report["systems"].get(key)
        if entry is None:
            continue
        if entry["status"] == "error" or (key == "broker-sqlite" and entry["status"] != "ok"):
            return True
        if any(w["status"] == "error" for w in entry["workloads"].values()):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run, print the table, write the JSON; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred events (seconds)")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, from: {', '.join(SYSTEMS)} (default: all)",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOAD_KEYS),
        help=f"comma-separated, from: {', '.join(WORKLOAD_KEYS)} (default: all)",
    )
    parser.add_argument("--events", type=int, help="events for batched publish and end to end")
    parser.add_argument("--cap-s", type=float, help="time cap of one workload, in seconds")
    parser.add_argument("--json", default="bench-results.json", help="where to write the JSON")
    parser.add_argument("--postgres", default=Endpoints.postgres, help="admin connection URL")
    parser.add_argument("--nats", default=Endpoints.nats)
    parser.add_argument("--amqp", default=Endpoints.amqp)
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := [w for w in workloads if w not in WORKLOAD_KEYS]:
        parser.error(
            f"unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOAD_KEYS)}"
        )
    plan = Plan.quick() if args.quick else Plan()
    if args.events:
        plan = dataclasses.replace(plan, events=args.events, scale_events=args.events)
    if args.cap_s:
        plan = dataclasses.replace(plan, cap_s=args.cap_s)
    with tempfile.TemporaryDirectory(prefix="bench-") as directory:
        endpoints = Endpoints(Path(directory), args.postgres, args.nats, args.amqp)
        report = asyncio.run(run(systems, plan, endpoints, args.quick, workloads))
    Path(args.json).write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    console = Console(width=None if sys.stdout.isatty() else 160)
    render(report, console)
    console.print(f"took {report['duration_s']:.0f} s; JSON in {args.json}")
    return 1 if broker_failed(report) else 0


if __name__ == "__main__":
    sys.exit(main())
