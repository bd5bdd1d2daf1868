"""One broker process: storage, delivery engine and gRPC server, started and stopped together."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import grpc
from aiohttp import web
from grpc import aio
from grpc_health.v1 import health

from broker.api.http import build_http_app
from broker.api.server import build_server, set_serving
from broker.api.servicer import EventBrokerServicer
from broker.config import Settings, SettingsError, setting_name
from broker.engine.engine import DeliveryEngine, wall_clock_us
from broker.storage import Storage, open_storage

_log = logging.getLogger(__name__)

#: Of the shutdown grace period, the part (at most a quarter) left for calls in flight
#: once the broker stops waiting for held deliveries to be settled.
FINAL_CALLS_S = 1.0
#: How often a shutting-down broker looks whether consumers still hold deliveries.
SETTLE_POLL_S = 0.05


def dialable(address: str, port: int) -> str:
    """HOST:PORT that reaches a listen address from this machine, with the port bound.

    A wildcard host (every address: `0.0.0.0`, `[::]`) is not one to dial, so the
    loopback address of its family stands in for it.
    """
    host = address.rpartition(":")[0]
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    return f"{host}:{port}"


class BrokerApp:
    """A running broker; `start()` binds the port, `stop()` shuts down gracefully."""

    def __init__(self, settings: Settings, clock: Callable[[], int] = wall_clock_us) -> None:
        self.settings = settings
        self.clock = clock
        self.storage: Storage | None = None
        self.engine: DeliveryEngine | None = None
        self.server: aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self.port = 0
        self.http_port = 0
        self._http: web.AppRunner | None = None

    async def start(self) -> int:
        """Open and migrate the database, start the engine and serve; return the bound port.

        Raises:
            SettingsError: An address cannot be bound (in use, not this machine's), a
                TLS file cannot be read, or the broker would be exposed without keys.

        """
        if not self.settings.reuse_port:  # shared ports are bound by several processes
            for setting in ("listen", "http_listen"):
                _check_can_listen(setting, getattr(self.settings, setting))
        storage = open_storage(self.settings.database_url)
        await asyncio.to_thread(storage.migrate)
        self.storage = storage
        await asyncio.to_thread(self._check_exposure, storage)
        self.engine = DeliveryEngine(storage, self.settings, self.clock)
        await self.engine.start()
        servicer = EventBrokerServicer(self.engine)
        self.server, self._health = build_server(self.engine, self.settings, servicer)
        credentials = _server_credentials(self.settings)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(self.settings.listen)
            else:
                self.port = self.server.add_secure_port(self.settings.listen, credentials)
        except RuntimeError:  # grpc says only "Failed to bind"; the OS says why
            self.port = 0
        if self.port == 0:
            raise _cannot_listen("listen", self.settings.listen)
        await self.server.start()
        await self._start_http(servicer)
        await set_serving(self._health, True)
        _log.info(
            "broker listening on %s (port %d), database %s",
            self.settings.listen,
            self.port,
            storage.dialect,
        )
        dashboard = (
            f"dashboard http://{dialable(self.settings.http_listen, self.http_port)}/"
            if self.settings.http_listen
            else "no dashboard (--http-listen is empty)"
        )
        _log.info("ready: gRPC target %s, %s", dialable(self.settings.listen, self.port), dashboard)
        return self.port

    async def _start_http(self, servicer: EventBrokerServicer) -> None:
        """Serve JSON ingest, metrics and a health check on `http_listen` (empty: none)."""
        if not self.settings.http_listen:
            return
        host, _, port = self.settings.http_listen.rpartition(":")
        self._http = web.AppRunner(build_http_app(servicer), access_log=None)
        await self._http.setup()
        site = web.TCPSite(
            self._http, host.strip("[]"), int(port), reuse_port=self.settings.reuse_port
        )
        try:
            await site.start()
        except OSError as error:
            raise _cannot_listen("http_listen", self.settings.http_listen, error) from error
        server = site._server  # aiohttp keeps the bound sockets here
        sockets = getattr(server, "sockets", None) or ()
        self.http_port = sockets[0].getsockname()[1] if sockets else int(port)
        _log.info(
            "http listening on %s (http port %d): /v1/events, /metrics, /healthz",
            self.settings.http_listen,
            self.http_port,
        )

    def _check_exposure(self, storage: Storage) -> None:
        """Refuse to listen beyond loopback without keys, unless told to (then warn).

        Raises:
            SettingsError: A non-loopback address, no API key, and no `insecure`.

        """
        if not self.settings.listens_beyond_loopback:
            return
        with storage.read() as tx:
            keys = tx.api_key_active_count()
        if keys:
            return
        if not self.settings.insecure:
            storage.close()
            raise SettingsError(
                f"{setting_name('listen')} {self.settings.listen!r}, "
                f"{setting_name('http_listen')} {self.settings.http_listen!r}: "
                "beyond loopback the broker needs API keys "
                "(broker keys create NAME --scope ...) or an explicit --insecure"
            )
        _log.warning(
            "listening on %s with no API key: anyone who reaches it may publish, "
            "consume and delete (--insecure)",
            self.settings.listen,
        )

    async def stop(self) -> None:
        """Shut down as a lame duck, then give back what is still held.

        `server.stop()` refuses every new call at once, so calling it first would
        refuse the acks of handlers still running in consumers: their work would
        be redelivered and done twice. Instead, in order:

        1. health reports NOT_SERVING (gRPC health and `/healthz`), so balancers
           and new clients look elsewhere;
        2. dispatching stops and every Subscribe stream ends with UNAVAILABLE
           "broker shutting down" (new ones are ended the same way);
        3. the port stays open and serves Ack, Nack, ExtendAckDeadline and
           publishes until no lease is held here or the grace period is nearly
           over (`FINAL_CALLS_S` is kept for calls still in flight);
        4. the servers stop, letting calls in flight finish within what is left
           of the grace period, and every lease still held is given back.
        """
        loop = asyncio.get_running_loop()
        grace_s = self.settings.shutdown_grace_s
        deadline = loop.time() + grace_s
        if self._health is not None:
            await set_serving(self._health, False)
        if self.engine is not None:
            await self.engine.end_streams()
            await self._wait_for_settlements(deadline - min(FINAL_CALLS_S, grace_s / 4))
        if self._http is not None:
            await self._http.cleanup()
        if self.server is not None:
            await self.server.stop(max(0.0, deadline - loop.time()))
        if self.engine is not None:
            await self.engine.stop()  # gives back every lease still held here
        if self.storage is not None:
            self.storage.close()
        if self.port:
            _log.info("broker stopped")

    async def _wait_for_settlements(self, until: float) -> None:
        """Serve settlements until no lease is held here, or until `until` (loop time)."""
        assert self.engine is not None
        loop = asyncio.get_running_loop()
        held = self.engine.leases_held()
        if held:
            _log.info(
                "waiting up to %.1f s for consumers to settle %d held deliveries",
                max(0.0, until - loop.time()),
                held,
            )
        while held and loop.time() < until:
            await asyncio.sleep(SETTLE_POLL_S)
            held = self.engine.leases_held()
        if held:
            _log.info("%d deliveries still held at the end of the grace period", held)


def _check_can_listen(setting: str, address: str) -> None:
    """Bind a plain socket to the address and let it go, to fail early with the OS's reason.

    gRPC reports only that binding failed, and logs its own line to stderr; this
    check finds the usual causes (port in use, an address not this machine's) first,
    before the database is opened.
    """
    if not address:
        return
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM)
        family, kind, proto, _, where = infos[0]
        with socket.socket(family, kind, proto) as probe:
            # As the servers do: a port whose last connections still linger in
            # TIME_WAIT (a restart on the same port) is free; one listened on is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(where)
    except (OSError, ValueError) as error:
        raise _cannot_listen(setting, address, error) from error


def _cannot_listen(setting: str, address: str, error: Exception | None = None) -> SettingsError:
    """The error for an address the broker cannot bind, with the reason when known."""
    reason = getattr(error, "strerror", None) or (str(error) if error else "cannot bind it")
    return SettingsError(f"{setting_name(setting)} {address!r}: cannot listen there: {reason}")


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the PEM files, requiring client certificates for mutual TLS."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    chain = _read_pem("tls_cert_file", settings.tls_cert_file)
    key = _read_pem("tls_key_file", settings.tls_key_file)
    client_ca = (
        _read_pem("tls_client_ca_file", settings.tls_client_ca_file)
        if settings.tls_client_ca_file
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read_pem(setting: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        reason = error.strerror or str(error)
        raise SettingsError(
            f"{setting_name(setting)} {path!r}: cannot read a TLS file: {reason}"
        ) from error


async def serve(settings: Settings) -> None:
    """Run a broker until SIGTERM or SIGINT, then shut it down gracefully."""
    app = BrokerApp(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
    except BaseException:
        await app.stop()  # what had started (database, engine, gRPC) ends cleanly
        raise
    try:
        await stop.wait()
        _log.info("shutting down (grace %.0f s)", settings.shutdown_grace_s)
    finally:
        await app.stop()
