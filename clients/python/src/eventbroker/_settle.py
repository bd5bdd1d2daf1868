"""Batched acks and nacks for the consumer runtime: one RPC settles many deliveries.

Handlers finish one at a time, but an Ack per delivery would cost a round trip
and a database transaction each. The settler collects ack ids and sends them
together every few milliseconds, or at once when `max_pending` are waiting.
Nacks are grouped by what they carry (error text, terminal or not), since one
Nack applies one error to all its ids. With tracing on, each call is a span
`ack {subscription}` / `nack {subscription}` linking the process spans of the
deliveries it settles (see `eventbroker._tracing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

from eventbroker import _tracing as tracing
from eventbroker.aio import AsyncClient
from eventbroker.errors import BrokerError, Unavailable
from eventbroker.types import AckResult

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

_log = logging.getLogger("eventbroker.consumer")

FLUSH_INTERVAL_S = 0.005
MAX_PENDING = 100
SETTLE_ATTEMPTS = 3


_NackKey = tuple[bool, str, timedelta | None]


class Settler:
    """Collects acks and nacks and sends them in batches until closed.

    Args:
        client: The client the calls go through.
        subscription: The subscription settled, for the settle spans' names.
        flush_interval_s: How long a settlement waits for others to join it.
        max_pending: Settlements that make a flush go at once.

    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        subscription: str = "",
        flush_interval_s: float = FLUSH_INTERVAL_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._client = client
        self._subscription = subscription
        self._flush_interval_s = flush_interval_s
        self._max_pending = max_pending
        self._acks: list[str] = []
        self._nacks: defaultdict[_NackKey, list[str]] = defaultdict(list)
        # The process spans of what is queued, for the settle spans to link to.
        self._ack_traces: list[SpanContext | None] = []
        self._nack_traces: defaultdict[_NackKey, list[SpanContext | None]] = defaultdict(list)
        self._pending = 0
        self._has_pending = asyncio.Event()
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()

    def ack(self, ack_id: str, *, traced: SpanContext | None = None) -> None:
        """Queue an ack (`traced`: the delivery's process span, when tracing is on)."""
        self._acks.append(ack_id)
        self._ack_traces.append(traced)
        self._added()

    def nack(
        self,
        ack_id: str,
        *,
        error: str,
        terminal: bool,
        delay: timedelta | None = None,
        traced: SpanContext | None = None,
    ) -> None:
        """Queue a nack: retried after `delay` (default: the backoff), or dead-lettered."""
        key = (terminal, error, delay)
        self._nacks[key].append(ack_id)
        self._nack_traces[key].append(traced)
        self._added()

    def _added(self) -> None:
        self._pending += 1
        self._has_pending.set()
        if self._pending >= self._max_pending:
            self._full.set()

    async def run(self) -> None:
        """Flush whenever something is pending, after the interval or once full; until cancelled."""
        while True:
            await self._has_pending.wait()
            if not self._full.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._flush_interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Send everything queued now."""
        async with self._lock:
            acks, nacks = self._acks, self._nacks
            ack_traces, nack_traces = self._ack_traces, self._nack_traces
            self._acks, self._nacks = [], defaultdict(list)
            self._ack_traces, self._nack_traces = [], defaultdict(list)
            self._pending = 0
            self._has_pending.clear()
            self._full.clear()
            sends = (
                [self._send("ack", acks, partial(self._client.ack, acks), ack_traces)]
                if acks
                else []
            )
            sends.extend(
                self._send(
                    "nack",
                    ids,
                    partial(self._client.nack, ids, terminal=terminal, error=error, delay=delay),
                    nack_traces[(terminal, error, delay)],
                    {"messaging.eventbroker.nack.terminal": terminal},
                )
                for (terminal, error, delay), ids in nacks.items()
            )
            await asyncio.gather(*sends)

    async def _send(
        self,
        kind: str,
        ack_ids: list[str],
        call: Callable[[], Awaitable[AckResult]],
        traces: list[SpanContext | None],
        attributes: dict[str, bool] | None = None,
    ) -> None:
        """Settle, retrying a broker that is briefly unavailable; log what could not be settled.

        A delivery whose ack is lost is delivered again after its deadline
        (at-least-once), so a failure here is logged, not raised.
        """
        with tracing.Settling(kind, self._subscription, len(ack_ids), traces, attributes) as span:
            await self._settle(kind, ack_ids, call, span)

    async def _settle(
        self,
        kind: str,
        ack_ids: list[str],
        call: Callable[[], Awaitable[AckResult]],
        span: tracing.Settling,
    ) -> None:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(Unavailable),
                stop=stop_after_attempt(SETTLE_ATTEMPTS),
                wait=wait_random_exponential(multiplier=0.05, max=1.0),
                reraise=True,
            ):
                with attempt:
                    result = await call()
        except BrokerError as error:
            _log.warning(
                "could not %s %d deliveries (%s); they will be delivered again",
                kind,
                len(ack_ids),
                error,
            )
            span.failed(error)
            return
        span.not_applied(len(result.not_applied))
        if result.not_applied:
            _log.info(
                "%d of %d %ss not applied (lease expired or moved on); those deliveries come again",
                len(result.not_applied),
                len(ack_ids),
                kind,
            )
