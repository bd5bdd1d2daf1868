"""TLS and mutual TLS from certificate files, for the broker, the client and the CLI."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.config import Settings, SettingsError
from eventbroker import Client, TLSConfig, Unavailable
from tests.conftest import TEST_SETTINGS, BrokerThread, sqlite_url


@dataclasses.dataclass(frozen=True)
class Certificates:
    """A private CA, a broker certificate for localhost/127.0.0.1, a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(directory: Path, name: str, extensions: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("certs")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca",
        cwd=directory,
    )  # fmt: skip
    _signed(directory, "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _signed(directory, "client", "extendedKeyUsage=clientAuth\n")
    return Certificates(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    """TLS does not depend on the database: SQLite only."""
    return dataclasses.replace(TEST_SETTINGS, database_url=sqlite_url(tmp_path))


def running(settings: Settings) -> Iterator[BrokerThread]:
    broker = BrokerThread(settings).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def tls_broker(broker_settings: Settings, certificates: Certificates) -> Iterator[BrokerThread]:
    yield from running(
        dataclasses.replace(
            broker_settings,
            tls_cert_file=str(certificates.server_cert),
            tls_key_file=str(certificates.server_key),
        )
    )


@pytest.fixture
def mtls_broker(broker_settings: Settings, certificates: Certificates) -> Iterator[BrokerThread]:
    yield from running(
        dataclasses.replace(
            broker_settings,
            tls_cert_file=str(certificates.server_cert),
            tls_key_file=str(certificates.server_key),
            tls_client_ca_file=str(certificates.ca),
        )
    )


def test_tls_client_verifies_the_broker_and_plaintext_is_refused(
    tls_broker: BrokerThread, certificates: Certificates
) -> None:
    with Client(tls_broker.target, tls=TLSConfig(ca_file=certificates.ca)) as client:
        assert client.publish("user.joined", {"over": "tls"}).event_id
    # A refused handshake is UNAVAILABLE, which publish retries for as long as it is
    # given: a second here.
    with Client(tls_broker.target) as plaintext, pytest.raises(Unavailable):
        plaintext.publish("user.joined", timeout=1)
    # Default roots do not know the private CA: the broker is not trusted.
    with Client(tls_broker.target, tls=True) as untrusting, pytest.raises(Unavailable):
        untrusting.publish("user.joined", timeout=1)


def test_mutual_tls_needs_a_client_certificate(
    mtls_broker: BrokerThread, certificates: Certificates
) -> None:
    without = TLSConfig(ca_file=certificates.ca)
    with Client(mtls_broker.target, tls=without) as client, pytest.raises(Unavailable):
        client.publish("user.joined", timeout=1)
    with_cert = TLSConfig(
        ca_file=certificates.ca,
        cert_file=certificates.client_cert,
        key_file=certificates.client_key,
    )
    with Client(mtls_broker.target, tls=with_cert) as client:
        assert client.publish("user.joined").event_id


def test_the_cli_takes_the_same_options(
    mtls_broker: BrokerThread, certificates: Certificates
) -> None:
    command = [
        sys.executable, "-c", "from broker.cli import main; main()",
        "--tls-ca", str(certificates.ca),
        "--tls-cert", str(certificates.client_cert),
        "--tls-key", str(certificates.client_key),
        "publish", "user.joined", '{"via":"cli"}', "--target", mtls_broker.target,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBROKER_")}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "created" in result.stdout


def test_tls_settings_are_checked_when_built() -> None:
    with pytest.raises(SettingsError, match="go together"):
        Settings(tls_key_file="broker.key")
    with pytest.raises(SettingsError, match="mutual TLS"):
        Settings(tls_client_ca_file="ca.pem")
