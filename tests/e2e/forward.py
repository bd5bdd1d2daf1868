"""A TCP forwarder in a child process, for fault tests that route a connection over a link.

`python -m tests.e2e.forward HOST TARGET_HOST:TARGET_PORT DELAY_MS` listens on
HOST (any free port), prints `forwarding on port N` once it listens, and copies
bytes both ways between each connection it accepts and a new connection to the
target, until either side closes. A test binds it to the root end of a veth
pair so that a process in a network namespace reaches a loopback-only service
(PostgreSQL, a broker) over that link, without changing where the service
listens.

SIGUSR1 makes it hold every chunk for DELAY_MS before passing it on, in each
direction and in order (a slow link); SIGUSR2 ends that. It prints `delay on`
or `delay off` once the change holds. The delay is here, not in the kernel,
because `tc netem` is not built into every kernel the tests run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 10.0
_READ_BYTES = 64 * 1024
_PORT_RE = re.compile(r"forwarding on port (\d+)")
_REPO = Path(__file__).resolve().parents[2]


@dataclass
class _Delay:
    """How long each chunk is held now, in seconds (0: passed on at once)."""

    seconds: float = 0.0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: _Delay) -> None:
    """Copy until EOF or an error, each chunk held for the delay then, and close the writer."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        try:
            while data := await reader.read(_READ_BYTES):
                chunks.put_nowait((loop.time() + delay.seconds, data))
        except OSError:
            pass
        chunks.put_nowait((0.0, b""))  # the end

    async def write() -> None:
        while True:
            due, data = await chunks.get()
            if not data:
                return
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()

    reading = asyncio.create_task(read())
    try:
        await write()
    except OSError:
        pass
    finally:
        reading.cancel()
        writer.close()


async def _serve(host: str, target_host: str, target_port: int, delay_ms: int) -> None:
    delay = _Delay()
    loop = asyncio.get_running_loop()

    def set_delay(seconds: float, say: str) -> None:
        delay.seconds = seconds
        print(say, flush=True)

    loop.add_signal_handler(signal.SIGUSR1, set_delay, delay_ms / 1000, "delay on")
    loop.add_signal_handler(signal.SIGUSR2, set_delay, 0.0, "delay off")

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _pipe(reader, target_writer, delay), _pipe(target_reader, writer, delay)
        )

    server = await asyncio.start_server(forward, host, 0)
    port = server.sockets[0].getsockname()[1]
    print(f"forwarding on port {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Forward from HOST (a free port) to TARGET_HOST:TARGET_PORT until terminated."""
    host, target, delay_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
    target_host, _, target_port = target.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, target_host, int(target_port), delay_ms))


class Forwarder:
    """The forwarder as a child process of the test; `port` is where it listens."""

    def __init__(self, host: str, target: str, log: Path, delay_ms: int = 0) -> None:
        self.host = host
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.e2e.forward", host, target, str(delay_ms)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=_REPO,
            )
        self.port = 0
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            match = _PORT_RE.search(log.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"forwarder did not start:\n{log.read_text(errors='replace')}")

    @property
    def address(self) -> str:
        """HOST:PORT to dial."""
        return f"{self.host}:{self.port}"

    def delay(self, on: bool) -> None:
        """Hold each chunk for the delay it was started with (on), or no longer (off)."""
        say = "delay on" if on else "delay off"
        said = self.log.read_text(errors="replace").count(say)
        os.kill(self.proc.pid, signal.SIGUSR1 if on else signal.SIGUSR2)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.log.read_text(errors="replace").count(say) == said:
            assert time.monotonic() < deadline, f"the forwarder did not turn its {say}"
            time.sleep(0.01)

    def stop(self) -> None:
        """Terminate it (every forwarded connection closes) and wait."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


if __name__ == "__main__":
    main()
