"""Typed exceptions: a failed call raises a `BrokerError` subclass with the broker's details.

The broker follows AIP-193: a status code, a message a person can act on, a
`google.rpc.ErrorInfo` with an UPPER_SNAKE reason, and `google.rpc.BadRequest`
field violations. They are unpacked here once, so callers can branch on
`error.reason` or show `error.field_violations` without touching protobuf.

A `BrokerError` reads as one line: `str(error)` is the code, the broker's message
with the value sent in each bad field, and the reason when it says more than the
code (`INVALID_ARGUMENT: event.name 'User Joined!': must be 1 to 255 characters
...`). The clients raise it without the gRPC exception chained to it: everything
that exception held is here as attributes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_status import rpc_status

from eventbroker.durations import ANY_DELAY, parse_duration
from eventbroker.types import DurationLike

STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: Longest value of a bad field shown in an error's text; longer ones are cut with "…".
SHOWN_VALUE_MAX_CHARS = 80


class BrokerError(Exception):
    """A call to the broker failed.

    Attributes:
        code: The gRPC status code.
        message: The broker's message, meant for a person.
        reason: The UPPER_SNAKE reason of the `ErrorInfo` detail (e.g.
            `SUBSCRIPTION_NOT_FOUND`), or None when the broker sent none (for
            example when it could not be reached at all).
        metadata: The `ErrorInfo` metadata (e.g. `{"subscription": "billing"}`).
        field_violations: `(field, description)` for each bad field of the request,
            from the `BadRequest` detail (e.g. `("event.name", "must be 1 to 255 ...")`).
        field_values: The value the request carried in each bad field, where it is
            text the client could read back (e.g. `{"event.name": "User Joined!"}`).
        details: Every `google.rpc.Status` detail the broker sent, as packed
            `google.protobuf.Any` messages (the two above come from them).
        attempts: How many calls were made: more than 1 when a publish was retried
            and this is the error that ended it.

    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
        field_values: Mapping[str, str] | None = None,
        details: Sequence[any_pb2.Any] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[tuple[str, str]] = list(field_violations)
        self.field_values: dict[str, str] = dict(field_values or {})
        self.details: tuple[any_pb2.Any, ...] = tuple(details)
        self.attempts = 1

    def __str__(self) -> str:
        text = self.message or self.code.name.replace("_", " ").lower()
        for field, value in self.field_values.items():
            text = text.replace(f"{field}: ", f"{field} {_shown(value)}: ", 1)
        unnamed = [(f, why) for f, why in self.field_violations if f not in self.message]
        text = "; ".join([text, *(f"{field}: {why}" for field, why in unnamed)])
        if self.reason and self.reason != self.code.name:
            text += f" [{self.reason}]"
        return f"{self.code.name}: {text}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r}, reason={self.reason!r})"


def _shown(value: str) -> str:
    """A bad value as an error quotes it: repr, cut to SHOWN_VALUE_MAX_CHARS."""
    if len(value) > SHOWN_VALUE_MAX_CHARS:
        value = value[: SHOWN_VALUE_MAX_CHARS - 1] + "…"
    return repr(value)


class InvalidArgument(BrokerError):
    """The request is malformed or breaks a limit; `field_violations` says which fields."""


class NotFound(BrokerError):
    """A named subscription or event does not exist."""


class AlreadyExists(BrokerError):
    """A subscription with that name exists already."""


class FailedPrecondition(BrokerError):
    """The broker is not in a state to perform the request."""


class ResourceExhausted(BrokerError):
    """A size limit was passed (event, batch or message size)."""


class Unavailable(BrokerError):
    """The broker cannot be reached or cannot take the request now; retrying may work."""


class Unauthenticated(BrokerError):
    """The API key is missing or wrong."""


class PermissionDenied(BrokerError):
    """The API key lacks the scope, or is not allowed the event or subscription name."""


class DeadlineExceeded(BrokerError):
    """The call did not finish within its timeout."""


class Unimplemented(BrokerError):
    """The broker does not provide the feature asked for (yet)."""


class SubscriptionSettingsWarning(UserWarning):
    """`create_subscription(..., exist_ok=True)` found the subscription with other settings.

    The subscription is returned as it is, unchanged: `update_subscription` changes
    it. Turn the warning into an error with
    `warnings.simplefilter("error", SubscriptionSettingsWarning)`.

    Attributes:
        subscription: The subscription's name.
        differences: `(setting, existing, asked)` for each setting that differs, in
            the client's keyword names and as a person reads the values
            (`("ack_deadline", "45 s", "30 s")`).

    """

    def __init__(self, subscription: str, differences: Sequence[tuple[str, str, str]]) -> None:
        self.subscription = subscription
        self.differences = list(differences)
        listed = "; ".join(f"{name} is {now}, asked {asked}" for name, now, asked in differences)
        super().__init__(
            f"subscription {subscription!r} exists with other settings, left as they are: "
            f"{listed} (update_subscription changes them)"
        )


class Terminal(Exception):
    """Raised by a consumer handler: the delivery can never succeed, dead-letter it now.

    The delivery is nacked as terminal instead of being retried; it keeps the
    message of this exception as its last error, so a person can decide to redrive it.
    """


DeadLetter = Terminal
"""Another name for `Terminal`."""


class Retry(Exception):
    """Raised by a consumer handler: fail this attempt and retry after `delay`.

    The delivery is nacked with that delay instead of the subscription's backoff
    (as Celery's `self.retry(countdown=...)`); attempts are still counted, so
    `max_attempts` still ends the retries. It is an intended outcome, logged
    without a traceback.

    Args:
        message: Why, kept in the delivery's attempt history.
        delay: How long until the retry (a duration: a number is seconds, `"5m"`,
            a timedelta; at most a year); None for the subscription's backoff.

    Raises:
        ValueError: `delay` cannot be read or is out of range.

    """

    def __init__(self, message: str = "", *, delay: DurationLike | None = None) -> None:
        super().__init__(message)
        self.delay: timedelta | None = None
        if delay is not None:
            self.delay = parse_duration(delay, name="delay", limits=ANY_DELAY)


_BY_CODE: dict[grpc.StatusCode, type[BrokerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


def error_from_status(
    code: grpc.StatusCode,
    message: str,
    status: status_pb2.Status | None,
    request: object = None,
) -> BrokerError:
    """The typed error for a status code, message and optional `google.rpc.Status`.

    Args:
        code: The call's status code.
        message: The call's status message.
        status: The `google.rpc.Status` the broker sent in the trailers, if any.
        request: The request that failed, to read back the value of each bad field.

    """
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    details = list(status.details) if status is not None else []
    for detail in details:
        info = _error_info(detail)
        if info is not None:
            reason, metadata = info
        violations.extend(_field_violations(detail))
    values = _field_values(request, [field for field, _ in violations])
    error_class = _BY_CODE.get(code, BrokerError)
    return error_class(
        code,
        message,
        reason=reason,
        metadata=metadata,
        field_violations=violations,
        field_values=values,
        details=details,
    )


def error_from_rpc(error: grpc.RpcError, request: object = None) -> BrokerError:
    """Turn a failed call (sync or asyncio) into the `BrokerError` subclass of its code.

    Args:
        error: What grpc raised.
        request: The request of the call, to quote the value of each bad field.

    """
    if isinstance(error, aio.AioRpcError):
        status = _status_from_metadata(error.trailing_metadata())
        return error_from_status(error.code(), error.details() or "", status, request)
    if isinstance(error, grpc.Call):
        try:
            status = rpc_status.from_call(error)
        except ValueError:
            status = None
        return error_from_status(error.code(), error.details() or "", status, request)
    return BrokerError(grpc.StatusCode.UNKNOWN, str(error))


def _field_values(request: object, fields: Iterable[str]) -> dict[str, str]:
    """The text each field path (`event.name`, `events[3].name`) holds in the request.

    Paths that do not lead to a non-empty string (a number, a message, a map, a
    path the client cannot follow) are left out: the broker's description says
    enough about those.
    """
    values: dict[str, str] = {}
    if request is None:
        return values
    for field in fields:
        value: object = request
        try:
            for part in field.split("."):
                name, _, index = part.partition("[")
                value = getattr(value, name)
                if index:
                    value = value[int(index.rstrip("]"))]  # type: ignore[index]
        except (AttributeError, IndexError, TypeError, ValueError):
            continue
        if isinstance(value, str) and value:
            values[field] = value
    return values


def _status_from_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | None,
) -> status_pb2.Status | None:
    for key, value in metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def _error_info(detail: any_pb2.Any) -> tuple[str, dict[str, str]] | None:
    if not detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
        return None
    info = error_details_pb2.ErrorInfo()
    detail.Unpack(info)
    return info.reason, dict(info.metadata)


def _field_violations(detail: any_pb2.Any) -> list[tuple[str, str]]:
    if not detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
        return []
    bad = error_details_pb2.BadRequest()
    detail.Unpack(bad)
    return [(v.field, v.description) for v in bad.field_violations]
