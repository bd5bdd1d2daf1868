"""`broker keys`: make, list and revoke API keys, in the broker's database.

These commands open the database directly (the same `--database-url` as
`broker serve`), so the first key can be made before any broker runs; running
brokers see a change within a couple of seconds. A new key's secret is printed
once and stored only as its SHA-256.

Only `broker serve` creates a database: these commands refuse one that does not
exist, or has no broker schema yet, naming the database they looked for (a
SQLite file is opened with `mode=rw`, which never creates it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import sqlalchemy as sa
import typer
from rich.console import Console

from broker import config
from broker.api.auth import new_key
from broker.cli_errors import EXIT_FAILED, CommandError, usage_error
from broker.cli_output import JsonOption, print_json, show, table, when
from broker.domain import Scope
from broker.names import filter_error
from broker.storage import Storage, StorageUnavailableError, open_storage

keys_app = typer.Typer(
    help="Manage API keys (in the database; the broker need not run).", no_args_is_help=True
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
#: How a person names the database, in errors.
DATABASE_SETTING = "--database-url / BROKER_DATABASE_URL"
#: A table every broker database has once `broker serve` has created its schema.
SCHEMA_TABLE = "api_keys"

DatabaseOption = Annotated[
    str,
    typer.Option(
        envvar="BROKER_DATABASE_URL",
        help="The broker's database: sqlite:///PATH (or a path) or postgresql+psycopg://...",
    ),
]


def existing_database_url(database_url: str) -> str:
    """The URL to open an existing database with, never creating one.

    A plain path is a SQLite file. A SQLite file must exist, and is opened with
    `mode=rw` so that a file removed meanwhile is not created again; a PostgreSQL
    database must exist (the server refuses to connect to one that does not).

    Raises:
        CommandError: The SQLite file does not exist (exit status 2).

    """
    url = database_url if "://" in database_url else f"sqlite:///{database_url}"
    if not url.startswith("sqlite"):
        return url
    parsed = sa.engine.make_url(url)
    path = parsed.database or ""
    if path in ("", ":memory:") or path.startswith("file:"):
        return url
    file = Path(path).resolve()
    if not file.is_file():
        raise usage_error(
            f"no broker database at {file} ({DATABASE_SETTING}); "
            "`broker serve` creates it, or name the broker's database"
        )
    return f"sqlite:///file:{quote(str(file))}?mode=rw&uri=true"


def _has_schema(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return sa.inspect(conn).has_table(SCHEMA_TABLE)
    finally:
        engine.dispose()


@contextmanager
def _storage(database_url: str) -> Iterator[Storage]:
    """The broker's existing database, its schema brought up to date."""
    url = existing_database_url(database_url)
    parsed = sa.engine.make_url(url)
    shown = (
        parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() != "sqlite"
        else str(Path((parsed.database or "").removeprefix("file:")))
    )
    try:
        if not _has_schema(url):
            raise usage_error(
                f"{shown} has no broker schema ({DATABASE_SETTING}); "
                "`broker serve` creates it, or name the broker's database"
            )
    except sa.exc.OperationalError as error:
        raise CommandError(
            f"cannot open the database {shown} ({DATABASE_SETTING}): {error.orig}", EXIT_FAILED
        ) from error
    storage = open_storage(url)
    try:
        storage.migrate()
        yield storage
    except StorageUnavailableError as error:
        raise CommandError(
            f"the database {shown} cannot be reached ({DATABASE_SETTING}): {error}", EXIT_FAILED
        ) from error
    finally:
        storage.close()


def _now_us() -> int:
    return time.time_ns() // 1000


def _time(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, UTC)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who the key is for, e.g. billing-service.")],
    scope: Annotated[
        list[Scope],
        typer.Option("--scope", "-s", help="publish, subscribe or admin; repeat for several."),
    ],
    names: Annotated[
        list[str] | None,
        typer.Option(
            "--names",
            "-n",
            help="Limit to these name patterns (events published, subscriptions used).",
        ),
    ] = None,
    rate: Annotated[
        int | None,
        typer.Option(
            "--rate", min=1, help="Publish at most this many events per second (per broker)."
        ),
    ] = None,
    database_url: DatabaseOption = config.DEFAULT_DATABASE_URL,
) -> None:
    """Make a key and print it once: keep it, the broker cannot show it again."""
    for pattern in names or ():
        problem = filter_error(pattern)
        if problem is not None:
            raise typer.BadParameter(f"{pattern!r} {problem}", param_hint="--names")
    token, key = new_key(name, scope, names or (), _now_us(), publish_rate=rate)
    with _storage(database_url) as storage, storage.write() as tx:
        tx.api_key_create(key)
    err.print(f"created key {key.key_id} for {name!r}: {', '.join(sorted(key.scopes))}")
    print(token)


@keys_app.command("list")
def keys_list(
    json_output: JsonOption = False, database_url: DatabaseOption = config.DEFAULT_DATABASE_URL
) -> None:
    """Show every key: id, name, scopes, name patterns, when made and revoked."""
    with _storage(database_url) as storage, storage.read() as tx:
        keys = tx.api_key_list()
    if json_output:
        print_json(
            [
                {
                    "key_id": key.key_id,
                    "name": key.name,
                    "scopes": sorted(key.scopes),
                    "names": list(key.patterns),
                    "rate": key.publish_rate,
                    "create_time": _time(key.created_at_us),
                    "revoke_time": _time(key.revoked_at_us),
                }
                for key in keys
            ]
        )
        return
    grid = table(f"{len(keys)} API keys")
    grid.add_column("id", no_wrap=True)
    grid.add_column("name", no_wrap=True)
    for column in ("scopes", "names", "rate/s"):
        grid.add_column(column)
    for column in ("created", "revoked"):
        grid.add_column(column, no_wrap=True)
    for key in keys:
        grid.add_row(
            key.key_id,
            key.name,
            ", ".join(sorted(key.scopes)),
            ", ".join(key.patterns) or "any",
            str(key.publish_rate) if key.publish_rate else "-",
            when(_time(key.created_at_us)),
            when(_time(key.revoked_at_us)),
        )
    show(grid)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `broker keys list`).")],
    database_url: DatabaseOption = config.DEFAULT_DATABASE_URL,
) -> None:
    """Revoke a key: calls with it fail with UNAUTHENTICATED within seconds."""
    with _storage(database_url) as storage, storage.write() as tx:
        revoked = tx.api_key_revoke(key_id, _now_us())
    if not revoked:
        raise CommandError(f"no key {key_id!r}, or it was revoked already", EXIT_FAILED)
    err.print(f"revoked key {key_id}")


def register(app: typer.Typer) -> None:
    """Add `broker keys` to the `broker` command."""
    app.add_typer(keys_app, name="keys")
