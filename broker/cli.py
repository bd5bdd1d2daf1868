"""The `broker` command line: run the broker, and talk to one as a person would."""

from __future__ import annotations

import asyncio
import sys
from importlib import metadata
from typing import Annotated

import typer

from broker import cli_connection, config
from broker.cli_connection import connected
from broker.cli_errors import run, usage_error
from broker.config import Settings, SettingsError

app = typer.Typer(
    help="A durable event broker spoken to over gRPC.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"max_content_width": 120},
    # Plain help, wrapped to the terminal and never cut; a bug's traceback without locals.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def version() -> str:
    """The installed version of the broker (package `eventbroker-server`)."""
    return metadata.version("eventbroker-server")


def _print_version(value: bool) -> None:
    if value:
        print(f"broker {version()}")
        raise typer.Exit()


@app.callback()
@connected
def _group(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
    _debug: Annotated[
        bool,
        typer.Option("--debug", help="Print a traceback for every error, not one line."),
    ] = False,
) -> None:
    """A durable event broker spoken to over gRPC.

    The connection options (--target, --api-key, --tls...) go before the command
    or after it, as you like; they apply to the commands that talk to a broker
    (publish, tail, subs, events, dlq, stats). The environment variables named
    in brackets apply when an option is not given.
    """


def _sqlite_url(value: str) -> str:
    """Accept a plain file path as a SQLite database."""
    return value if "://" in value else f"sqlite:///{value}"


@app.command()
def serve(
    listen: Annotated[
        str, typer.Option(envvar="BROKER_LISTEN", help="gRPC address HOST:PORT.")
    ] = config.DEFAULT_LISTEN,
    database_url: Annotated[
        str,
        typer.Option(
            envvar="BROKER_DATABASE_URL",
            help="sqlite:///PATH (or a file path) or postgresql+psycopg://USER@HOST/DB.",
        ),
    ] = config.DEFAULT_DATABASE_URL,
    http_listen: Annotated[
        str, typer.Option(envvar="BROKER_HTTP_LISTEN", help="HTTP address (dashboard, metrics).")
    ] = config.DEFAULT_HTTP_LISTEN,
    event_max_bytes: Annotated[
        int,
        typer.Option(envvar="BROKER_EVENT_MAX_BYTES", help="Largest event (name, data, headers)."),
    ] = config.EVENT_MAX_BYTES_DEFAULT,
    batch_max_events: Annotated[
        int, typer.Option(envvar="BROKER_BATCH_MAX_EVENTS", help="Most events in one BatchPublish.")
    ] = config.BATCH_MAX_EVENTS_DEFAULT,
    batch_max_bytes: Annotated[
        int, typer.Option(envvar="BROKER_BATCH_MAX_BYTES", help="Largest BatchPublish request.")
    ] = config.BATCH_MAX_BYTES_DEFAULT,
    dedup_window_s: Annotated[
        float, typer.Option(envvar="BROKER_DEDUP_WINDOW_S", help="How long an event id dedups.")
    ] = config.DEDUP_WINDOW_S_DEFAULT,
    shutdown_grace_s: Annotated[
        float, typer.Option(envvar="BROKER_SHUTDOWN_GRACE_S", help="Grace period on SIGTERM.")
    ] = 10.0,
    log_level: Annotated[
        str, typer.Option(envvar="BROKER_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    max_streams: Annotated[
        int, typer.Option(envvar="BROKER_MAX_STREAMS", help="Subscribe streams open at most.")
    ] = 20_000,
    max_streams_per_connection: Annotated[
        int,
        typer.Option(
            envvar="BROKER_MAX_STREAMS_PER_CONNECTION",
            help="Subscribe streams open at most over one client connection.",
        ),
    ] = 1_000,
    tls_cert: Annotated[
        str | None,
        typer.Option(envvar="BROKER_TLS_CERT", help="TLS certificate chain (PEM); with --tls-key."),
    ] = None,
    tls_key: Annotated[
        str | None,
        typer.Option(envvar="BROKER_TLS_KEY", help="TLS private key (PEM)."),
    ] = None,
    tls_client_ca: Annotated[
        str | None,
        typer.Option(
            envvar="BROKER_TLS_CLIENT_CA",
            help="Mutual TLS: require client certificates signed by this CA (PEM).",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            envvar="BROKER_INSECURE",
            help="Listen beyond loopback with no API key (anyone may call).",
        ),
    ] = False,
    processes: Annotated[
        int,
        typer.Option(
            envvar="BROKER_PROCESSES",
            help="Broker processes sharing the port (several need PostgreSQL).",
        ),
    ] = 1,
    metrics_exemplars: Annotated[
        bool,
        typer.Option(
            envvar="BROKER_METRICS_EXEMPLARS",
            help="Trace ids as exemplars of the delivery latency (OpenMetrics scrapes).",
        ),
    ] = False,
) -> None:
    """Run the broker until SIGTERM or Ctrl-C."""
    from broker.app import serve as run_broker
    from broker.logs import configure_logging
    from broker.supervisor import Supervisor, check_processes

    configure_logging(log_level)
    try:
        settings = Settings(
            listen=listen,
            database_url=_sqlite_url(database_url),
            http_listen=http_listen,
            event_max_bytes=event_max_bytes,
            batch_max_events=batch_max_events,
            batch_max_bytes=batch_max_bytes,
            dedup_window_s=dedup_window_s,
            shutdown_grace_s=shutdown_grace_s,
            insecure=insecure,
            max_streams=max_streams,
            max_streams_per_connection=max_streams_per_connection,
            tls_cert_file=tls_cert,
            tls_key_file=tls_key,
            tls_client_ca_file=tls_client_ca,
            metrics_exemplars=metrics_exemplars,
        )
        check_processes(settings, processes)
    except SettingsError as error:
        raise usage_error(str(error)) from error
    try:
        if processes > 1:
            raise typer.Exit(Supervisor(settings, processes, log_level).run())
        asyncio.run(run_broker(settings))
    except SettingsError as error:
        raise usage_error(str(error)) from error


def main() -> None:
    """Entry point of the `broker` command: exit with the status `run` gives."""
    cli_connection.forget()
    sys.exit(run(app))


def _register_people_commands() -> None:
    from broker import cli_commands, cli_keys

    cli_commands.register(app)
    cli_keys.register(app)


_register_people_commands()
