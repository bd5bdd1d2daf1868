"""`broker serve --processes N`: several broker processes on one port and one database.

Python runs one thread of Python at a time, so one broker process uses about
one core. On PostgreSQL several broker processes can share a database (see
`broker.engine.wakeups`); the supervisor starts N of them on the same port
(gRPC binds with `SO_REUSEPORT`, so the kernel spreads connections over them),
restarts one that dies, and on SIGTERM or SIGINT passes SIGTERM on to each and
waits for their graceful shutdown. The schema is migrated once, here, before
any of them starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import signal
import threading
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from broker.config import Settings, SettingsError
from broker.logs import configure_logging
from broker.storage import open_storage

_log = logging.getLogger(__name__)

#: A process that lived at least this long had started fine: its restart is not delayed.
HEALTHY_AFTER_S = 10.0
RESTART_DELAY_MAX_S = 30.0
#: Beyond the grace period, how long stopping processes get before they are killed.
KILL_AFTER_S = 10.0


def check_processes(settings: Settings, processes: int) -> None:
    """Refuse what several processes cannot do, with the reason.

    Raises:
        SettingsError: Fewer than one process; several on SQLite; or on port 0.

    """
    if processes < 1:
        raise SettingsError(f"processes={processes}: must be at least 1")
    if processes == 1:
        return
    if not settings.database_url.startswith("postgresql"):
        raise SettingsError(
            f"processes={processes}: several broker processes need PostgreSQL "
            "(--database-url postgresql+psycopg://...); a SQLite file serves one process"
        )
    if settings.listen.rsplit(":", 1)[-1] == "0":
        raise SettingsError(
            f"processes={processes}: give a fixed port to --listen; each process binds it"
        )


def _run_worker(settings: Settings, log_level: str) -> None:
    """The body of one broker process."""
    from broker.app import serve

    configure_logging(log_level)
    asyncio.run(serve(settings))


class Supervisor:
    """Starts, restarts and stops the broker processes."""

    def __init__(self, settings: Settings, processes: int, log_level: str) -> None:
        self.settings = settings
        self.count = processes
        self.log_level = log_level
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[BaseProcess | None] = [None] * processes
        self._started_at = [0.0] * processes
        self._quick_deaths = [0] * processes
        self._restart_at: dict[int, float] = {}
        self._stopping = threading.Event()

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit status."""
        storage = open_storage(self.settings.database_url)
        try:
            storage.migrate()
        finally:
            storage.close()
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for index in range(self.count):
                self._start(index)
            _log.info("%d broker processes on %s", self.count, self.settings.listen)
            self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._stop_all()
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        _log.info("%s: stopping %d broker processes", signal.Signals(signum).name, self.count)
        self._stopping.set()

    def _start(self, index: int) -> None:
        worker = self._context.Process(
            target=_run_worker,
            args=(dataclasses.replace(self.settings, reuse_port=True), self.log_level),
            name=f"broker-{index}",
            daemon=False,
        )
        worker.start()
        self._workers[index] = worker
        self._started_at[index] = time.monotonic()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            sentinels = [w.sentinel for w in self._workers if w is not None]
            wait(sentinels, timeout=0.2)
            now = time.monotonic()
            for index, worker in enumerate(self._workers):
                if worker is None or worker.is_alive() or self._stopping.is_set():
                    continue
                worker.join()
                self._workers[index] = None
                lived = now - self._started_at[index]
                self._quick_deaths[index] = (
                    0 if lived >= HEALTHY_AFTER_S else self._quick_deaths[index] + 1
                )
                delay = min(RESTART_DELAY_MAX_S, 0.5 * 2 ** self._quick_deaths[index]) - 0.5
                _log.warning(
                    "broker process %d (pid %s) exited with %s after %.1f s; restarting in %.1f s",
                    index,
                    worker.pid,
                    worker.exitcode,
                    lived,
                    delay,
                )
                self._restart_at[index] = now + delay
            for index, when in list(self._restart_at.items()):
                if now >= when and not self._stopping.is_set():
                    del self._restart_at[index]
                    self._start(index)

    def _stop_all(self) -> None:
        workers = [w for w in self._workers if w is not None]
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # SIGTERM: a graceful shutdown
        deadline = time.monotonic() + self.settings.shutdown_grace_s + KILL_AFTER_S
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                _log.warning("broker process %s did not stop in time; killing it", worker.pid)
                worker.kill()
                worker.join()
