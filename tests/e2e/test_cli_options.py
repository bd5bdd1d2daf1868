"""The connection options of the `broker` command: the same before the command and after it."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator

import pytest

from broker.config import Settings
from broker.domain import Scope
from tests.conftest import BrokerThread
from tests.e2e.cli import BrokerCli
from tests.e2e.keys import make_key
from tests.e2e.test_tls import (  # noqa: F401 (fixtures: a broker with mutual TLS, on SQLite)
    Certificates,
    broker_settings,
    certificates,
    mtls_broker,
)


def _nobody_listening() -> str:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{free.getsockname()[1]}"


@pytest.mark.parametrize(
    "where",
    [
        lambda target: ["--target", target, "subs", "list"],
        lambda target: ["subs", "list", "--target", target],
        lambda target: ["subs", "--target", target, "list"],
        lambda target: ["--target", _nobody_listening(), "subs", "list", "--target", target],
    ],
    ids=["before", "after", "between", "after-wins"],
)
def test_target_goes_before_or_after_the_command_and_beats_the_variable(
    broker_target: str, where: object
) -> None:
    assert callable(where)
    cli = BrokerCli({"EVENTBROKER_TARGET": _nobody_listening()})
    cli.env.pop("EVENTBROKER_API_KEY", None)
    result = cli.invoke(where(broker_target))
    assert result.exit_code == 0, result.output
    assert "Subscriptions" in result.stdout


@pytest.fixture
def keyed_broker(broker_settings: Settings) -> Iterator[tuple[BrokerThread, str]]:  # noqa: F811
    broker = BrokerThread(dataclasses.replace(broker_settings, api_key_cache_s=0.0)).start()
    try:
        yield broker, make_key(broker_settings.database_url, Scope.ADMIN, Scope.PUBLISH)
    finally:
        broker.stop()


def test_api_key_goes_before_or_after_the_command(
    keyed_broker: tuple[BrokerThread, str],
) -> None:
    broker, key = keyed_broker
    cli = BrokerCli({"EVENTBROKER_TARGET": broker.target})
    cli.env.pop("EVENTBROKER_API_KEY", None)
    refused = cli.invoke(["stats"])
    assert refused.exit_code == 1 and "UNAUTHENTICATED" in refused.stderr
    for args in (["--api-key", key, "stats"], ["stats", "--api-key", key]):
        result = cli.invoke(args)
        assert result.exit_code == 0, (args, result.output)
    published = cli.invoke(["publish", "user.joined", "--api-key", key])
    assert published.stdout.startswith("created "), published.output


def test_tls_options_go_before_or_after_the_command(
    mtls_broker: BrokerThread,  # noqa: F811
    certificates: Certificates,  # noqa: F811
) -> None:
    files = [
        "--tls-ca", str(certificates.ca),
        "--tls-cert", str(certificates.client_cert),
        "--tls-key", str(certificates.client_key),
    ]  # fmt: skip
    cli = BrokerCli({"EVENTBROKER_TARGET": mtls_broker.target})
    for name in [n for n in cli.env if n.startswith("EVENTBROKER_TLS")]:
        cli.env.pop(name)
    after = cli.invoke(["publish", "user.joined", "--timeout", "5", *files])
    assert after.exit_code == 0 and after.stdout.startswith("created "), after.output
    split = cli.invoke(["--tls-ca", str(certificates.ca), "stats", *files[2:]])
    assert split.exit_code == 0, split.output
    half = cli.invoke(["stats", *files[:4]])
    assert half.exit_code == 2, half.output
    assert half.stderr == (
        "error: --tls-cert and --tls-key go together (mutual TLS), before or after the command\n"
    )
