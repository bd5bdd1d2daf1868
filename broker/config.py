"""Broker settings: one frozen object, validated when it is built.

Every setting has a `broker serve` flag and a `BROKER_*` environment variable
(see `broker.cli`); the defaults are those of the product specification.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from broker.domain import US_PER_S

# The duration limits the client checks too: defined once, in the client package.
from eventbroker.durations import ACK_DEADLINE_MAX_S as ACK_DEADLINE_MAX_S
from eventbroker.durations import ACK_DEADLINE_MIN_S as ACK_DEADLINE_MIN_S
from eventbroker.durations import MAX_DELAY_S as MAX_DELAY_S

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"
DEFAULT_DATABASE_URL = "sqlite:///broker.db"

EVENT_MAX_BYTES_DEFAULT = 256 * 1024
BATCH_MAX_EVENTS_DEFAULT = 1000
BATCH_MAX_BYTES_DEFAULT = 4 * 1024 * 1024
DEDUP_WINDOW_S_DEFAULT = 24 * 3600

ACK_DEADLINE_DEFAULT_S = 30
MAX_ATTEMPTS_DEFAULT = 20
MAX_ATTEMPTS_LIMIT = 1000
#: The highest cap of deliveries in flight per key a subscription may set.
MAX_IN_FLIGHT_PER_KEY_LIMIT = 100_000
#: The longest name of the header a subscription takes its keys from.
KEY_HEADER_MAX_LENGTH = 255
MIN_BACKOFF_DEFAULT_S = 1
MAX_BACKOFF_DEFAULT_S = 600
RETENTION_DEFAULT_S = 7 * 24 * 3600

PRIORITY_MIN = -50
PRIORITY_MAX = 50
HEADERS_MAX_COUNT = 64
DEDUP_ID_MAX_LENGTH = 255
ORDERING_KEY_MAX_LENGTH = 255
CONTENT_TYPE_MAX_LENGTH = 255
#: Deepest nesting of arrays and objects in event data (`{"a": [1]}` is 2 levels deep),
#: the same on every path: gRPC `data`, `binary_data` of a JSON type, and HTTP bodies.
#: It is what `google.protobuf.Value` can carry: protobuf's decoder stops at 100
#: nested messages, and each level of a JSON object costs three of them (Value, Struct,
#: map entry), so 32 object levels is the deepest a gRPC `data` field can be read at
#: all. JSON parsers allow more (Python's about 1,000, serde_json 128), so any data
#: they produce within this limit passes on every path, and deeper data gets a clear
#: INVALID_ARGUMENT instead of a parser's recursion error.
JSON_DEPTH_MAX = 32
#: How deep an HTTP body may nest before it is refused whole (field `body`), measured
#: before parsing: the data limit, the request around the data (3 levels at most, in
#: `{"events": [{"data": ...}]}`) and a little more, so that data a few levels too deep
#: is refused naming its own field; below the 48 levels of data protobuf's JSON
#: parser takes within a request, so its own depth error is never the answer.
JSON_BODY_DEPTH_MAX = JSON_DEPTH_MAX + 8

MAX_OUTSTANDING_DEFAULT = 100
MAX_OUTSTANDING_LIMIT = 10_000
MAX_BATCH_SIZE_DEFAULT = 100
MAX_BATCH_SIZE_LIMIT = 1000


#: Settings that `broker serve` takes as a flag and a `BROKER_*` variable (the others are
#: for tests and embedding). The flag is the name in kebab case without a `_file`
#: suffix (`tls_cert_file`: `--tls-cert`, `BROKER_TLS_CERT`).
CLI_SETTINGS = frozenset(
    {
        "listen",
        "database_url",
        "http_listen",
        "event_max_bytes",
        "batch_max_events",
        "batch_max_bytes",
        "dedup_window_s",
        "shutdown_grace_s",
        "insecure",
        "max_streams",
        "max_streams_per_connection",
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
        "processes",
        "log_level",
    }
)


def setting_name(name: str) -> str:
    """How a person sets it: `--listen / BROKER_LISTEN`, or the field name if no flag."""
    if name not in CLI_SETTINGS:
        return name
    flag = name.removesuffix("_file")
    return f"--{flag.replace('_', '-')} / BROKER_{flag.upper()}"


class SettingsError(ValueError):
    """A setting has a value the broker cannot run with; the message names its flag."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `broker serve` can be told."""

    listen: str = DEFAULT_LISTEN
    database_url: str = DEFAULT_DATABASE_URL
    http_listen: str = DEFAULT_HTTP_LISTEN
    event_max_bytes: int = EVENT_MAX_BYTES_DEFAULT
    batch_max_events: int = BATCH_MAX_EVENTS_DEFAULT
    batch_max_bytes: int = BATCH_MAX_BYTES_DEFAULT
    dedup_window_s: float = DEDUP_WINDOW_S_DEFAULT
    #: Longest the dispatcher sleeps without a wake-up (polling fallback).
    poll_interval_s: float = 1.0
    #: How often expired leases are looked for.
    reaper_interval_s: float = 0.5
    #: Grace period for in-flight calls on shutdown.
    shutdown_grace_s: float = 10.0
    #: Most operations committed in one transaction (group commit).
    commit_batch_max: int = 256
    #: Under load (the last transaction served several callers and the next is due at
    #: once), how long group commit waits for more callers before it commits, so that
    #: one flush serves them all (PostgreSQL's commit_delay). 0 turns it off.
    commit_delay_s: float = 0.001
    #: How long an event no subscription still holds a delivery of is kept.
    event_retention_s: float = RETENTION_DEFAULT_S
    #: How often maximum ages and retention are applied.
    maintenance_interval_s: float = 10.0
    #: Share the port with other broker processes (`SO_REUSEPORT`); off, a port in use
    #: is an error, so a second broker started by mistake does not quietly take half
    #: the connections.
    reuse_port: bool = False
    #: Listen beyond loopback even though no API key exists (anyone may call).
    insecure: bool = False
    #: Subscribe streams open at once: in all, and over one client connection.
    max_streams: int = 20_000
    max_streams_per_connection: int = 1_000
    #: How long API keys read from the database are trusted before being read again.
    api_key_cache_s: float = 2.0
    #: TLS: the broker's certificate chain and private key (PEM files); both or neither.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    #: Mutual TLS: clients must present a certificate signed by this CA (PEM file).
    tls_client_ca_file: str | None = None
    #: Put the trace id of an event's `traceparent` on its delivery latency as an
    #: exemplar, served when a scraper asks for OpenMetrics (one process only).
    metrics_exemplars: bool = False

    def __post_init__(self) -> None:
        checks = [
            ("event_max_bytes", self.event_max_bytes >= 1024, "must be at least 1024"),
            ("batch_max_events", self.batch_max_events >= 1, "must be at least 1"),
            (
                "batch_max_bytes",
                self.batch_max_bytes >= self.event_max_bytes,
                "must be at least event_max_bytes",
            ),
            ("dedup_window_s", self.dedup_window_s >= 0, "must not be negative"),
            ("poll_interval_s", self.poll_interval_s > 0, "must be positive"),
            ("reaper_interval_s", self.reaper_interval_s > 0, "must be positive"),
            ("shutdown_grace_s", self.shutdown_grace_s >= 0, "must not be negative"),
            ("commit_batch_max", self.commit_batch_max >= 1, "must be at least 1"),
            ("commit_delay_s", 0 <= self.commit_delay_s <= 1, "must be between 0 and 1"),
            ("event_retention_s", self.event_retention_s > 0, "must be positive"),
            ("maintenance_interval_s", self.maintenance_interval_s > 0, "must be positive"),
            ("listen", is_address(self.listen), "must be HOST:PORT, the port 0..65535"),
            (
                "http_listen",
                not self.http_listen or is_address(self.http_listen),
                "must be HOST:PORT, the port 0..65535 (empty: no HTTP)",
            ),
            ("max_streams", self.max_streams >= 1, "must be at least 1"),
            (
                "max_streams_per_connection",
                1 <= self.max_streams_per_connection <= self.max_streams,
                "must be between 1 and max_streams",
            ),
            (
                "tls_key_file",
                (self.tls_cert_file is None) == (self.tls_key_file is None),
                "the certificate and the key go together",
            ),
            (
                "tls_client_ca_file",
                self.tls_client_ca_file is None or self.tls_cert_file is not None,
                "mutual TLS needs the broker's own certificate and key too",
            ),
        ]
        for name, ok, why in checks:
            if not ok:
                raise SettingsError(f"{setting_name(name)} {getattr(self, name)!r}: {why}")

    @property
    def listens_beyond_loopback(self) -> bool:
        """Whether the gRPC or the HTTP address can be reached from other machines."""
        addresses = [a for a in (self.listen, self.http_listen) if a]
        return not all(is_loopback(a.rsplit(":", 1)[0].strip("[]")) for a in addresses)

    @property
    def requires_keys(self) -> bool:
        """Whether every call needs a key even while none is active (exposed, not --insecure).

        Such a broker started with keys (it refuses to start otherwise); revoking
        the last one must close it, not open it to whoever can reach the address.
        """
        return self.listens_beyond_loopback and not self.insecure

    @property
    def dedup_window_us(self) -> int:
        """The dedup window in microseconds."""
        return int(self.dedup_window_s * US_PER_S)

    @property
    def grpc_max_message_bytes(self) -> int:
        """GRPC message size limit: room for a full batch and its framing, no more."""
        return self.batch_max_bytes + 1024 * 1024


def is_address(address: str) -> bool:
    """Whether a listen address is HOST:PORT with a port from 0 (any free one) to 65535."""
    _, colon, port = address.rpartition(":")
    return bool(colon) and port.isdigit() and int(port) <= 65535


def is_loopback(host: str) -> bool:
    """Whether a listen host is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, "" or "0.0.0.0"-like wildcards: treat as exposed
