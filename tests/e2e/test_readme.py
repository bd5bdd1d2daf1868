"""Every snippet of the READMEs and docs pages, run as written against a live broker, twice.

Each fenced ```python, ```sh, ```bash and ```console block of README.md,
clients/python/README.md and every page of docs/ runs in order against a broker
process on free ports (the page's `127.0.0.1:50051` and `127.0.0.1:8080` become
its addresses, and `EVENTBROKER_TARGET` names it), from a scratch directory laid
out like the top of the clone: its `.venv` is this virtualenv (so `source
.venv/bin/activate` works, with its `bin` on `PATH`) and its `clients` is the
repository's (the TypeScript quickstart packs `clients/typescript`); then the whole
page runs a second time, so that a snippet that only works once fails.

The README's sections each have subscriptions and event names of their own, so
that they run in any order and a quickstart's consumer never meets an event it has
no handler for: `test_readme_sections_have_names_of_their_own` checks that.

An HTML comment on the line above a block changes how it runs:

- `<!-- not run: REASON -->`: skipped (kept rare: the test suite itself, a second
  broker, a key that would close the broker to the other snippets);
- `<!-- runs until stopped -->`: a long-running command (a consumer, a stream): it
  must still be running after a few seconds, then it is stopped;
- `<!-- runs until stopped, printing: TEXT -->`: the same, and it must print TEXT
  first (so a quickstart that prints nothing fails).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.processes import BrokerProcess

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
READMES = [README, ROOT / "clients" / "python" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "sh", "bash", "console"}
#: Longest one snippet may take.
SNIPPET_TIMEOUT_S = 60
#: How long a long-running snippet must survive (or take to print what it should).
RUNNING_S = 3.0
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*(not run|runs until stopped)(?:[:,]\s*(.*?))?\s*-->$")
_HTTP_PORT = re.compile(r"\(http port (\d+)\)")


@dataclass(frozen=True)
class Snippet:
    """One fenced block: where it is, its language, its text and its marker."""

    readme: Path
    line: int
    language: str
    code: str
    marker: str | None = None
    detail: str = ""

    def where(self) -> str:
        """`README.md:42`."""
        return f"{self.readme.relative_to(ROOT)}:{self.line}"


def snippets(readme: Path) -> list[Snippet]:
    """The fenced blocks of a README in the languages run, with the marker above each."""
    found: list[Snippet] = []
    lines = readme.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        start = index
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        language = fence.group(1).lower()
        if language in LANGUAGES:
            previous = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
            marker = _MARKER.match(previous.strip())
            found.append(
                Snippet(
                    readme,
                    start + 1,
                    language,
                    "\n".join(lines[start + 1 : end]) + "\n",
                    marker.group(1) if marker else None,
                    (marker.group(2) or "") if marker else "",
                )
            )
        index = end + 1
    return found


def test_the_readmes_have_snippets_and_few_are_skipped() -> None:
    every = [s for readme in READMES for s in snippets(readme)]
    assert len(every) >= 10
    skipped = [s for s in every if s.marker == "not run"]
    assert len(skipped) <= len(every) // 4, [s.where() for s in skipped]
    assert all(s.detail for s in skipped), "say why a snippet is not run"


@pytest.fixture
def live_broker(tmp_path: Path) -> Iterator[tuple[BrokerProcess, str]]:
    """A `broker serve` process on free ports and a database of its own; and its HTTP address."""
    broker = BrokerProcess(f"sqlite:///{tmp_path / 'broker.db'}", tmp_path / "broker.log").start()
    try:
        deadline = time.monotonic() + 10
        while not (match := _HTTP_PORT.search(broker.log_text())):
            assert time.monotonic() < deadline, broker.log_text()
            time.sleep(0.05)
        yield broker, f"127.0.0.1:{match.group(1)}"
    finally:
        broker.terminate()


def _command(snippet: Snippet) -> list[str]:
    if snippet.language == "python":
        return [sys.executable, "-c", snippet.code]
    code = snippet.code
    if snippet.language == "console":  # only the lines typed after a prompt
        code = "\n".join(line[2:] for line in code.splitlines() if line.startswith("$ ")) + "\n"
    return ["bash", "-e", "-o", "pipefail", "-c", code]


def _run(snippet: Snippet, target: str, http: str, workdir: Path) -> None:
    code = snippet.code.replace("127.0.0.1:50051", target).replace("127.0.0.1:8080", http)
    snippet = dataclasses.replace(snippet, code=code)
    env = {
        **os.environ,
        "EVENTBROKER_TARGET": target,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("BROKER_DATABASE_URL", None)
    log = workdir / "snippet.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            _command(snippet),
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: stopped whole
        )
    try:
        if snippet.marker == "runs until stopped":
            _expect_running(proc, log, snippet)
            return
        try:
            status = proc.wait(SNIPPET_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{snippet.where()} still runs after {SNIPPET_TIMEOUT_S} s")
        assert status == 0, f"{snippet.where()} exited {status}:\n{snippet.code}\n{log.read_text()}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _expect_running(proc: subprocess.Popen[str], log: Path, snippet: Snippet) -> None:
    """It prints what it should (if the marker says) and is still running after RUNNING_S."""
    text = snippet.detail.removeprefix("printing:").strip()
    deadline = time.monotonic() + (SNIPPET_TIMEOUT_S if text else RUNNING_S)
    while time.monotonic() < deadline and proc.poll() is None:
        if text and text in log.read_text():
            break
        time.sleep(0.1)
    assert proc.poll() is None, f"{snippet.where()} ended ({proc.returncode}):\n{log.read_text()}"
    assert not text or text in log.read_text(), f"{snippet.where()} did not print {text!r}"


@pytest.mark.slow
@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_snippet_runs_twice(
    readme: Path, live_broker: tuple[BrokerProcess, str], tmp_path: Path
) -> None:
    broker, http = live_broker
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(Path(sys.prefix))
    (workdir / "clients").symlink_to(ROOT / "clients")
    for round_ in (1, 2):
        for snippet in snippets(readme):
            if snippet.marker == "not run":
                continue
            try:
                _run(snippet, broker.target, http, workdir)
            except AssertionError as error:
                raise AssertionError(f"round {round_}: {error}") from None


# -- the README's sections keep to their own names ------------------------------------

_SUBSCRIPTION_NAMES = (
    re.compile(r"create_subscription\(\s*\"([^\"]+)\""),
    re.compile(r"createSubscription\(\"([^\"]+)\""),
    re.compile(r"\"subscription\":\{\"name\":\"([^\"]+)\""),
    re.compile(r"broker subs create ([\w-]+)"),
)
_FILTERS = (
    re.compile(r"create_subscription\(\s*\"[^\"]+\",\s*\"([^\"]+)\""),
    re.compile(r"createSubscription\(\"[^\"]+\", \"([^\"]+)\""),
    re.compile(r"\"filter\":\[\"([^\"]+)\"\]"),
    re.compile(r"-f '([^']+)'"),
)
_EVENT_NAMES = (
    re.compile(r"publish\(\s*\"([^\"]+)\""),
    re.compile(r"\"event\":\{\"name\":\"([^\"]+)\""),
    re.compile(r"broker publish ([\w.:/-]+)"),
)


@dataclass(frozen=True)
class SectionNames:
    """The names one section of a page uses in its snippets."""

    title: str
    subscriptions: frozenset[str]
    filters: frozenset[str]
    events: frozenset[str]


def section_names(page: Path) -> list[SectionNames]:
    """Per `## ` section, the subscriptions it makes, their filters and the events it publishes."""
    found: dict[str, list[str]] = {}
    title = ""
    lines = page.read_text().splitlines()
    for snippet in snippets(page):
        title = next(
            (lines[i][3:] for i in range(snippet.line - 1, -1, -1) if lines[i].startswith("## ")),
            "",
        )
        found.setdefault(title, []).append(snippet.code)

    def every(patterns: tuple[re.Pattern[str], ...], texts: list[str]) -> frozenset[str]:
        return frozenset(m for p in patterns for text in texts for m in p.findall(text))

    return [
        SectionNames(
            title,
            every(_SUBSCRIPTION_NAMES, texts),
            every(_FILTERS, texts),
            every(_EVENT_NAMES, texts),
        )
        for title, texts in found.items()
    ]


def test_readme_sections_have_names_of_their_own() -> None:
    from broker.names import matches

    sections = [s for s in section_names(README) if s.subscriptions or s.events]
    quickstarts = [s.title for s in sections if s.title.startswith("Quickstart")]
    assert len(quickstarts) == 3, quickstarts
    for section in sections:
        for other in sections:
            if other is section:
                continue
            assert not section.subscriptions & other.subscriptions, (section, other)
            strays = {e for e in other.events if matches(tuple(sorted(section.filters)), e.lower())}
            assert not strays, f"{other.title!r} publishes {strays} into {section.title!r}"
