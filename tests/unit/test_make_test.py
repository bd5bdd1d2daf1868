"""`make test` runs every suite even when one fails, says how each went, and fails if any did.

The suites are replaced by small commands (the Makefile's `PYTHON_SUITE` and
`TS_SUITE`), and the install steps are not run (`make -o`), so this takes a second.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: What `make test` depends on: stamps of installs made already, left as they are.
INSTALL_STAMPS = (
    ".venv/.installed",
    ".venv/.installed-browser",
    ".venv/.installed-netns",
    "clients/typescript/node_modules/.installed",
)


def make_test(python_suite: str, ts_suite: str) -> subprocess.CompletedProcess[str]:
    """`make test` with these commands in place of the two suites."""
    skip_installs = [arg for stamp in INSTALL_STAMPS for arg in ("-o", stamp)]
    return subprocess.run(
        ["make", "--no-print-directory", *skip_installs, "test",
         f"PYTHON_SUITE={python_suite}", f"TS_SUITE={ts_suite}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def test_a_failing_python_suite_still_runs_the_typescript_one(tmp_path: Path) -> None:
    ran = tmp_path / "typescript-ran"
    done = make_test("echo python; exit 3", f"touch {ran}")
    assert done.returncode != 0, done.stdout
    assert ran.exists(), done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == (
        "make test: Python suite FAILED (exit 3); TypeScript suite passed"
    )


def test_a_failing_typescript_suite_fails_make_test() -> None:
    done = make_test("true", "exit 1")
    assert done.returncode != 0
    assert done.stdout.splitlines()[-1] == (
        "make test: Python suite passed; TypeScript suite FAILED (exit 1)"
    )


def test_make_test_passes_when_every_suite_passes() -> None:
    done = make_test("true", "true")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == (
        "make test: Python suite passed; TypeScript suite passed"
    )
