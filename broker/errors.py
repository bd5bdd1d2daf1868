"""Errors the broker raises, and their google.rpc form (AIP-193).

Every error carries a gRPC status code, a message a person can act on, an
UPPER_SNAKE reason for `google.rpc.ErrorInfo`, and for bad requests the
violations of each field for `google.rpc.BadRequest`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "eventbroker.v1"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: its path (`events[3].name`) and what is wrong with it."""

    field: str
    description: str
    #: A size limit was passed (RESOURCE_EXHAUSTED rather than INVALID_ARGUMENT).
    too_large: bool = False


@dataclass(eq=False)
class BrokerError(Exception):
    """An error that maps to one gRPC status with details."""

    code: grpc.StatusCode
    reason: str
    message: str
    violations: Sequence[FieldViolation] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def to_status_proto(self) -> status_pb2.Status:
        """The `google.rpc.Status` with ErrorInfo and, if any, BadRequest details."""
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=dict(self.metadata)
        )
        details = [_pack(info)]
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
            details.append(_pack(bad))
        code_value: int = self.code.value[0]
        return status_pb2.Status(code=code_value, message=self.message, details=details)


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def invalid_argument(
    violations: Sequence[FieldViolation], reason: str = "INVALID_ARGUMENT"
) -> BrokerError:
    """INVALID_ARGUMENT naming every bad field."""
    message = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return BrokerError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, violations)


def too_large(violations: Sequence[FieldViolation]) -> BrokerError:
    """RESOURCE_EXHAUSTED for size limits, naming each field and its limit."""
    message = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return BrokerError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "SIZE_LIMIT_EXCEEDED", message, violations
    )


def not_found(kind: str, name: str) -> BrokerError:
    """NOT_FOUND for a named resource."""
    return BrokerError(
        grpc.StatusCode.NOT_FOUND,
        f"{kind.upper()}_NOT_FOUND",
        f"{kind} {name!r} does not exist",
        metadata={kind: name},
    )


def already_exists(kind: str, name: str) -> BrokerError:
    """ALREADY_EXISTS for a named resource."""
    return BrokerError(
        grpc.StatusCode.ALREADY_EXISTS,
        f"{kind.upper()}_ALREADY_EXISTS",
        f"{kind} {name!r} already exists",
        metadata={kind: name},
    )


def database_unavailable() -> BrokerError:
    """UNAVAILABLE: the database cannot take the request now; retrying may work.

    The message is the same every time: the driver's own words name the
    database's host, port and name, which are for the broker's log, not for callers.
    """
    return BrokerError(
        grpc.StatusCode.UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        "the broker's database is unavailable; retry later",
    )


def storage_full() -> BrokerError:
    """UNAVAILABLE: the database has no room to write (disk full); retrying later may work."""
    return BrokerError(
        grpc.StatusCode.UNAVAILABLE,
        "STORAGE_FULL",
        "the broker's storage is full (database or disk is full); retry later",
    )


def internal(message: str) -> BrokerError:
    """INTERNAL: a fault of the broker itself, logged where it happened."""
    return BrokerError(grpc.StatusCode.INTERNAL, "INTERNAL", message)


def unauthenticated(message: str, reason: str = "API_KEY_INVALID") -> BrokerError:
    """UNAUTHENTICATED: no API key, one the broker does not know (or revoked), or none active."""
    return BrokerError(grpc.StatusCode.UNAUTHENTICATED, reason, message)


def permission_denied(reason: str, message: str, **metadata: str) -> BrokerError:
    """PERMISSION_DENIED: a valid key without the scope or the name the call needs."""
    return BrokerError(grpc.StatusCode.PERMISSION_DENIED, reason, message, metadata=metadata)


def resource_exhausted(reason: str, message: str, **metadata: str) -> BrokerError:
    """RESOURCE_EXHAUSTED: a limit on rate or on concurrent use was reached; retry later."""
    return BrokerError(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message, metadata=metadata)
