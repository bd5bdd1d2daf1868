"""How the `broker` command fails: one line on stderr and an exit status, not a traceback.

Exit statuses, as click and most command lines use them:

- 0: done;
- 1: the command could not be done: the broker cannot be reached, or it refused for
  a reason other than the input (not found, already exists, permission, unavailable);
- 2: what was typed is wrong: an unknown flag, a value out of range, a database file
  that does not exist, an address already in use, or a request the broker refused as
  invalid (`INVALID_ARGUMENT`, `OUT_OF_RANGE`);
- 130: interrupted (Ctrl-C).

A bug still ends in a traceback; `broker --debug ...` prints one for every error.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence

import grpc
import typer
from rich.console import Console
from rich.markup import escape
from typer._click import exceptions as click_errors

from eventbroker import BrokerError

#: Exit status of a usage error: a flag, an argument, an address or a file is wrong.
EXIT_USAGE = 2
#: Exit status of a command that could not be done (the broker refused or is away).
EXIT_FAILED = 1
#: Exit status after Ctrl-C, as shells report SIGINT.
EXIT_INTERRUPTED = 130
#: Status codes that mean the request itself was wrong: exit 2, like a bad flag.
INPUT_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE})

err = Console(stderr=True, highlight=False, soft_wrap=True)


class CommandError(Exception):
    """An error the person can act on: printed as one line, then exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def usage_error(message: str) -> CommandError:
    """A mistake in what was typed (exit status 2)."""
    return CommandError(message, EXIT_USAGE)


def broker_error(error: BrokerError, target: str) -> CommandError:
    """One line for a failed call: who could not be reached, or what the broker said.

    Args:
        error: The client's error.
        target: The broker address the command dialled, to name it when unreachable.

    """
    if error.code is grpc.StatusCode.UNAVAILABLE and error.reason is None:
        # No details: the broker never answered (refused, no route, name not found).
        cause = error.message.rsplit(": ", 1)[-1].strip() or error.message
        message = f"cannot reach the broker at {target} (--target / EVENTBROKER_TARGET): {cause}"
        exit_code = EXIT_FAILED
    else:
        message = str(error)  # the code, the message with the bad values, the reason
        exit_code = EXIT_USAGE if error.code in INPUT_CODES else EXIT_FAILED
    if error.attempts > 1:
        message += f" (gave up after {error.attempts} attempts; --timeout says how long to try)"
    return CommandError(message, exit_code)


def report(message: str) -> None:
    """Print an error line on stderr (in red on a terminal)."""
    err.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)


def warn(message: str) -> None:
    """Print a warning line on stderr (in yellow on a terminal): the command goes on."""
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", markup=True, highlight=False)


def notice(message: str) -> None:
    """Print a line on stderr about what the command is doing (dim on a terminal)."""
    err.print(f"[dim]{escape(message)}[/dim]", markup=True, highlight=False)


def run(app: typer.Typer, args: Sequence[str] | None = None) -> int:
    """Run the `broker` command and return its exit status.

    Usage errors (click's: an unknown flag, a bad value), `CommandError` and
    `BrokerError` become one line on stderr; other exceptions are bugs and keep
    their traceback. `--debug` anywhere before `--` prints a traceback for every
    error.
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
    try:
        result = app(args=argv, prog_name="broker", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as error:
        error.show()
        return error.exit_code
    except click_errors.ClickException as error:
        return _fail(error.format_message(), error.exit_code, debug)
    except typer.Abort:
        report("aborted")
        return EXIT_FAILED
    except CommandError as error:
        return _fail(error.message, error.exit_code, debug)
    except BrokerError as error:
        failure = broker_error(error, "the broker")
        return _fail(failure.message, failure.exit_code, debug)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0


def _fail(message: str, exit_code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    report(message)
    return exit_code
