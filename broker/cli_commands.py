"""The `broker` commands for people: publish, tail, subscriptions, events, dead letters, stats.

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
from enum import StrEnum
from itertools import islice
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eventbroker import BrokerError, Client, DeadLetterInfo, Stats, Subscription

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
dlq_app = typer.Typer(
    help="Inspect and redrive dead letters: deliveries that failed for good.",
    no_args_is_help=True,
)

#: Event ids per redrive call of `broker dlq redrive` (the progress bar moves per call).
REDRIVE_IDS_PER_CALL = 100
#: Dead letters per page when `broker dlq` lists them (the broker's maximum).
DLQ_PAGE_SIZE = 1_000
#: Characters of the last error shown in the `broker dlq list` table.
ERROR_WIDTH_CHARS = 60


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


def _data_text(data: Any, content_type: str) -> str:
    if isinstance(data, bytes):
        return f"<{len(data)} bytes {content_type}>"
    return json.dumps(data, separators=(",", ":"))


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
                data = _data_text(message.data, message.content_type)
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
        ("retry table", ", ".join(_seconds(d) for d in sub.retry_delays) or "none (backoff)"),
        ("max age", _seconds(sub.max_age) if sub.max_age else "none"),
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


# -- dead letters ----------------------------------------------------------------


class DeadReason(StrEnum):
    """Why a delivery was dead-lettered, as `--reason` takes it."""

    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    NACKED_TERMINAL = "nacked_terminal"
    EXPIRED = "expired"


SubscriptionArgument = Annotated[str, typer.Argument(help="Subscription name.")]
NameOption = Annotated[str | None, typer.Option("--name", help="Only events with this name.")]
ReasonOption = Annotated[
    DeadReason | None,
    typer.Option(
        "--reason",
        case_sensitive=False,
        help="Only those that died for this reason (expired: older than the max age).",
    ),
]


def _dead_letters(count: int) -> str:
    return f"{count:,} dead letter{'' if count == 1 else 's'}"


def _reason(value: DeadReason | None) -> str | None:
    return value.value if value is not None else None


def _shorten(text: str, width: int) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) > width or line != text.strip():
        return line[: width - 1] + "…"
    return line


@dlq_app.command("list")
def dlq_list(
    subscription: SubscriptionArgument,
    name: NameOption = None,
    reason: ReasonOption = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, oldest first.")] = 50,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List a subscription's dead letters, oldest first."""
    with client_for(target, api_key) as client:
        letters = list(
            islice(
                client.iter_dead_letters(
                    subscription,
                    name=name,
                    reason=_reason(reason),
                    page_size=min(limit + 1, DLQ_PAGE_SIZE),
                ),
                limit + 1,
            )
        )
    if not letters:
        out.print(f"no dead letters in {subscription}" + (" match" if name or reason else ""))
        return
    more = len(letters) > limit
    table = Table(
        title=f"Dead letters of {subscription}",
        caption=f"only the first {limit} are shown; raise --limit for more" if more else None,
    )
    for column in ("event id", "name", "reason", "attempts", "last error", "died at"):
        table.add_column(column, justify="right" if column == "attempts" else "left")
    for letter in letters[:limit]:
        table.add_row(
            letter.event_id,
            letter.name,
            letter.reason,
            str(letter.attempts),
            _shorten(letter.last_error, ERROR_WIDTH_CHARS),
            _when(letter.dead_time),
        )
    out.print(table)


def _dead_letter_table(letter: DeadLetterInfo) -> Table:
    table = Table(title=f"Dead letter {letter.event_id}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    rows = [
        ("event id", letter.event_id),
        ("name", letter.name),
        ("subscription", letter.subscription),
        ("reason", letter.reason),
        ("why", letter.description),
        ("attempts", str(letter.attempts)),
        ("last error", letter.last_error or "-"),
        ("died at", _when(letter.dead_time)),
        ("published", _when(letter.publish_time)),
        ("priority", str(letter.priority)),
        ("ordering key", letter.ordering_key or "-"),
        ("dedup id", letter.dedup_id or "-"),
        ("headers", ", ".join(f"{k}={v}" for k, v in letter.headers.items()) or "-"),
        ("data", _data_text(letter.data, letter.content_type)),
    ]
    for row in rows:
        table.add_row(*row)
    return table


@dlq_app.command("show")
def dlq_show(
    subscription: SubscriptionArgument,
    event_id: Annotated[str, typer.Argument(help="Event id, as `broker dlq list` shows it.")],
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show one dead letter: the event, why it died, and its attempt history."""
    with client_for(target, api_key) as client:
        letter = client.get_dead_letter(subscription, event_id)
    if letter is None:
        err.print(
            f"[red]error[/red] event {event_id} is not a dead letter of {subscription} "
            f"(`broker events show {event_id}` says where it stands)"
        )
        raise typer.Exit(1)
    out.print(_dead_letter_table(letter))
    history = Table(title="Attempts, oldest first")
    for column in ("attempt", "delivered", "ended", "consumer", "outcome", "error"):
        history.add_column(column, justify="right" if column == "attempt" else "left")
    for attempt in letter.history:
        history.add_row(
            str(attempt.attempt),
            _when(attempt.delivered_time),
            _when(attempt.end_time),
            attempt.consumer,
            attempt.outcome,
            attempt.error or "-",
        )
    if letter.history:
        out.print(history)
    else:
        out.print("no attempts: it died before it was delivered")


@dlq_app.command("redrive")
def dlq_redrive(
    subscription: SubscriptionArgument,
    event_ids: Annotated[
        list[str] | None,
        typer.Argument(help="Event ids to redrive; leave out to select with the options."),
    ] = None,
    name: NameOption = None,
    reason: ReasonOption = None,
    redrive_all: Annotated[
        bool,
        typer.Option("--all", help="Redrive every dead letter (narrowed by --name and --reason)."),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before redriving a selection.")
    ] = False,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Deliver dead letters again, counting their attempts afresh from 1.

    Name the events, or select them with --name and --reason, or take every one
    with --all. A selection is listed first and confirmed (unless --yes), then
    redriven in calls of 100 ids with a progress bar.
    """
    if event_ids and redrive_all:
        err.print("[red]error[/red] give EVENT_IDS or --all, not both")
        raise typer.Exit(1)
    if not event_ids and not (name or reason or redrive_all):
        err.print(
            f"[red]error[/red] this would redrive every dead letter of {subscription}: "
            "say so with --all, or give EVENT_IDS, --name or --reason"
        )
        raise typer.Exit(1)
    with client_for(target, api_key) as client:
        ids = list(event_ids or [])
        if not ids:
            letters = client.iter_dead_letters(
                subscription, name=name, reason=_reason(reason), page_size=DLQ_PAGE_SIZE
            )
            ids = [letter.event_id for letter in letters]
            if not ids:
                out.print(f"no dead letters in {subscription} match")
                return
            if not yes:
                typer.confirm(
                    f"Redrive {_dead_letters(len(ids))} of {subscription}?", abort=True, err=True
                )
        redriven = 0
        progress = Progress(
            TextColumn("redriving"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        )
        with progress:
            task = progress.add_task("redrive", total=len(ids))
            for start in range(0, len(ids), REDRIVE_IDS_PER_CALL):
                chunk = ids[start : start + REDRIVE_IDS_PER_CALL]
                redriven += client.redrive_dead_letters(
                    subscription, event_ids=chunk, name=name, reason=_reason(reason)
                )
                progress.advance(task, len(chunk))
    skipped = len(ids) - redriven
    note = f" ({skipped:,} of the {len(ids):,} ids were not dead there)" if skipped else ""
    out.print(f"redrove {_dead_letters(redriven)} of {subscription}{note}")


# -- stats -----------------------------------------------------------------------


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
    app.add_typer(dlq_app, name="dlq")
