"""Structured logs: one key=value line per event worth logging, with the request id.

A caller may send `x-request-id` in its gRPC metadata (or as an HTTP header);
every line logged while the broker serves that call carries it as
`request_id=...`, so one request can be followed through the log. Lines
logged outside a call carry `request_id=-`.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterable
from typing import Any

LOG_FORMAT = (
    "time=%(asctime)s level=%(levelname)s pid=%(process)d logger=%(name)s "
    "request_id=%(request_id)s msg=%(message)r"
)
REQUEST_ID_KEY = "x-request-id"
#: Longest request id kept (longer ones are cut, so a caller cannot flood the log).
REQUEST_ID_MAX = 128

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds the current call's request id to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate; never drops a record."""
        record.request_id = request_id.get()
        return True


def configure_logging(level: str) -> None:
    """Key=value log lines at `level`, in this process, with request ids."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
    logging.getLogger("alembic").setLevel(logging.WARNING)


def request_id_from(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The caller's request id from call metadata or headers, if it sent one."""
    for key, value in metadata or ():
        if key.lower() == REQUEST_ID_KEY:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            cleaned = "".join(c for c in text if c.isprintable() and not c.isspace())
            return cleaned[:REQUEST_ID_MAX] or None
    return None
