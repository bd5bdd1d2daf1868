"""The side-by-side report: one table, ratios against NATS and pgqueuer, and the goals.

Works on the plain dictionary that `tests.bench.run` also writes as JSON:
`systems[KEY]["workloads"][WORKLOAD]` holds `status` (`ok`, `n/a`, `error`,
`skipped`), `figures`, `notes`, `capped` and `reason`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

SQLITE, PG, NATS, PGQ = "broker-sqlite", "broker-pg", "nats", "pgqueuer"
RABBIT, FLOOR = "rabbitmq", "grpc-floor"

Report = dict[str, Any]


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure of a workload."""

    label: str
    workload: str
    figure: str
    unit: str  # "rate", "ms", "MiB", "us", "x"
    vs_nats: bool = True
    vs_pgqueuer: bool = False
    vs_floor: bool = False


def _cpu(workload: str) -> Row:
    """The server's CPU time per event in a workload (its process time over events)."""
    return Row("  server CPU us/event", workload, "cpu_us_per_event", "us", vs_floor=True)


ROWS = [
    Row(
        "batched publish, 100/call: ev/s",
        "batched_publish",
        "events_per_s",
        "rate",
        vs_pgqueuer=True,
        vs_floor=True,
    ),
    _cpu("batched_publish"),
    Row(
        "single publish, 16 callers: ev/s", "single_publish", "events_per_s", "rate", vs_floor=True
    ),
    Row("  single publish p50 ms", "single_publish", "p50_ms", "ms"),
    Row("  single publish p99 ms", "single_publish", "p99_ms", "ms"),
    _cpu("single_publish"),
    Row("client publish, 64 tasks: ev/s", "client_publish", "events_per_s", "rate", vs_nats=False),
    Row("  client publish p50 ms", "client_publish", "p50_ms", "ms", vs_nats=False),
    Row("  client publish p99 ms", "client_publish", "p99_ms", "ms", vs_nats=False),
    Row("  server CPU us/event", "client_publish", "cpu_us_per_event", "us", vs_nats=False),
    Row(
        "  client CPU us/event",
        "client_publish",
        "client_cpu_us_per_event",
        "us",
        vs_nats=False,
    ),
    Row("  unbatched: ev/s", "client_publish", "off_events_per_s", "rate", vs_nats=False),
    Row("  unbatched p50 ms", "client_publish", "off_p50_ms", "ms", vs_nats=False),
    Row("  unbatched p99 ms", "client_publish", "off_p99_ms", "ms", vs_nats=False),
    Row(
        "  unbatched server CPU us/event",
        "client_publish",
        "off_cpu_us_per_event",
        "us",
        vs_nats=False,
    ),
    Row(
        "  unbatched client CPU us/event",
        "client_publish",
        "off_client_cpu_us_per_event",
        "us",
        vs_nats=False,
    ),
    Row("  batched / unbatched ev/s", "client_publish", "batching_ratio", "x", vs_nats=False),
    Row(
        "end to end, 4 consumers: ev/s",
        "end_to_end",
        "events_per_s",
        "rate",
        vs_pgqueuer=True,
        vs_floor=True,
    ),
    _cpu("end_to_end"),
    Row("publish->handler @1k/s p50 ms", "latency", "p50_ms", "ms"),
    Row("  publish->handler p99 ms", "latency", "p99_ms", "ms"),
    Row("  publish->handler kept up: ev/s", "latency", "rate_per_s", "rate"),
    _cpu("latency"),
    Row("fan-out x10: publish ev/s", "fan_out", "publish_events_per_s", "rate"),
    Row("  fan-out x10: deliveries/s", "fan_out", "deliveries_per_s", "rate"),
    Row("  fan-out publish cost", "fan_out", "publish_cost", "x"),
    _cpu("fan_out"),
    Row("fan-out x100: publish ev/s", "many_subscriptions", "publish_events_per_s", "rate"),
    Row("  fan-out x100 publish cost", "many_subscriptions", "publish_cost", "x", vs_nats=False),
    Row("  broker RSS MiB", "many_subscriptions", "rss_mib", "MiB", vs_nats=False),
    Row("  GetStats of 100 ms", "many_subscriptions", "stats_ms", "ms", vs_nats=False),
    _cpu("many_subscriptions"),
    Row("10k idle streams: RSS MiB", "idle_streams", "rss_mib", "MiB", vs_nats=False),
    Row("2 processes / 1 (PG), e2e", "scale_out", "e2e_ratio", "x", vs_nats=False),
    Row("unread streams: RSS growth MiB", "slow_consumer", "rss_growth_mib", "MiB", vs_nats=False),
    Row(
        "  from the first read",
        "slow_consumer",
        "rss_growth_from_start_mib",
        "MiB",
        vs_nats=False,
    ),
]


def figure(report: Report, system: str, workload: str, name: str) -> float | None:
    """One measured figure, or None when it was not measured."""
    entry = report["systems"].get(system, {}).get("workloads", {}).get(workload)
    if not entry or entry.get("status") != "ok":
        return None
    value = entry["figures"].get(name)
    if value is None or math.isnan(value):
        return None
    return float(value)


def add_derived(report: Report) -> None:
    """Figures computed from two workloads: the publish cost of fan-out."""
    for system in report["systems"].values():
        workloads = system.get("workloads", {})
        batched = workloads.get("batched_publish", {})
        for fanned in (workloads.get("fan_out", {}), workloads.get("many_subscriptions", {})):
            if batched.get("status") == "ok" and fanned.get("status") == "ok":
                fanned["figures"]["publish_cost"] = (
                    batched["figures"]["events_per_s"] / fanned["figures"]["publish_events_per_s"]
                )


def ratio(report: Report, row: Row, system: str, peer: str) -> float | None:
    """`system`'s figure over `peer`'s, or None."""
    mine = figure(report, system, row.workload, row.figure)
    theirs = figure(report, peer, row.workload, row.figure)
    if mine is None or theirs is None or theirs == 0:
        return None
    return mine / theirs


def add_ratios(report: Report) -> None:
    """`report["ratios"]`: each broker figure over NATS's (and pgqueuer's for end to end)."""
    ratios: dict[str, dict[str, float | None]] = {}
    for row in ROWS:
        pairs = []
        if row.vs_nats:
            pairs += [(SQLITE, NATS), (PG, NATS)]
        if row.vs_pgqueuer:
            pairs += [(SQLITE, PGQ), (PG, PGQ)]
        if row.vs_floor:
            pairs += [(SQLITE, FLOOR), (PG, FLOOR)]
        if pairs:
            ratios[f"{row.workload}.{row.figure}"] = {
                f"{mine}/{theirs}": ratio(report, row, mine, theirs) for mine, theirs in pairs
            }
    report["ratios"] = ratios


def _number(value: float, unit: str) -> str:
    if unit == "rate":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    if unit in ("MiB", "us"):
        return f"{value:,.0f}"
    return f"x{value:.2f}"


class Footnotes:
    """Numbered footnotes, one number per distinct text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        """The marker of `text`, e.g. `[2]`."""
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def _cell(report: Report, system: str, row: Row, notes: Footnotes) -> str:
    info = report["systems"][system]
    if info["status"] != "ok":
        return "-"
    entry = info["workloads"].get(row.workload)
    if entry is None:
        return "-"
    status = entry["status"]
    if status == "ok":
        value = entry["figures"].get(row.figure)
        if value is None or math.isnan(value):
            return "-"
        return _number(value, row.unit) + ("*" if entry.get("capped") else "")
    return f"{status} {notes.mark(str(entry.get('reason', '')))}"


def _ratio_cell(report: Report, row: Row, peer: str, wanted: bool) -> str:
    """`x1.20 / x0.80`: the broker on SQLite, then on PostgreSQL, over `peer`."""
    if not wanted:
        return ""
    values = [ratio(report, row, system, peer) for system in (SQLITE, PG)]
    if all(value is None for value in values):
        return "-"
    return " / ".join("-" if value is None else f"x{value:.2f}" for value in values)


def render(report: Report, console: Console) -> None:
    """Print the table, its footnotes and the goals."""
    systems = [key for key in report["systems"]]
    notes = Footnotes()
    table = Table(
        title=f"Side by side, 1 KiB JSON events, {report['machine']['cores']} cores shared by all"
        + (" (quick run)" if report["quick"] else ""),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("workload", min_width=28, max_width=34)
    for key in systems:
        table.add_column(report["systems"][key]["label"], justify="right", max_width=13)
    ratio_columns = [
        ("broker / NATS\n(SQLite / PG)", NATS, "vs_nats"),
        ("broker / pgqueuer\n(SQLite / PG)", PGQ, "vs_pgqueuer"),
        ("broker / grpc floor\n(SQLite / PG)", FLOOR, "vs_floor"),
    ]
    for title, *_ in ratio_columns:
        table.add_column(title, justify="right", style="cyan", no_wrap=True)
    durability = []
    for key in systems:
        info = report["systems"][key]
        if info["status"] == "ok":
            durability.append(info["durability_short"])
        else:
            durability.append(f"{info['status']} {notes.mark(str(info['reason']))}")
    table.add_row("durability", *durability, *([""] * len(ratio_columns)), end_section=True)
    for row in ROWS:
        cells = [_cell(report, key, row, notes) for key in systems]
        ratios = [
            _ratio_cell(report, row, peer, getattr(row, flag)) for _, peer, flag in ratio_columns
        ]
        table.add_row(row.label, *cells, *ratios)
    console.print(table)
    console.print("[bold]durability[/bold]")
    for key in systems:
        info = report["systems"][key]
        if info["status"] == "ok":
            console.print(f"  {info['label']}: {info['durability']}")
    console.print("[bold]notes[/bold]")
    for text in method_notes(report):
        console.print(f"  {text}")
    for number, text in enumerate(notes.texts, 1):
        console.print(f"  [{number}] {text}")
    for key in systems:
        info = report["systems"][key]
        for workload, entry in info.get("workloads", {}).items():
            for text in entry.get("notes", []):
                console.print(f"  {info['label']}, {workload}: {text}")
    console.print("[bold]goals[/bold]")
    for goal in report["goals"]:
        mark = {True: "[green]met[/green]    ", False: "[red]NOT met[/red]", None: "n/a    "}
        console.print(f"  {mark[goal['met']]}  {goal['goal']}: {goal['measured']}")


def method_notes(report: Report) -> list[str]:
    """What every reader of the table should know."""
    plan = report["plan"]
    lines = [
        f"One Python process drives every system (asyncio; grpc.aio, nats-py, aio-pika, "
        f"asyncpg) on the same {report['machine']['cores']} cores as the servers.",
        f"Counts: {plan['events']:,} events batched and end to end, {plan['single_events']:,} "
        f"single, {plan['latency_rate']:,}/s for {plan['latency_s']:g} s, "
        f"{plan['fanout_events']:,} fanned out; each workload stops at {plan['cap_s']:g} s "
        "(* = stopped by that cap: the figure is what completed).",
        "Ratios: a broker figure over NATS's (or pgqueuer's, or the grpc.aio floor's: a "
        "server of the same service that stores nothing); for ms, MiB and us lower is better.",
        "Server CPU us/event: the server process's user+system CPU time over the events of the "
        "workload (the broker's own process; the client is not counted).",
        "Publish cost of fan-out: batched publish events/s over fan-out publish events/s "
        "(with the fan-out consumers running).",
        f"Client publish: AsyncClient.publish per event from {plan['client_callers']} tasks "
        "(1 KiB JSON, no subscription), with the client's publish batching and with "
        "publish_batching=False (unbatched: one Publish call per event), each on a fresh "
        "database; p50/p99: one publish call as its caller sees it; client CPU: the "
        "publishing process's own.",
    ]
    scale = report["systems"].get(PG, {}).get("workloads", {}).get("scale_out")
    if scale and scale.get("status") == "ok":
        f = scale["figures"]
        lines.append(
            "2 processes / 1 on PostgreSQL: end to end "
            f"{f['e2e_1p_events_per_s']:,.0f} -> {f['e2e_2p_events_per_s']:,.0f} events/s, "
            f"batched publish {f['publish_1p_events_per_s']:,.0f} -> "
            f"{f['publish_2p_events_per_s']:,.0f} events/s (x{f['publish_ratio']:.2f})."
        )
    slow = report["systems"].get(SQLITE, {}).get("workloads", {}).get("slow_consumer")
    if slow and slow.get("status") == "ok":
        f = slow["figures"]
        lines.append(
            f"Unread streams: {plan['slow_streams']} streams of credit 10,000 (1 s ack deadline) "
            f"read one message and then nothing for {f['seconds']:g} s; broker RSS "
            f"{f['rss_start_mib']:,.0f} MiB at the first read, {f['rss_settled_mib']:,.0f} MiB "
            "once their credit is held, "
            f"{f['rss_end_mib']:,.0f} MiB at the end (growth after the credit filled: "
            f"{f['rss_growth_mib']:+,.0f} MiB)."
        )
    idle = report["systems"].get(SQLITE, {}).get("workloads", {}).get("idle_streams")
    if idle and idle.get("status") == "ok":
        f = idle["figures"]
        lines.append(
            f"Idle streams: {f['streams']:,.0f} Subscribe streams from "
            f"{plan['idle_processes']} client processes; broker RSS {f['rss_before_mib']:,.0f} MiB "
            f"before, {f['rss_mib']:,.0f} MiB with them ({f['kib_per_stream']:.1f} KiB per "
            f"stream), attached in {f['attach_s']:.0f} s."
        )
    return lines


@dataclass(frozen=True)
class Goal:
    """A target the team tracks, and how to read it off the report."""

    text: str
    system: str
    workload: str
    figure: str
    op: str  # ">=", "<=" or "<": how the measured value must compare with `bound`
    bound: float
    peer: str | None = None  # None: the figure itself; else the ratio over this peer's figure


GOALS = [
    Goal("end to end >= 1.0x NATS (SQLite)", SQLITE, "end_to_end", "events_per_s", ">=", 1, NATS),
    Goal(
        "end to end >= 1.0x pgqueuer (PostgreSQL)", PG, "end_to_end", "events_per_s", ">=", 1, PGQ
    ),
    Goal(
        "batched publish >= 0.8x NATS (SQLite)",
        SQLITE,
        "batched_publish",
        "events_per_s",
        ">=",
        0.8,
        NATS,
    ),
    Goal(
        "batched publish >= 0.6x pgqueuer (PostgreSQL)",
        PG,
        "batched_publish",
        "events_per_s",
        ">=",
        0.6,
        PGQ,
    ),
    Goal(
        "single publish >= 0.7x the grpc.aio floor (SQLite)",
        SQLITE,
        "single_publish",
        "events_per_s",
        ">=",
        0.7,
        FLOOR,
    ),
    Goal(
        "client publish batched >= 3x unbatched (SQLite)",
        SQLITE,
        "client_publish",
        "batching_ratio",
        ">=",
        3,
    ),
    Goal(
        "client publish batched >= 3x unbatched (PostgreSQL)",
        PG,
        "client_publish",
        "batching_ratio",
        ">=",
        3,
    ),
    Goal(
        "client publish p50 batched <= unbatched (SQLite)",
        SQLITE,
        "client_publish",
        "p50_ratio",
        "<=",
        1,
    ),
    Goal("publish->handler keeps up 990/s (SQLite)", SQLITE, "latency", "rate_per_s", ">=", 990),
    Goal(
        "publish->handler p50 <= 2x RabbitMQ (SQLite)", SQLITE, "latency", "p50_ms", "<=", 2, RABBIT
    ),
    Goal(
        "publish->handler p99 <= 2x RabbitMQ (SQLite)", SQLITE, "latency", "p99_ms", "<=", 2, RABBIT
    ),
    Goal("publish->handler keeps up 990/s (PostgreSQL)", PG, "latency", "rate_per_s", ">=", 990),
    Goal(
        "publish->handler p50 <= 4x RabbitMQ (PostgreSQL)", PG, "latency", "p50_ms", "<=", 4, RABBIT
    ),
    Goal("fan-out to 10 costs publish <= 3x (SQLite)", SQLITE, "fan_out", "publish_cost", "<=", 3),
    Goal("10k idle streams < 1 GiB RSS", SQLITE, "idle_streams", "rss_mib", "<", 1024),
    Goal("two processes on PostgreSQL >= 1.6x one", PG, "scale_out", "e2e_ratio", ">=", 1.6),
    Goal(
        "consumers that stop reading: broker RSS flat (<= +32 MiB)",
        SQLITE,
        "slow_consumer",
        "rss_growth_mib",
        "<=",
        32,
    ),
]
UNITS = {"p50_ms": " ms", "p99_ms": " ms", "rss_mib": " MiB", "rss_growth_mib": " MiB"}


def evaluate_goals(report: Report) -> None:
    """`report["goals"]`: each goal met, not met, or not measured, with the figure."""
    results = []
    for goal in GOALS:
        value = figure(report, goal.system, goal.workload, goal.figure)
        measured = ""
        if value is not None and goal.peer is not None:
            theirs = figure(report, goal.peer, goal.workload, goal.figure)
            if theirs:
                measured = f"x{value / theirs:.2f} ({value:,.0f} vs {theirs:,.0f})"
                value = value / theirs
            else:
                value = None
        elif value is not None:
            precise = goal.figure.endswith(("_ms", "ratio", "cost"))
            measured = f"{value:,.2f}" if precise else f"{value:,.0f}"
            measured += UNITS.get(goal.figure, "")
        met: bool | None = None
        if goal.workload == "idle_streams" and value is not None:
            streams = figure(report, goal.system, goal.workload, "streams") or 0
            if streams < 10_000:
                measured += f" with {streams:,.0f} streams, not 10k"
                value = None
        if value is not None:
            met = {">=": value >= goal.bound, "<=": value <= goal.bound, "<": value < goal.bound}[
                goal.op
            ]
        results.append(
            {"goal": goal.text, "measured": measured or "not measured", "met": met, "value": value}
        )
    report["goals"] = results
