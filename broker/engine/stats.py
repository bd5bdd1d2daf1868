"""What this broker process counts as it delivers: the rates GetStats reports, and metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from broker import trace_context
from broker.domain import LeasedDelivery
from broker.engine.metrics import BrokerMetrics
from broker.engine.rates import RateMeter

US_PER_S = 1_000_000


@dataclass
class Rates:
    """Rates measured by this broker process, for GetStats."""

    published: RateMeter = field(default_factory=RateMeter)
    delivered: dict[str, RateMeter] = field(default_factory=dict)
    acked: dict[str, RateMeter] = field(default_factory=dict)


class Stats:
    """Counts publishes, deliveries and acks into the rates and the Prometheus metrics.

    Args:
        exemplars: Observe a first delivery's latency with the trace id of its
            event's `traceparent` as an exemplar, linking the histogram to traces.

    """

    def __init__(self, *, exemplars: bool = False) -> None:
        self.rates = Rates()
        self.metrics = BrokerMetrics(exemplars=exemplars)
        self._exemplars = exemplars

    def published(self, new: int, duplicates: int) -> None:
        """Events stored by a publish, and duplicates it stored nothing for."""
        self.rates.published.add(new)
        self.metrics.events_published.inc(new)
        if duplicates:
            self.metrics.events_duplicate.inc(duplicates)

    def delivered(
        self, subscription: str, deliveries: Sequence[LeasedDelivery], now_us: int
    ) -> None:
        """Deliveries leased to a consumer here (a first attempt's latency is observed)."""
        self.rates.delivered.setdefault(subscription, RateMeter()).add(len(deliveries))
        self.metrics.deliveries.labels(subscription).inc(len(deliveries))
        latency = self.metrics.delivery_latency.labels(subscription)
        for delivery in deliveries:
            if delivery.attempt != 1:
                continue
            seconds = max(0, now_us - delivery.event.deliver_at_us) / US_PER_S
            trace_id = trace_context.trace_id(delivery.event.headers) if self._exemplars else ""
            latency.observe(seconds, exemplar={"trace_id": trace_id} if trace_id else None)

    def acked(self, subscription: str, count: int) -> None:
        """Acks of leases held by consumers here."""
        self.rates.acked.setdefault(subscription, RateMeter()).add(count)
        self.metrics.acks.labels(subscription).inc(count)
