"""`broker serve --processes N`: several broker processes on one port and one database.

Python runs one thread of Python at a time, so one broker process uses about
one core. On PostgreSQL several broker processes can share a database (see
`broker.engine.wakeups`); the supervisor starts N of them on the same port
(gRPC binds with `SO_REUSEPORT`, so the kernel spreads connections over them),
restarts one that dies, and on SIGTERM or SIGINT passes SIGTERM on to each and
waits for their graceful shutdown. The schema is migrated once, here, before
any of them starts.

A worker that refuses its configuration at start (say, a public address and no
API key) would refuse it again after every restart: it exits with
`EXIT_REFUSED` and sends its one-line reason up a pipe, and the supervisor
stops the others and fails with that reason instead of restarting. Workers die
with their supervisor, even one killed with SIGKILL (see `_die_with_parent`).

The workers share the HTTP port too, so a scrape of `/metrics` reaches one of
them: the supervisor gives them a fresh directory for prometheus-client's
multiprocess mode, where each keeps its values and any of them reads everyone's
(see `broker.engine.metrics`); it tells the library of each worker that exits
and removes the directory when it stops.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from broker.config import Settings, SettingsError, setting_name
from broker.engine.metrics import MULTIPROC_DIR_ENV
from broker.logs import configure_logging
from broker.storage import open_storage

_log = logging.getLogger(__name__)

#: A process that lived at least this long had started fine: its restart is not delayed.
HEALTHY_AFTER_S = 10.0
RESTART_DELAY_MAX_S = 30.0
#: Beyond the grace period, how long stopping processes get before they are killed.
KILL_AFTER_S = 10.0
#: A worker's exit status when it refused its configuration before serving (as the
#: `broker` command exits on a bad setting): no restart can help.
EXIT_REFUSED = 2
#: prctl(2) option: the signal a process gets when the thread that forked it ends.
_PR_SET_PDEATHSIG = 1


def check_processes(settings: Settings, processes: int) -> None:
    """Refuse what several processes cannot do, with the reason.

    Raises:
        SettingsError: Fewer than one process; several on SQLite; or on port 0.

    """
    if processes < 1:
        raise SettingsError(f"{setting_name('processes')} {processes}: must be at least 1")
    if processes == 1:
        return
    if not settings.database_url.startswith("postgresql"):
        raise SettingsError(
            f"{setting_name('processes')} {processes}: several broker processes need PostgreSQL "
            "(--database-url postgresql+psycopg://...); a SQLite file serves one process"
        )
    if settings.listen.rsplit(":", 1)[-1] == "0":
        raise SettingsError(
            f"{setting_name('processes')} {processes}: "
            "give a fixed port to --listen; each process binds it"
        )


def _run_worker(
    settings: Settings, log_level: str, supervisor_pid: int, refusals: Connection
) -> None:
    """The body of one broker process.

    A `SettingsError` comes only from `BrokerApp.start()`, before the process
    serves: its message goes up `refusals` and the process exits `EXIT_REFUSED`.
    """
    _die_with_parent(supervisor_pid)
    from broker.app import serve

    configure_logging(log_level)
    try:
        asyncio.run(serve(settings))
    except SettingsError as error:
        refusals.send(str(error))
        sys.exit(EXIT_REFUSED)
    finally:
        refusals.close()


def _die_with_parent(supervisor_pid: int) -> None:
    """Have the kernel send this process SIGTERM when its supervisor dies, however it dies.

    `PR_SET_PDEATHSIG` (Linux) rather than a pipe the worker watches: the kernel
    delivers it even when the supervisor is killed with SIGKILL, and it needs no
    thread or task in the worker that could be starved or forgotten. SIGTERM, not
    SIGKILL, so the orphan shuts down gracefully (gives its leases back) within
    its grace period and frees the port. The signal follows the death of the
    thread that started the worker: the supervisor starts every worker from its
    main thread. The supervisor may have died before the call: then the parent
    is no longer `supervisor_pid` and the worker exits at once. Elsewhere than on
    Linux there is no such call, and orphans must be stopped by hand.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != supervisor_pid:
        raise SystemExit("the supervisor is gone; not starting")


class Supervisor:
    """Starts, restarts and stops the broker processes."""

    def __init__(self, settings: Settings, processes: int, log_level: str) -> None:
        self.settings = settings
        self.count = processes
        self.log_level = log_level
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[BaseProcess | None] = [None] * processes
        #: Per worker, the end of the pipe its refusal of the configuration comes up.
        self._refusals: list[Connection | None] = [None] * processes
        self._started_at = [0.0] * processes
        self._quick_deaths = [0] * processes
        self._restart_at: dict[int, float] = {}
        self._stopping = threading.Event()
        self._metrics_dir = ""

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit status.

        Raises:
            SettingsError: A worker refused the configuration (the others are stopped).

        """
        storage = open_storage(self.settings.database_url)
        try:
            storage.migrate()
        finally:
            storage.close()
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        metrics_dir = tempfile.mkdtemp(prefix="broker-metrics-")
        previous_dir = os.environ.get(MULTIPROC_DIR_ENV)
        os.environ[MULTIPROC_DIR_ENV] = metrics_dir  # inherited by every worker
        self._metrics_dir = metrics_dir
        try:
            for index in range(self.count):
                self._start(index)
            _log.info("%d broker processes on %s", self.count, self.settings.listen)
            self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._stop_all()
            if previous_dir is None:
                os.environ.pop(MULTIPROC_DIR_ENV, None)
            else:
                os.environ[MULTIPROC_DIR_ENV] = previous_dir
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        _log.info("%s: stopping %d broker processes", signal.Signals(signum).name, self.count)
        self._stopping.set()

    def _start(self, index: int) -> None:
        receiver, sender = self._context.Pipe(duplex=False)
        worker = self._context.Process(
            target=_run_worker,
            args=(
                dataclasses.replace(self.settings, reuse_port=True),
                self.log_level,
                os.getpid(),
                sender,
            ),
            name=f"broker-{index}",
            daemon=False,
        )
        worker.start()
        sender.close()  # the worker holds the only sending end
        self._workers[index] = worker
        self._refusals[index] = receiver
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
                self._forget_metrics_of(worker)
                refusal = self._refusal(index)
                if worker.exitcode == EXIT_REFUSED and refusal is not None:
                    _log.error("broker process %d refused to start: %s", index, refusal)
                    raise SettingsError(refusal)
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

    def _forget_metrics_of(self, worker: BaseProcess) -> None:
        """Drop the live gauges of a worker that exited; its counters still count."""
        if worker.pid is not None and self._metrics_dir:
            mark_process_dead(worker.pid, self._metrics_dir)  # type: ignore[no-untyped-call]

    def _refusal(self, index: int) -> str | None:
        """The reason the worker sent before it exited, if it refused its configuration."""
        receiver, self._refusals[index] = self._refusals[index], None
        if receiver is None:
            return None
        try:
            return str(receiver.recv()) if receiver.poll() else None
        except EOFError:
            return None
        finally:
            receiver.close()

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
            self._forget_metrics_of(worker)
        for receiver in self._refusals:
            if receiver is not None:
                receiver.close()
