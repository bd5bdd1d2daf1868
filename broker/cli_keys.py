"""`broker keys`: make, list and revoke API keys, in the broker's database.

These commands open the database directly (the same `--database-url` as
`broker serve`), so the first key can be made before any exists; running
brokers see a change within a couple of seconds. A new key's secret is printed
once and stored only as its SHA-256.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from broker import config
from broker.api.auth import new_key
from broker.domain import Scope
from broker.names import filter_error
from broker.storage import Storage, StorageUnavailableError, open_storage

keys_app = typer.Typer(
    help="Manage API keys (in the database; the broker need not run).", no_args_is_help=True
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

DatabaseOption = Annotated[
    str,
    typer.Option(
        envvar="BROKER_DATABASE_URL",
        help="The broker's database: sqlite:///PATH (or a path) or postgresql+psycopg://...",
    ),
]


@contextmanager
def _storage(database_url: str) -> Iterator[Storage]:
    url = database_url if "://" in database_url else f"sqlite:///{database_url}"
    storage = open_storage(url)
    try:
        storage.migrate()
        yield storage
    except StorageUnavailableError as error:
        err.print(f"[red]error[/red] the database cannot be reached: {error}")
        raise typer.Exit(1) from error
    finally:
        storage.close()


def _now_us() -> int:
    return time.time_ns() // 1000


def _when(us: int | None) -> str:
    if us is None:
        return "-"
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="seconds")


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
    out.print(token)


@keys_app.command("list")
def keys_list(database_url: DatabaseOption = config.DEFAULT_DATABASE_URL) -> None:
    """Show every key: id, name, scopes, name patterns, when made and revoked."""
    with _storage(database_url) as storage, storage.read() as tx:
        keys = tx.api_key_list()
    table = Table(title=f"{len(keys)} API keys", title_justify="left")
    for column in ("id", "name", "scopes", "names", "rate/s", "created", "revoked"):
        table.add_column(column)
    for key in keys:
        table.add_row(
            key.key_id,
            key.name,
            ", ".join(sorted(key.scopes)),
            ", ".join(key.patterns) or "any",
            str(key.publish_rate) if key.publish_rate else "-",
            _when(key.created_at_us),
            _when(key.revoked_at_us),
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `broker keys list`).")],
    database_url: DatabaseOption = config.DEFAULT_DATABASE_URL,
) -> None:
    """Revoke a key: calls with it fail with UNAUTHENTICATED within seconds."""
    with _storage(database_url) as storage, storage.write() as tx:
        revoked = tx.api_key_revoke(key_id, _now_us())
    if not revoked:
        err.print(f"[red]error[/red] no key {key_id!r}, or it was revoked already")
        raise typer.Exit(1)
    err.print(f"revoked key {key_id}")


def register(app: typer.Typer) -> None:
    """Add `broker keys` to the `broker` command."""
    app.add_typer(keys_app, name="keys")
