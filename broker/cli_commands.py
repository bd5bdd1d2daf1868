"""The `broker` commands for people: publish, tail, subscriptions, events, dead letters, stats.

They talk to a running broker through the Python client (`eventbroker.Client`),
print tables a person can read (or JSON with `--json`), and turn broker errors
into one readable line (see `broker.cli_errors` for the exit statuses).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import islice
from typing import Annotated, Any

import grpc
import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from broker import cli_connection, cli_values
from broker.cli_connection import connected
from broker.cli_errors import (
    EXIT_FAILED,
    CommandError,
    broker_error,
    notice,
    usage_error,
    warn,
)
from broker.cli_output import (
    JsonOption,
    add_id_column,
    print_json,
    seconds,
    show,
    stdout_console,
    table,
    when,
)
from eventbroker import (
    BrokerError,
    Client,
    DeadLetterInfo,
    Stats,
    Subscription,
    SubscriptionSettingsWarning,
)
from eventbroker.durations import format_duration

err = Console(stderr=True, highlight=False, soft_wrap=True)
subs_app = typer.Typer(help="Manage durable subscriptions.", no_args_is_help=True)
events_app = typer.Typer(help="Look at stored events.", no_args_is_help=True)
dlq_app = typer.Typer(
    help="Inspect and redrive dead letters (deliveries that failed for good).",
    no_args_is_help=True,
)


def _takes_connection_options(group: typer.Typer) -> None:
    """Let a group of commands take the connection options too (`broker subs --target X list`)."""

    @group.callback()
    @connected
    def options() -> None:
        """The connection options given between the group and its command."""


_takes_connection_options(subs_app)
_takes_connection_options(events_app)
_takes_connection_options(dlq_app)

#: Event ids per redrive call of `broker dlq redrive` (the progress bar moves per call).
REDRIVE_IDS_PER_CALL = 100
#: Dead letters per page when `broker dlq` lists them (the broker's maximum).
DLQ_PAGE_SIZE = 1_000
#: Characters of the last error shown in the `broker dlq list` table.
ERROR_WIDTH_CHARS = 60
#: How long `broker publish` keeps trying when a person waits at a terminal.
PUBLISH_TIMEOUT_TERMINAL_S = 5.0
#: How long it keeps trying in a script (stdout not a terminal): the client's default,
#: long enough to ride out a broker restart.
PUBLISH_TIMEOUT_S = 30.0
#: The logger the client tells its publish retries on.
CLIENT_LOGGER = "eventbroker.client"


@contextmanager
def client_for() -> Iterator[Client]:
    """A client as the connection options say; a broker error ends the command in one line."""
    client = Client(
        cli_connection.target(),
        api_key=cli_connection.api_key(),
        tls=cli_connection.tls_config(),
    )
    try:
        with client:
            yield client
    except BrokerError as error:
        raise broker_error(error, client.target) from error


class _RetryNotice(logging.Handler):
    """Says on stderr, once per kind of failure, that a publish is being retried.

    It reads the records the client logs before each retry (`eventbroker._publish`),
    which carry the attempt's error.
    """

    def __init__(self, target: str, limit: timedelta) -> None:
        super().__init__(logging.INFO)
        self.target = target
        self.limit = limit
        self._told: set[tuple[str, str | None]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        error = getattr(record, "publish_error", None)
        if not isinstance(error, BrokerError) or (error.code.name, error.reason) in self._told:
            return
        self._told.add((error.code.name, error.reason))
        if error.reason is None and error.code is grpc.StatusCode.UNAVAILABLE:
            what = f"not answering ({error.code.name})"
        elif error.reason is None and error.code is grpc.StatusCode.DEADLINE_EXCEEDED:
            what = f"not answering in time ({error.code.name})"
        else:
            what = f"answered {error}"
        notice(
            f"broker at {self.target} {what}; retrying for up to {format_duration(self.limit)}..."
        )


@contextmanager
def retry_notices(target: str, limit: timedelta) -> Iterator[None]:
    """While it lasts, each new kind of publish retry is told on stderr (see `_RetryNotice`)."""
    logger = logging.getLogger(CLIENT_LOGGER)
    handler = _RetryNotice(target, limit)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _data_text(data: Any, content_type: str) -> str:
    if isinstance(data, bytes):
        return f"<{len(data)} bytes {content_type}>"
    return json.dumps(data, separators=(",", ":"))


def publish(
    name: Annotated[str, typer.Argument(help="Event name, e.g. user.joined.")],
    data: Annotated[str | None, typer.Argument(help='JSON data, e.g. \'{"plan":"pro"}\'.')] = None,
    id: Annotated[str | None, typer.Option("--id", help="Id for deduplication.")] = None,
    delay: Annotated[
        str | None,
        typer.Option(
            help="Deliver later: seconds, '5m', '1 day', 'PT5M', or an ISO-8601 time "
            "(at most one year ahead)."
        ),
    ] = None,
    priority: Annotated[int, typer.Option(min=-50, max=50, help="-50..50; higher goes first.")] = 0,
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="KEY=VALUE, repeatable.")
    ] = None,
    ordering_key: Annotated[
        str | None, typer.Option(help="FIFO key (ordered subscriptions).")
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="How long to keep trying while the broker cannot be reached or cannot "
            "store now (seconds, or '30s', '2m') [default: 5 s when stdout is a terminal, "
            "else 30 s].",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Publish one event; print `created ID` or `duplicate ID`, and how many matched.

    While the broker cannot be reached or cannot store (UNAVAILABLE), the publish
    is retried under the same event id, so it is stored once, and a line on
    stderr says so; after --timeout it ends with the broker's last reason.
    """
    try:
        payload = json.loads(data) if data is not None else None
    except json.JSONDecodeError as error:
        raise typer.BadParameter(f"not JSON: {error}", param_hint="DATA") from error
    headers: dict[str, str] = {}
    for item in header or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="'--header'")
        headers[key] = value
    when_due = cli_values.delay("--delay", delay) if delay is not None else None
    if timeout is not None:
        limit = cli_values.duration("--timeout", timeout, cli_values.PUBLISH_TIMEOUT)
    else:
        limit = timedelta(
            seconds=PUBLISH_TIMEOUT_TERMINAL_S if sys.stdout.isatty() else PUBLISH_TIMEOUT_S
        )
    with client_for() as client, retry_notices(client.target, limit):
        result = client.publish(
            name,
            payload,
            id=id,
            delay=when_due,
            priority=priority,
            ordering_key=ordering_key,
            headers=headers or None,
            timeout=limit,
        )
    if json_output:
        print_json(result)
        return
    if result.duplicate:  # stored before: nothing was delivered this time
        show(f"duplicate {result.event_id}")
        return
    matched = result.matched_subscriptions
    count = "no subscription" if not matched else f"{matched} subscription" + "s" * (matched > 1)
    show(f"created {result.event_id} (matched {count})")


def tail(
    filter: Annotated[list[str], typer.Argument(help="Name patterns: user.*, orders.>")],
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per event, one per line.")
    ] = False,
) -> None:
    """Print new matching events as they are published (Ctrl-C to stop).

    An ephemeral tail: it needs no subscription, acknowledges nothing and leaves
    nothing behind.
    """
    with client_for() as client:
        try:
            for message in client.tail(filter):
                if json_output:
                    print_json(message, compact=True)
                    continue
                data = _data_text(message.data, message.content_type)
                print(when(message.publish_time), message.name, message.event_id, data, flush=True)
        except KeyboardInterrupt:
            return


def _subscriptions_table(subs: list[Subscription]) -> Table:
    grid = table("Subscriptions")
    grid.add_column("name", no_wrap=True)
    columns = ("filter", "ack deadline", "max attempts", "max in flight", "per key", "ordered")
    for column in columns:
        grid.add_column(column)
    for sub in subs:
        grid.add_row(
            sub.name,
            ", ".join(sub.filter),
            seconds(sub.ack_deadline),
            str(sub.max_attempts),
            str(sub.max_in_flight or "unlimited"),
            _per_key(sub),
            "yes" if sub.ordered else "no",
        )
    return grid


def _per_key(sub: Subscription) -> str:
    """The cap per key, and which header the key comes from when not the ordering key."""
    cap = str(sub.max_in_flight_per_key or "no cap")
    return f"{cap} by {sub.key_header}" if sub.key_header and sub.max_in_flight_per_key else cap


def _print_subscriptions(subs: list[Subscription], json_output: bool) -> None:
    if json_output:
        print_json(subs)
    else:
        show(_subscriptions_table(subs))


@subs_app.command("list")
@connected
def subs_list(json_output: JsonOption = False) -> None:
    """List subscriptions."""
    with client_for() as client:
        subs = client.list_subscriptions()
    _print_subscriptions(subs, json_output)


def _subscription_table(sub: Subscription) -> Table:
    grid = table(f"Subscription {sub.name}", show_header=False)
    grid.add_column("setting", no_wrap=True)
    grid.add_column("value")
    rows = [
        ("filter", ", ".join(sub.filter)),
        ("ack deadline", seconds(sub.ack_deadline)),
        ("max attempts", str(sub.max_attempts)),
        ("backoff", f"{seconds(sub.min_backoff)} .. {seconds(sub.max_backoff)}"),
        ("retry delays", ", ".join(seconds(d) for d in sub.retry_delays) or "none (backoff)"),
        ("max in flight", str(sub.max_in_flight or "unlimited")),
        ("max in flight per key", str(sub.max_in_flight_per_key or "no cap")),
        ("key", f"header {sub.key_header!r}" if sub.key_header else "ordering key"),
        ("ordered", "yes" if sub.ordered else "no"),
        ("max age", seconds(sub.max_age) if sub.max_age else "none"),
        ("retention", seconds(sub.retention)),
        ("created", when(sub.create_time)),
    ]
    for row in rows:
        grid.add_row(*row)
    return grid


@subs_app.command("show")
@connected
def subs_show(
    name: Annotated[str, typer.Argument(help="Subscription name.")],
    json_output: JsonOption = False,
) -> None:
    """Show every setting of one subscription."""
    with client_for() as client:
        sub = client.get_subscription(name)
    if json_output:
        print_json(sub)
    else:
        show(_subscription_table(sub))


subs_app.command("get", hidden=True)(subs_show)  # the name it had first

FORMS = cli_values.DURATION_FORMS
FilterOption = Annotated[
    list[str] | None,
    typer.Option("--filter", "-f", metavar="PATTERN", help="Name pattern, repeatable."),
]
AckDeadlineOption = Annotated[
    str | None,
    typer.Option(
        metavar="DURATION",
        help=f"Time to ack before redelivery: {FORMS} (1 s .. 12 h; default 30 s).",
    ),
]
MaxAttemptsOption = Annotated[
    int | None,
    typer.Option(min=1, max=1000, help="Attempts before dead-lettering (1..1000; default 20)."),
]
MaxInFlightOption = Annotated[
    int | None,
    typer.Option(min=0, help="Deliveries held at once across consumers (0: unlimited)."),
]
MaxInFlightPerKeyOption = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Deliveries of one key held at once across consumers and brokers (0: no cap); "
        "the key is the ordering key, or --key-header's value.",
    ),
]
KeyHeaderOption = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Take each event's key (for --ordered and --max-in-flight-per-key) from this "
        "header instead of its ordering key ('': the ordering key again).",
    ),
]
MinBackoffOption = Annotated[
    str | None, typer.Option(metavar="DURATION", help=f"First retry delay: {FORMS} (default 1 s).")
]
MaxBackoffOption = Annotated[
    str | None,
    typer.Option(metavar="DURATION", help=f"Longest retry delay: {FORMS} (default 10 min)."),
]
RetryDelaysOption = Annotated[
    str | None,
    typer.Option(
        metavar="DURATIONS",
        help="A retry table instead of the backoff, e.g. '10s,1m,10m' (the last repeats; "
        "'none' removes it).",
    ),
]
MaxAgeOption = Annotated[
    str | None,
    typer.Option(
        metavar="DURATION",
        help=f"Dead-letter events older than this: {FORMS} (default none; 'none' removes it).",
    ),
]
RetentionOption = Annotated[
    str | None,
    typer.Option(
        metavar="DURATION",
        help=f"How long acked and dead deliveries stay: {FORMS} (default 7 days).",
    ),
]


def _changes(
    *,
    filter: list[str] | None,
    ack_deadline: str | None,
    max_attempts: int | None,
    max_in_flight: int | None,
    max_in_flight_per_key: int | None,
    key_header: str | None,
    min_backoff: str | None,
    max_backoff: str | None,
    retry_delays: str | None,
    max_age: str | None,
    retention: str | None,
) -> dict[str, Any]:
    """The settings given on the command line, read and range-checked, by client keyword."""
    changes: dict[str, Any] = {}
    if filter:
        changes["filter"] = filter
    durations = (
        ("ack_deadline", "--ack-deadline", ack_deadline, cli_values.ACK_DEADLINE),
        ("min_backoff", "--min-backoff", min_backoff, cli_values.BACKOFF),
        ("max_backoff", "--max-backoff", max_backoff, cli_values.BACKOFF),
        ("retention", "--retention", retention, cli_values.RETENTION),
    )
    for key, flag, text, allowed in durations:
        if text is not None:
            changes[key] = cli_values.duration(flag, text, allowed)
    if max_age is not None:
        changes["max_age"] = cli_values.optional_duration("--max-age", max_age, cli_values.MAX_AGE)
    if retry_delays is not None:
        changes["retry_delays"] = cli_values.duration_list("--retry-delays", retry_delays)
    if max_attempts is not None:
        changes["max_attempts"] = max_attempts
    if max_in_flight is not None:
        changes["max_in_flight"] = max_in_flight or None
    if max_in_flight_per_key is not None:
        changes["max_in_flight_per_key"] = max_in_flight_per_key or None
    if key_header is not None:
        changes["key_header"] = key_header or None
    return changes


@subs_app.command("create")
@connected
def subs_create(
    name: Annotated[str, typer.Argument(help="Subscription name (lower case).")],
    filter: FilterOption = None,
    ack_deadline: AckDeadlineOption = None,
    max_attempts: MaxAttemptsOption = None,
    max_in_flight: MaxInFlightOption = None,
    max_in_flight_per_key: MaxInFlightPerKeyOption = None,
    key_header: KeyHeaderOption = None,
    min_backoff: MinBackoffOption = None,
    max_backoff: MaxBackoffOption = None,
    retry_delays: RetryDelaysOption = None,
    max_age: MaxAgeOption = None,
    retention: RetentionOption = None,
    ordered: Annotated[bool, typer.Option(help="FIFO per ordering key.")] = False,
    start: Annotated[
        str | None,
        typer.Option(help="'new' (default), 'beginning', or an ISO-8601 time to start from."),
    ] = None,
    exist_ok: Annotated[
        bool,
        typer.Option(
            "--exist-ok",
            help="Succeed when it exists already: its settings are left as they are, and "
            "a warning names each one that differs from those given.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Create a subscription."""
    if not filter:
        raise typer.BadParameter(
            "give at least one pattern (e.g. 'user.*')", param_hint="'--filter'"
        )
    settings = _changes(
        filter=None,
        ack_deadline=ack_deadline,
        max_attempts=max_attempts,
        max_in_flight=max_in_flight,
        max_in_flight_per_key=max_in_flight_per_key,
        key_header=key_header,
        min_backoff=min_backoff,
        max_backoff=max_backoff,
        retry_delays=retry_delays,
        max_age=max_age,
        retention=retention,
    )
    start_at = cli_values.start("--start", start) if start is not None else None
    with client_for() as client, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SubscriptionSettingsWarning)
        sub = client.create_subscription(
            name, filter, ordered=ordered, start=start_at, exist_ok=exist_ok, **settings
        )
    for warning in caught:
        if isinstance(warning.message, SubscriptionSettingsWarning):
            warn(_settings_warning(warning.message))
        else:
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    _print_subscriptions([sub], json_output)


def _settings_warning(mismatch: SubscriptionSettingsWarning) -> str:
    """The client's warning in the command's words: flags instead of keywords."""
    listed = "; ".join(
        f"--{setting.replace('_', '-')} is {now}, asked {asked}"
        for setting, now, asked in mismatch.differences
    )
    return (
        f"subscription {mismatch.subscription!r} exists with other settings, left as they are: "
        f"{listed} (`broker subs update {mismatch.subscription} ...` changes them)"
    )


@subs_app.command("update")
@connected
def subs_update(
    name: Annotated[str, typer.Argument(help="Subscription name.")],
    filter: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            "-f",
            metavar="PATTERN",
            help="Name pattern, repeatable: replaces the filter.",
        ),
    ] = None,
    ack_deadline: AckDeadlineOption = None,
    max_attempts: MaxAttemptsOption = None,
    max_in_flight: MaxInFlightOption = None,
    max_in_flight_per_key: MaxInFlightPerKeyOption = None,
    key_header: KeyHeaderOption = None,
    min_backoff: MinBackoffOption = None,
    max_backoff: MaxBackoffOption = None,
    retry_delays: RetryDelaysOption = None,
    max_age: MaxAgeOption = None,
    retention: RetentionOption = None,
    json_output: JsonOption = False,
) -> None:
    """Change the settings given; the others stay as they are.

    `ordered` and `start` are fixed when a subscription is created.
    """
    changes = _changes(
        filter=filter,
        ack_deadline=ack_deadline,
        max_attempts=max_attempts,
        max_in_flight=max_in_flight,
        max_in_flight_per_key=max_in_flight_per_key,
        key_header=key_header,
        min_backoff=min_backoff,
        max_backoff=max_backoff,
        retry_delays=retry_delays,
        max_age=max_age,
        retention=retention,
    )
    if not changes:
        raise usage_error(
            "nothing to change: give at least one setting (broker subs update --help)"
        )
    with client_for() as client:
        sub = client.update_subscription(name, **changes)
    _print_subscriptions([sub], json_output)


@subs_app.command("delete")
@connected
def subs_delete(name: Annotated[str, typer.Argument(help="Subscription name.")]) -> None:
    """Delete a subscription and its pending deliveries."""
    with client_for() as client:
        client.delete_subscription(name)
    show(f"deleted {name}")


@events_app.command("show")
@connected
def events_show(
    event_id: Annotated[str, typer.Argument(help="Event id, as publish prints it.")],
    json_output: JsonOption = False,
) -> None:
    """Show an event and, for each subscription, where its delivery stands and why."""
    with client_for() as client:
        info = client.get_event(event_id)
    if json_output:
        print_json(info)
        return
    show(f"{info.event_id}  {info.name}  published {when(info.publish_time)}")
    if info.trace_id:
        show(f"trace: {info.trace_id}")
    show(f"data: {_data_text(info.data, info.content_type)}")
    grid = table("Deliveries")
    grid.add_column("subscription", no_wrap=True)
    for column in ("state", "attempts", "why"):
        grid.add_column(column)
    for delivery in info.deliveries:
        grid.add_row(delivery.subscription, delivery.state, str(delivery.attempts), delivery.reason)
    if info.deliveries:
        show(grid)
    else:
        show("it matched no subscription")


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
@connected
def dlq_list(
    subscription: SubscriptionArgument,
    name: NameOption = None,
    reason: ReasonOption = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, oldest first.")] = 50,
    json_output: JsonOption = False,
) -> None:
    """List a subscription's dead letters, oldest first."""
    with client_for() as client:
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
    more = len(letters) > limit
    if json_output:
        print_json(letters[:limit])
        return
    if not letters:
        show(f"no dead letters in {subscription}" + (" match" if name or reason else ""))
        return
    grid = table(
        f"Dead letters of {subscription}",
        caption=f"only the first {limit} are shown; raise --limit for more" if more else None,
    )
    add_id_column(grid, "event id")
    grid.add_column("name", no_wrap=True)
    grid.add_column("reason", no_wrap=True)
    grid.add_column("attempts", justify="right")
    grid.add_column("last error")
    grid.add_column("died at", no_wrap=True)
    for letter in letters[:limit]:
        grid.add_row(
            letter.event_id,
            letter.name,
            letter.reason,
            str(letter.attempts),
            _shorten(letter.last_error, ERROR_WIDTH_CHARS),
            when(letter.dead_time),
        )
    show(grid)


def _dead_letter_table(letter: DeadLetterInfo) -> Table:
    grid = table(f"Dead letter {letter.event_id}", show_header=False)
    grid.add_column("field", no_wrap=True)
    grid.add_column("value", overflow="fold")
    rows = [
        ("event id", letter.event_id),
        ("name", letter.name),
        ("subscription", letter.subscription),
        ("reason", letter.reason),
        ("why", letter.description),
        ("attempts", str(letter.attempts)),
        ("last error", letter.last_error or "-"),
        ("died at", when(letter.dead_time)),
        ("published", when(letter.publish_time)),
        ("priority", str(letter.priority)),
        ("ordering key", letter.ordering_key or "-"),
        ("dedup id", letter.dedup_id or "-"),
        ("trace id", letter.trace_id or "-"),
        ("headers", ", ".join(f"{k}={v}" for k, v in letter.headers.items()) or "-"),
        ("data", _data_text(letter.data, letter.content_type)),
    ]
    for row in rows:
        grid.add_row(*row)
    return grid


@dlq_app.command("show")
@connected
def dlq_show(
    subscription: SubscriptionArgument,
    event_id: Annotated[str, typer.Argument(help="Event id, as `broker dlq list` shows it.")],
    json_output: JsonOption = False,
) -> None:
    """Show one dead letter: the event, why it died, and its attempt history."""
    with client_for() as client:
        letter = client.get_dead_letter(subscription, event_id)
    if letter is None:
        raise CommandError(
            f"event {event_id} is not a dead letter of {subscription} "
            f"(`broker events show {event_id}` says where it stands)",
            EXIT_FAILED,
        )
    if json_output:
        print_json(letter)
        return
    show(_dead_letter_table(letter))
    history = table("Attempts, oldest first")
    history.add_column("attempt", justify="right")
    for column in ("delivered", "ended"):
        history.add_column(column, no_wrap=True)
    for column in ("consumer", "outcome", "error"):
        history.add_column(column)
    for attempt in letter.history:
        history.add_row(
            str(attempt.attempt),
            when(attempt.delivered_time),
            when(attempt.end_time),
            attempt.consumer,
            attempt.outcome,
            attempt.error or "-",
        )
    show(history if letter.history else "no attempts: it died before it was delivered")


@dlq_app.command("redrive")
@connected
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
) -> None:
    """Deliver dead letters again, counting their attempts afresh from 1.

    Name the events, or select them with --name and --reason, or take every one
    with --all. A selection is listed first and confirmed (unless --yes), then
    redriven in calls of 100 ids with a progress bar.
    """
    if event_ids and redrive_all:
        raise usage_error("give EVENT_IDS or --all, not both")
    if not event_ids and not (name or reason or redrive_all):
        raise usage_error(
            f"this would redrive every dead letter of {subscription}: "
            "say so with --all, or give EVENT_IDS, --name or --reason"
        )
    with client_for() as client:
        ids = list(event_ids or [])
        if not ids:
            letters = client.iter_dead_letters(
                subscription, name=name, reason=_reason(reason), page_size=DLQ_PAGE_SIZE
            )
            ids = [letter.event_id for letter in letters]
            if not ids:
                show(f"no dead letters in {subscription} match")
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
    show(f"redrove {_dead_letters(redriven)} of {subscription}{note}")


# -- stats -----------------------------------------------------------------------


def _stats_table(stats: Stats) -> Table:
    grid = Table(
        title=f"{stats.events} events stored, {stats.publish_rate:.1f} published/s",
        caption=when(datetime.now(UTC)),
    )
    grid.add_column("subscription", no_wrap=True)
    columns = ("scheduled", "ready", "in flight", "acked", "dead")
    for column in (*columns, "consumers", "delivered/s", "acked/s"):
        grid.add_column(column, justify="right")
    for sub in stats.subscriptions:
        grid.add_row(
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
    return grid


def stats(
    subscription: Annotated[str | None, typer.Option(help="Only this subscription.")] = None,
    watch: Annotated[
        float | None,
        typer.Option(
            min=0.2, metavar="SECONDS", help="Refresh every this many seconds until Ctrl-C."
        ),
    ] = None,
    json_output: Annotated[
        bool,
        typer.Option("--json", help="Print JSON (with --watch: one object per line, per refresh)."),
    ] = False,
) -> None:
    """Counts and rates per subscription.

    Scheduled, ready, in flight, acked and dead deliveries; consumers; delivery and
    ack rates per second.
    """
    with client_for() as client:
        fetch: Callable[[], Stats] = lambda: client.get_stats(subscription)  # noqa: E731
        if watch is None:
            if json_output:
                print_json(fetch())
            else:
                show(_stats_table(fetch()))
            return
        try:
            if json_output:
                while True:
                    print_json(fetch(), compact=True)
                    time.sleep(watch)
            console = stdout_console()
            with Live(_stats_table(fetch()), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(watch)
                    live.update(_stats_table(fetch()), refresh=True)
        except KeyboardInterrupt:
            return


def register(app: typer.Typer) -> None:
    """Add these commands to the `broker` command."""
    app.command()(connected(publish))
    app.command()(connected(tail))
    app.command()(connected(stats))
    app.add_typer(subs_app, name="subs")
    app.add_typer(events_app, name="events")
    app.add_typer(dlq_app, name="dlq")
