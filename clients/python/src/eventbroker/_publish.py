"""What both clients do around a publish: retries with one event id, and a warning for typos.

A publish is retried, as Pub/Sub's publisher retries, when the broker could not
be reached (`UNAVAILABLE`: a broker restarting, a connection refused) or did not
answer in time (`DEADLINE_EXCEEDED`), with exponential backoff and jitter, until
the caller's total deadline. Every attempt carries the same event id (the
caller's, else one the client makes), so an attempt whose answer was lost
after the broker stored it comes back as a duplicate instead of a second event:
retrying is safe for every publish, which is why both codes are retried.

A publish that gives up raises the most telling of its attempts' errors, not
merely the last: a last attempt cut short by the deadline says only
DEADLINE_EXCEEDED, where an attempt before it had the broker's own reason
(STORAGE_FULL, DATABASE_UNAVAILABLE) or the connection's ("Connection refused").
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from tenacity import RetryCallState, Retrying, retry_if_exception
from tenacity.wait import wait_exponential, wait_random

from eventbroker.durations import parse_duration
from eventbroker.errors import BrokerError
from eventbroker.types import DurationLike, EventSpec, PublishResult

_log = logging.getLogger("eventbroker.client")

#: Total time a publish (all its attempts and the waits between them) may take by default.
PUBLISH_TIMEOUT_S = 30.0
#: Backoff between attempts: 0.1 s doubling up to 5 s, with up to 0.1 s of jitter.
RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 5.0
RETRY_JITTER_S = 0.1
#: The least time a last attempt is given: the backoff before it is cut to leave this.
LAST_ATTEMPT_S = 0.2
#: The status codes a publish is retried on: the event id makes each retry safe.
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
#: The pause before attempt n + 1 after n failed attempts (tenacity reads only the number).
RETRY_WAIT = wait_exponential(multiplier=RETRY_INITIAL_S, max=RETRY_MAX_S) + wait_random(
    0, RETRY_JITTER_S
)
#: Event names remembered for the "no subscription matches" warning (names may embed ids).
WARNED_NAMES_MAX = 1024


def with_event_ids(specs: Sequence[EventSpec]) -> list[EventSpec]:
    """The specs, each with an id: the caller's, else a new random one.

    The id is the event's deduplication id, so that a retried publish stores the
    event once.
    """
    return [spec if spec.id else _with_id(spec) for spec in specs]


def _with_id(spec: EventSpec) -> EventSpec:
    return EventSpec(
        name=spec.name,
        data=spec.data,
        id=uuid.uuid4().hex,
        delay=spec.delay,
        priority=spec.priority,
        ordering_key=spec.ordering_key,
        headers=spec.headers,
        content_type=spec.content_type,
    )


def log_retry_of(
    what: str,
    error: BaseException | None,
    attempt: int,
    pause_s: float,
    timeout_s: float | None = None,
) -> None:
    """Log at INFO that a publish failed and when its next attempt goes.

    The record also carries the error (`publish_error`), the attempt to come
    (`publish_attempt`), the pause before it (`publish_retry_in_s`) and the total
    time (`publish_timeout_s`), for a program that shows retries its own way (the
    `broker` command does).
    """
    _log.info(
        "%s failed (%s); attempt %d in %.1f s",
        what,
        error,
        attempt,
        pause_s,
        extra={
            "publish_error": error,
            "publish_attempt": attempt,
            "publish_retry_in_s": pause_s,
            "publish_timeout_s": timeout_s,
        },
    )


def retry_pause_s(failures: int) -> float:
    """The pause before the next attempt after `failures` failed ones in a row (with jitter)."""
    state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = failures
    return float(RETRY_WAIT(state))


class Deadline:
    """The total time a publish may take, shared by its attempts.

    Args:
        total: Time for all attempts (a duration: a number is seconds); None for no limit.
        per_call_s: The client's limit on one call; None for none.

    """

    def __init__(self, total: DurationLike | None, per_call_s: float | None) -> None:
        self.total_s: float | None = None
        if total is not None:
            self.total_s = parse_duration(total, name="timeout").total_seconds()
            if self.total_s <= 0:
                raise ValueError("timeout must be more than 0 s (None for no limit); got 0 s")
        self.per_call_s = per_call_s
        self._started = time.monotonic()
        self._errors: list[BrokerError] = []

    def left_s(self) -> float | None:
        """Time left of the total (never below 0); None when there is no limit."""
        if self.total_s is None:
            return None
        return max(0.0, self.total_s - (time.monotonic() - self._started))

    def next_pause_s(self, failures: int) -> float | None:
        """The pause before the next attempt after `failures` failed ones; None: give up.

        The backoff, cut so that a last attempt still fits in the time left: a
        publish told to retry for 5 s tries until about 5 s have passed, rather
        than giving up early because the next full backoff would cross the end.
        """
        pause = retry_pause_s(failures)
        left = self.left_s()
        if left is None:
            return pause
        if left < LAST_ATTEMPT_S:
            return None
        return min(pause, left - LAST_ATTEMPT_S)

    def attempt_timeout_s(self) -> float | None:
        """How long the next attempt may take: the call limit, cut to what is left."""
        left = self.left_s()
        if left is None:
            return self.per_call_s
        return left if self.per_call_s is None else min(left, self.per_call_s)

    def retry_options(self, what: str) -> dict[str, Any]:
        """Keyword arguments of tenacity's `Retrying`/`AsyncRetrying` for this deadline.

        Each retry is logged at INFO on `eventbroker.client` (see `log_retry_of`).
        """

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            pause = state.next_action.sleep if state.next_action else 0.0
            log_retry_of(what, error, state.attempt_number + 1, pause, self.total_s)

        pauses: dict[int, float | None] = {}

        def pause(state: RetryCallState) -> float | None:
            # Asked by `stop` and then by `wait` for the same attempt: one draw of jitter.
            if state.attempt_number not in pauses:
                pauses[state.attempt_number] = self.next_pause_s(state.attempt_number)
            return pauses[state.attempt_number]

        return {
            "retry": retry_if_exception(self._retryable),
            "stop": lambda state: pause(state) is None,
            "wait": lambda state: pause(state) or 0.0,
            "before_sleep": log_retry,
            "reraise": True,
        }

    def _retryable(self, error: BaseException) -> bool:
        """Whether to try again after `error`; every attempt's error is kept for `failure`."""
        if not isinstance(error, BrokerError):
            return False
        self.record(error)
        return error.code in RETRY_CODES

    def record(self, error: BrokerError) -> None:
        """An attempt failed with `error` (kept for `failure`)."""
        self._errors.append(error)

    def failure(self, last: BrokerError) -> BrokerError:
        """The error a publish that gave up raises: the most telling of its attempts'.

        The last error, unless it is the client's own (no reason from the broker:
        a timeout or a connection that failed) and an earlier attempt said more:
        then the latest error the broker explained (its reason, e.g. STORAGE_FULL),
        else the latest that says the broker could not be reached, rather than a
        bare DEADLINE_EXCEEDED. A note on it tells how many attempts were made and
        how the last one ended. The traceback starts afresh where it is raised, so
        that tenacity's frames do not stand between the caller and the error.
        """
        errors = self._errors or [last]
        chosen = last
        if last.reason is None and last.code in RETRY_CODES:
            explained = [e for e in errors if e.reason is not None]
            unreachable = [e for e in errors if e.code is grpc.StatusCode.UNAVAILABLE]
            if explained:
                chosen = explained[-1]
            elif last.code is grpc.StatusCode.DEADLINE_EXCEEDED and unreachable:
                chosen = unreachable[-1]
        chosen.attempts = len(errors)
        if len(errors) > 1:
            spent = time.monotonic() - self._started
            note = f"{len(errors)} attempts in {spent:.1f} s"
            if chosen is not last:
                note += f"; the last one ended {last.code.name}: {last.message}"
            chosen.add_note(note)
        return chosen.with_traceback(None)


class MatchWarnings:
    """Warns once per event name that a publish matched no subscription (often a typo)."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def check(self, names: Sequence[str], results: Sequence[PublishResult]) -> None:
        """Warn for each new event (not a duplicate) that no subscription got."""
        for name, result in zip(names, results, strict=True):
            if result.duplicate or result.matched_subscriptions:
                continue
            lowered = name.lower()
            if lowered in self._warned:
                continue
            if len(self._warned) >= WARNED_NAMES_MAX:
                self._warned.clear()
            self._warned.add(lowered)
            _log.warning(
                "no subscription matches %s (event %s is stored, delivered to nobody)",
                lowered,
                result.event_id,
            )
