"""Where the `broker` commands that talk to a broker connect: one set of options.

`--target`, `--api-key` and the TLS options are declared once, here, and taken
both before the command and after it: `broker --target HOST:PORT subs list` and
`broker subs list --target HOST:PORT` mean the same. When both are given, the
one after the command wins. What no option gives comes from the client's
environment variables (`EVENTBROKER_TARGET`, `EVENTBROKER_API_KEY`,
`EVENTBROKER_TLS*`), then the defaults, as for `eventbroker.Client()`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, get_type_hints

import typer

from broker.cli_errors import usage_error
from eventbroker import TLSConfig

TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target",
        metavar="HOST:PORT",
        help="Broker address [EVENTBROKER_TARGET, else 127.0.0.1:50051].",
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", metavar="KEY", help="Bearer key, if the broker needs one "
                 "[EVENTBROKER_API_KEY]."),
]  # fmt: skip
TlsOption = Annotated[
    bool,
    typer.Option("--tls", help="Talk to the broker over TLS (default roots) [EVENTBROKER_TLS]."),
]
TlsCaOption = Annotated[
    str | None,
    typer.Option(
        "--tls-ca", metavar="PEM", help="TLS: the CA that signed the broker [EVENTBROKER_TLS_CA]."
    ),
]
TlsCertOption = Annotated[
    str | None,
    typer.Option(
        "--tls-cert",
        metavar="PEM",
        help="Mutual TLS: this client's certificate [EVENTBROKER_TLS_CERT].",
    ),
]
TlsKeyOption = Annotated[
    str | None,
    typer.Option(
        "--tls-key", metavar="PEM", help="Mutual TLS: this client's key [EVENTBROKER_TLS_KEY]."
    ),
]
TlsServerNameOption = Annotated[
    str | None,
    typer.Option(
        "--tls-server-name",
        metavar="NAME",
        help="TLS: the name to check the broker's certificate against, when it is not the "
        "target's host [EVENTBROKER_TLS_SERVER_NAME].",
    ),
]

#: The options, by parameter name: what a command declared with `connected` takes too.
_OPTIONS: dict[str, tuple[Any, Any]] = {
    "target": (TargetOption, None),
    "api_key": (ApiKeyOption, None),
    "tls": (TlsOption, False),
    "tls_ca": (TlsCaOption, None),
    "tls_cert": (TlsCertOption, None),
    "tls_key": (TlsKeyOption, None),
    "tls_server_name": (TlsServerNameOption, None),
}
_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=option)
    for name, (option, default) in _OPTIONS.items()
]

#: The connection options given on this command line so far (before, then after the command).
_given: dict[str, Any] = {}


def connected(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with the connection options added to the ones it declares.

    The command itself does not see them: what was given is kept for `client_for`
    and `tls_config`. Typer reads the options from the returned function's
    signature, so they show in the command's `--help` like its own.
    """
    signature = inspect.signature(command, eval_str=True)

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        given = {name: kwargs.pop(name) for name in _OPTIONS}
        remember(given)
        command(*args, **kwargs)

    parameters = [*signature.parameters.values(), *_PARAMETERS]
    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {
        **get_type_hints(command, include_extras=True),
        **{parameter.name: parameter.annotation for parameter in _PARAMETERS},
    }
    return run


def forget() -> None:
    """Start a command line afresh: nothing given yet."""
    _given.clear()


def remember(given: dict[str, Any]) -> None:
    """Keep the options given (not left out): later ones win over earlier ones."""
    _given.update({k: v for k, v in given.items() if v not in (None, False)})


def target() -> str | None:
    """`--target` as given, or None for the client's own (EVENTBROKER_TARGET, the default)."""
    value: str | None = _given.get("target")
    return value


def api_key() -> str | None:
    """`--api-key` as given, or None for the client's own (EVENTBROKER_API_KEY)."""
    value: str | None = _given.get("api_key")
    return value


def tls_config() -> TLSConfig | None:
    """TLS as the options say, over `EVENTBROKER_TLS*`; None when no TLS option was given.

    Raises:
        CommandError: `--tls-cert` without `--tls-key`, or the other way round (exit 2).

    """
    given = _given
    fields = {
        "ca_file": given.get("tls_ca"),
        "cert_file": given.get("tls_cert"),
        "key_file": given.get("tls_key"),
        "server_name": given.get("tls_server_name"),
    }
    if not given.get("tls") and not any(fields.values()):
        return None
    base = TLSConfig.from_environment() or TLSConfig()
    try:
        return dataclasses.replace(base, **{k: v for k, v in fields.items() if v})
    except ValueError as error:
        raise usage_error(
            "--tls-cert and --tls-key go together (mutual TLS), before or after the command"
        ) from error
