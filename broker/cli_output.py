"""What the `broker` command prints: tables for people, JSON for scripts.

Tables take the terminal's width on a terminal and never cut a value when
piped or redirected, so an id copied from `broker dlq list | grep ...` is whole.
Id columns never wrap or shorten. Every reading command takes `--json`: one JSON
document on stdout, times as ISO-8601 UTC (`2026-11-29T21:05:03.120000Z`) and
lengths of time as seconds (numbers). In tables, times are UTC to the second:
`2026-11-29 21:05:03Z`, as the dashboard shows them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.table import Table

#: Width given to tables written to a pipe or a file: wide enough never to cut.
PIPE_WIDTH_CHARS = 10_000
#: Width of an event id (a ULID): id columns are at least this wide.
ID_WIDTH_CHARS = 26

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON (times in UTC, lengths of time in seconds).")
]


def stdout_console() -> Console:
    """A console on stdout: the terminal's width on a terminal, else wide enough never to cut.

    Made when needed, not at import, so that it sees the stdout of the moment.
    """
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = PIPE_WIDTH_CHARS
    return console


def show(renderable: RenderableType) -> None:
    """Print a table or text on stdout (see `stdout_console`)."""
    stdout_console().print(renderable)


def table(title: str | None = None, **options: Any) -> Table:
    """A table in the house look."""
    return Table(title=title, title_justify="left", **options)


def add_id_column(grid: Table, header: str) -> None:
    """A column of ids: never wrapped, never shortened."""
    grid.add_column(header, no_wrap=True, min_width=ID_WIDTH_CHARS, overflow="fold")


def when(value: datetime | None) -> str:
    """A time in UTC to the second, `2026-11-29 21:05:03Z`; `-` for none."""
    if value is None:
        return "-"
    moment = value.astimezone(UTC) if value.tzinfo else value
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def seconds(value: timedelta | None) -> str:
    """A length of time in its largest whole unit: `45s`, `5m`, `7d`; `-` for none."""
    if value is None:
        return "-"
    total = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size and total % size == 0:
            return f"{int(total // size)}{unit}"
    return f"{total:g}s"


def to_json(value: Any) -> Any:
    """A plain JSON value from the client's result types (dataclasses, times, bytes)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value
        return moment.replace(tzinfo=None).isoformat() + "Z"
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def print_json(value: Any, *, compact: bool = False) -> None:
    """Write a value as JSON on stdout: indented, or on one line (`compact`, for streams)."""
    text = json.dumps(to_json(value), indent=None if compact else 2, ensure_ascii=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
