"""The `broker` commands for people: publish, tail, subscriptions, events and stats.

They talk to a running broker through the Python client (`eventbroker.Client`),
print tables a person can read, and turn broker errors into one readable line
and exit status 1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from eventbroker import BrokerError, Client, Stats, Subscription

TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target",
        envvar="EVENTBROKER_TARGET",
        help="Broker address HOST:PORT [default: 127.0.0.1:50051].",
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="EVENTBROKER_API_KEY", help="Bearer key, if the broker needs one."
    ),
]

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
subs_app = typer.Typer(help="Manage durable subscriptions.", no_args_is_help=True)
events_app = typer.Typer(help="Look at stored events.", no_args_is_help=True)


@contextmanager
def client_for(target: str | None, api_key: str | None) -> Iterator[Client]:
    """A client; a broker error ends the command with one line and exit status 1."""
    try:
        with Client(target, api_key=api_key) as client:
            yield client
    except BrokerError as error:
        err.print(f"[red]error[/red] {error.code.name}: {error.message}")
        for field, description in error.field_violations:
            if field not in error.message:
                err.print(f"  {field}: {description}")
        raise typer.Exit(1) from error


def _seconds(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="milliseconds") if value is not None else "-"


def publish(
    name: Annotated[str, typer.Argument(help="Event name, e.g. user.joined.")],
    data: Annotated[str | None, typer.Argument(help='JSON data, e.g. \'{"plan":"pro"}\'.')] = None,
    id: Annotated[str | None, typer.Option("--id", help="Id for deduplication.")] = None,
    delay: Annotated[
        str | None, typer.Option(help="Deliver later: '5m', '1 day', or an ISO-8601 time.")
    ] = None,
    priority: Annotated[int, typer.Option(help="-50..50; higher goes first.")] = 0,
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="KEY=VALUE, repeatable.")
    ] = None,
    ordering_key: Annotated[
        str | None, typer.Option(help="FIFO key (ordered subscriptions).")
    ] = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Publish one event and print its id."""
    try:
        payload = json.loads(data) if data is not None else None
    except json.JSONDecodeError as error:
        err.print(f"[red]error[/red] DATA is not JSON: {error}")
        raise typer.Exit(1) from error
    headers: dict[str, str] = {}
    for item in header or []:
        key, sep, value = item.partition("=")
        if not sep:
            err.print(f"[red]error[/red] --header {item!r}: expected KEY=VALUE")
            raise typer.Exit(1)
        headers[key] = value
    with client_for(target, api_key) as client:
        result = client.publish(
            name,
            payload,
            id=id,
            delay=delay,
            priority=priority,
            ordering_key=ordering_key,
            headers=headers or None,
        )
    status = "duplicate" if result.duplicate else "created"
    out.print(f"{status} {result.event_id}")


def tail(
    filter: Annotated[list[str], typer.Argument(help="Name patterns: user.*, orders.>")],
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Print new events matching the patterns as they are published (Ctrl-C to stop).

    An ephemeral tail: it needs no subscription, acknowledges nothing and leaves
    nothing behind.
    """
    with client_for(target, api_key) as client:
        try:
            for message in client.tail(filter):
                data = (
                    json.dumps(message.data, separators=(",", ":"))
                    if not isinstance(message.data, bytes)
                    else f"<{len(message.data)} bytes {message.content_type}>"
                )
                print(_when(message.publish_time), message.name, message.event_id, data, flush=True)
        except KeyboardInterrupt:
            return


def _subscriptions_table(subs: list[Subscription]) -> Table:
    table = Table(title="Subscriptions")
    for column in ("name", "filter", "ack deadline", "max attempts", "max in flight", "ordered"):
        table.add_column(column)
    for sub in subs:
        table.add_row(
            sub.name,
            ", ".join(sub.filter),
            _seconds(sub.ack_deadline),
            str(sub.max_attempts),
            str(sub.max_in_flight or "unlimited"),
            "yes" if sub.ordered else "no",
        )
    return table


@subs_app.command("list")
def subs_list(target: TargetOption = None, api_key: ApiKeyOption = None) -> None:
    """List subscriptions."""
    with client_for(target, api_key) as client:
        out.print(_subscriptions_table(client.list_subscriptions()))


@subs_app.command("get")
def subs_get(name: str, target: TargetOption = None, api_key: ApiKeyOption = None) -> None:
    """Show every setting of one subscription."""
    with client_for(target, api_key) as client:
        sub = client.get_subscription(name)
    table = Table(title=f"Subscription {sub.name}", show_header=False)
    table.add_column("setting")
    table.add_column("value")
    rows = [
        ("filter", ", ".join(sub.filter)),
        ("ack deadline", _seconds(sub.ack_deadline)),
        ("max attempts", str(sub.max_attempts)),
        ("backoff", f"{_seconds(sub.min_backoff)} .. {_seconds(sub.max_backoff)}"),
        ("max in flight", str(sub.max_in_flight or "unlimited")),
        ("ordered", "yes" if sub.ordered else "no"),
        ("retention", _seconds(sub.retention)),
        ("created", _when(sub.create_time)),
    ]
    for row in rows:
        table.add_row(*row)
    out.print(table)


FilterOption = Annotated[
    list[str] | None, typer.Option("--filter", "-f", help="Name pattern, repeatable.")
]
AckDeadlineOption = Annotated[str | None, typer.Option(help="e.g. 30s, 5m (1 s .. 12 h).")]
MaxAttemptsOption = Annotated[int | None, typer.Option(help="Attempts before dead-lettering.")]
MaxInFlightOption = Annotated[
    int | None, typer.Option(help="Concurrency limit across consumers (0: unlimited).")
]
BackoffOption = Annotated[str | None, typer.Option(help="e.g. 1s, 10m.")]


def _settings(**options: Any) -> dict[str, Any]:
    return {key: value for key, value in options.items() if value is not None}


@subs_app.command("create")
def subs_create(
    name: str,
    filter: FilterOption = None,
    ack_deadline: AckDeadlineOption = None,
    max_attempts: MaxAttemptsOption = None,
    max_in_flight: MaxInFlightOption = None,
    min_backoff: BackoffOption = None,
    max_backoff: BackoffOption = None,
    ordered: Annotated[bool, typer.Option(help="FIFO per ordering key.")] = False,
    start: Annotated[
        str | None, typer.Option(help="'new' (default), 'beginning', or an ISO-8601 time.")
    ] = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Create a subscription."""
    if not filter:
        err.print("[red]error[/red] give at least one --filter pattern (e.g. 'user.*')")
        raise typer.Exit(1)
    start_at: str | datetime | None = start
    if start not in (None, "new", "beginning"):
        try:
            start_at = datetime.fromisoformat(str(start))
        except ValueError as error:
            err.print(f"[red]error[/red] --start {start!r}: 'new', 'beginning' or an ISO-8601 time")
            raise typer.Exit(1) from error
    with client_for(target, api_key) as client:
        sub = client.create_subscription(
            name,
            filter,
            ordered=ordered,
            start=start_at,
            **_settings(
                ack_deadline=ack_deadline,
                max_attempts=max_attempts,
                max_in_flight=max_in_flight,
                min_backoff=min_backoff,
                max_backoff=max_backoff,
            ),
        )
    out.print(_subscriptions_table([sub]))


@subs_app.command("update")
def subs_update(
    name: str,
    filter: FilterOption = None,
    ack_deadline: AckDeadlineOption = None,
    max_attempts: MaxAttemptsOption = None,
    max_in_flight: MaxInFlightOption = None,
    min_backoff: BackoffOption = None,
    max_backoff: BackoffOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Change the settings given; the others stay as they are."""
    changes = _settings(
        filter=filter or None,
        ack_deadline=ack_deadline,
        max_attempts=max_attempts,
        max_in_flight=max_in_flight,
        min_backoff=min_backoff,
        max_backoff=max_backoff,
    )
    if not changes:
        err.print("[red]error[/red] nothing to change: give at least one setting")
        raise typer.Exit(1)
    with client_for(target, api_key) as client:
        sub = client.update_subscription(name, **changes)
    out.print(_subscriptions_table([sub]))


@subs_app.command("delete")
def subs_delete(name: str, target: TargetOption = None, api_key: ApiKeyOption = None) -> None:
    """Delete a subscription and its pending deliveries."""
    with client_for(target, api_key) as client:
        client.delete_subscription(name)
    out.print(f"deleted {name}")


@events_app.command("show")
def events_show(event_id: str, target: TargetOption = None, api_key: ApiKeyOption = None) -> None:
    """Show an event and, for each subscription, where its delivery stands and why."""
    with client_for(target, api_key) as client:
        info = client.get_event(event_id)
    out.print(f"{info.event_id}  {info.name}  published {_when(info.publish_time)}")
    data = info.data
    print("data:", json.dumps(data) if not isinstance(data, bytes) else f"<{len(data)} bytes>")
    table = Table(title="Deliveries")
    for column in ("subscription", "state", "attempts", "why"):
        table.add_column(column)
    for delivery in info.deliveries:
        table.add_row(
            delivery.subscription, delivery.state, str(delivery.attempts), delivery.reason
        )
    out.print(table)


def _stats_table(stats: Stats) -> Table:
    table = Table(
        title=f"{stats.events} events stored, {stats.publish_rate:.1f} published/s",
        caption=datetime.now().strftime("%H:%M:%S"),
    )
    columns = ("subscription", "scheduled", "ready", "in flight", "acked", "dead")
    for column in (*columns, "consumers", "delivered/s", "acked/s"):
        table.add_column(column, justify="left" if column == "subscription" else "right")
    for sub in stats.subscriptions:
        table.add_row(
            sub.subscription,
            f"{sub.scheduled:,}",
            f"{sub.ready:,}",
            f"{sub.in_flight:,}",
            f"{sub.acked:,}",
            f"{sub.dead:,}",
            str(sub.consumers),
            f"{sub.delivery_rate:.1f}",
            f"{sub.ack_rate:.1f}",
        )
    return table


def stats(
    subscription: Annotated[str | None, typer.Option(help="Only this subscription.")] = None,
    watch: Annotated[
        float | None, typer.Option(help="Refresh every this many seconds until Ctrl-C.")
    ] = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Counts per subscription: scheduled, ready, in flight, acked, dead; and rates."""
    with client_for(target, api_key) as client:
        fetch: Callable[[], Stats] = lambda: client.get_stats(subscription)  # noqa: E731
        if watch is None:
            out.print(_stats_table(fetch()))
            return
        try:
            with Live(_stats_table(fetch()), console=out, auto_refresh=False) as live:
                while True:
                    time.sleep(max(watch, 0.2))
                    live.update(_stats_table(fetch()), refresh=True)
        except KeyboardInterrupt:
            return


def register(app: typer.Typer) -> None:
    """Add these commands to the `broker` command."""
    app.command()(publish)
    app.command()(tail)
    app.command()(stats)
    app.add_typer(subs_app, name="subs")
    app.add_typer(events_app, name="events")
