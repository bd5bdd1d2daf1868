"""Where and how to connect: target, API key and TLS from arguments or the environment.

`Client()` with no arguments dials `EVENTBROKER_TARGET` (default 127.0.0.1:50051,
the broker's own default) with the key in `EVENTBROKER_API_KEY`, so it works on
the machine that runs the broker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio

TARGET_ENV = "EVENTBROKER_TARGET"
API_KEY_ENV = "EVENTBROKER_API_KEY"
#: TLS from the environment: EVENTBROKER_TLS=1, and EVENTBROKER_TLS_CA / _CERT / _KEY /
#: _SERVER_NAME (any of them set also turns TLS on).
TLS_ENV = "EVENTBROKER_TLS"
_TLS_FILES = ("ca", "cert", "key", "server_name")
DEFAULT_TARGET = "127.0.0.1:50051"

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Ping an idle connection this often, so a dead broker or a dropped NAT entry is noticed;
#: above the broker's minimum ping interval (10 s), so it never answers "too many pings".
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
#: Cap on the channel's own reconnect backoff (grpc's default is 120 s), so a broker
#: back from an outage is found within seconds; callers pace their retries themselves.
MAX_RECONNECT_BACKOFF_MS = 5_000


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS settings; `TLSConfig()` (or `tls=True`) verifies the broker against the default roots.

    Attributes:
        ca_file: PEM file of the certificate authority that signed the broker's
            certificate (for a private CA); None for the default roots.
        cert_file: PEM client certificate, for mutual TLS.
        key_file: PEM private key of `cert_file`.
        server_name: Name to verify the broker's certificate against, when it differs
            from the target's host (e.g. dialing an IP address).

    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLSConfig: cert_file and key_file go together (mutual TLS)")

    @classmethod
    def from_environment(cls) -> TLSConfig | None:
        """TLS from `EVENTBROKER_TLS` (1/true) and the `EVENTBROKER_TLS_*` files, if set."""
        files = {name: os.environ.get(f"{TLS_ENV}_{name.upper()}") or None for name in _TLS_FILES}
        enabled = os.environ.get(TLS_ENV, "").lower() in ("1", "true", "yes", "on")
        if not enabled and not any(files.values()):
            return None
        return cls(
            ca_file=files["ca"],
            cert_file=files["cert"],
            key_file=files["key"],
            server_name=files["server_name"],
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials for grpc, reading the PEM files now."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """A resolved connection: arguments first, then the environment, then the defaults."""

    target: str
    api_key: str | None
    tls: TLSConfig | None

    @classmethod
    def resolve(
        cls, target: str | None, api_key: str | None, tls: bool | TLSConfig | None
    ) -> ConnectionConfig:
        """Fill what the caller left out from `EVENTBROKER_TARGET` / `EVENTBROKER_API_KEY`."""
        resolved_target = target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
        resolved_key = api_key or os.environ.get(API_KEY_ENV) or None
        if tls is None:
            tls = TLSConfig.from_environment()
        tls_config = TLSConfig() if tls is True else tls or None
        return cls(target=resolved_target, api_key=resolved_key, tls=tls_config)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata sent on every call: the API key as a bearer token, if there is one."""
        if self.api_key is None:
            return ()
        return (("authorization", f"Bearer {self.api_key}"),)

    def channel_options(self) -> list[tuple[str, int | str]]:
        """Message size, keepalive and reconnect options, and the TLS name override if any."""
        options: list[tuple[str, int | str]] = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ]
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options

    def sync_channel(self) -> grpc.Channel:
        """A blocking-API channel to the target."""
        if self.tls is None:
            return grpc.insecure_channel(self.target, options=self.channel_options())
        return grpc.secure_channel(
            self.target, self.tls.credentials(), options=self.channel_options()
        )

    def aio_channel(self) -> aio.Channel:
        """An asyncio channel to the target (create it inside the running event loop)."""
        if self.tls is None:
            return aio.insecure_channel(self.target, options=self.channel_options())
        return aio.secure_channel(
            self.target, self.tls.credentials(), options=self.channel_options()
        )


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None
