"""Prometheus metrics of one broker process, named by Prometheus conventions.

Counters and the latency histogram are updated where the work happens (the
engine); gauges of the backlog per subscription and state, and of consumers,
are read from storage when `/metrics` is scraped. Each broker has its own
registry, so several brokers in one process (tests) do not collide.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from broker.domain import SubscriptionCounts

#: Publish -> first delivery, in seconds: from sub-millisecond to a minute.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0
)  # fmt: skip
STATES = ("scheduled", "ready", "in_flight", "acked", "dead")


class BrokerMetrics:
    """The metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events_published = Counter(
            "eventbroker_events_published",
            "Events stored by Publish and BatchPublish (duplicates not counted).",
            registry=self.registry,
        )
        self.events_duplicate = Counter(
            "eventbroker_events_duplicate",
            "Publishes answered DUPLICATE: an event id seen within the dedup window.",
            registry=self.registry,
        )
        self.deliveries = Counter(
            "eventbroker_deliveries",
            "Deliveries sent to consumers, by subscription.",
            ["subscription"],
            registry=self.registry,
        )
        self.acks = Counter(
            "eventbroker_acks",
            "Deliveries acknowledged, by subscription.",
            ["subscription"],
            registry=self.registry,
        )
        self.delivery_latency = Histogram(
            "eventbroker_delivery_latency_seconds",
            "From an event being ready (published, or due) to its first delivery.",
            ["subscription"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.backlog = Gauge(
            "eventbroker_deliveries_by_state",
            "Deliveries of each subscription in each state, when scraped.",
            ["subscription", "state"],
            registry=self.registry,
        )
        self.oldest_waiting = Gauge(
            "eventbroker_oldest_waiting_age_seconds",
            "Age of the oldest ready delivery of each subscription, when scraped.",
            ["subscription"],
            registry=self.registry,
        )
        self.consumers = Gauge(
            "eventbroker_consumers",
            "Consumers connected to this broker process, by subscription.",
            ["subscription"],
            registry=self.registry,
        )
        self.stored_events = Gauge(
            "eventbroker_stored_events", "Events stored, when scraped.", registry=self.registry
        )

    def set_counts(
        self,
        counts: Sequence[SubscriptionCounts],
        events: int,
        consumers: dict[str, int],
        now_us: int,
    ) -> None:
        """Refresh the gauges from storage counts (called on scrape)."""
        self.backlog.clear()
        self.oldest_waiting.clear()
        self.consumers.clear()
        for row in counts:
            for state in STATES:
                self.backlog.labels(row.subscription, state).set(getattr(row, state))
            if row.oldest_waiting_us is not None:
                age_s = max(0, now_us - row.oldest_waiting_us) / 1_000_000
                self.oldest_waiting.labels(row.subscription).set(age_s)
            self.consumers.labels(row.subscription).set(consumers.get(row.subscription, 0))
        self.stored_events.set(events)
