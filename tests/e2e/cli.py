"""The `broker` command run as a person runs it: a real process, its exit status and streams."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Longest one command may take in a test.
COMMAND_TIMEOUT_S = 60


@dataclass(frozen=True)
class Result:
    """What one `broker` command did."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """Stdout, then stderr."""
        return self.stdout + self.stderr


class BrokerCli:
    """Runs `python -m broker ARGS` with the given environment added to this one's."""

    def __init__(self, env: Mapping[str, str] | None = None, cwd: str | None = None) -> None:
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd

    def invoke(self, args: Sequence[str], input: str | None = None) -> Result:
        """Run one command to its end; its stdout is a pipe, as in `broker ... | jq`."""
        done = subprocess.run(
            [sys.executable, "-m", "broker", *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)
