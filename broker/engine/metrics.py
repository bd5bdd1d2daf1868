"""Prometheus metrics of a broker, named by Prometheus conventions.

Counters, the latency histogram and the gauge of connected consumers are
updated where the work happens (the engine); gauges of the backlog per
subscription and state, and of stored events, are read from storage when
`/metrics` is scraped. Each broker has its own registry, so several brokers in
one process (tests) do not collide.

Several processes (`broker serve --processes N`) share one HTTP port, so a
scrape reaches one of them: the supervisor sets `PROMETHEUS_MULTIPROC_DIR` to a
directory of its own, prometheus-client's multiprocess mode then keeps each
process's values in files there, and `exposition()` adds up the files of every
process (`MultiProcessCollector`). Its limits shape what is kept where:

- values kept in the files are the ones a process records itself: counters and
  the histogram (summed over processes, the dead included, so totals never go
  back), and consumers per subscription (`livesum`: the processes alive now);
- custom collectors of other processes are not seen, and a gauge set at scrape
  time would keep other processes' stale values, so the storage gauges are a
  collector of the scraping process alone: they count the shared database, so
  any process gives the whole broker's numbers;
- the supervisor calls `mark_process_dead` for each process that exits, and
  removes the directory when it stops.

Without the variable (one process) the registry is served as it is.

Exemplars (`broker serve --metrics-exemplars`: the trace id of an event on its
delivery latency) exist only in the OpenMetrics format, so `/metrics` serves that
format to a scraper that asks for it (Prometheus does) while they are on; the
multiprocess files keep no exemplars.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics import exposition as openmetrics

from broker.domain import SubscriptionCounts

#: Set (by the supervisor) to the directory where processes keep their values.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Publish -> first delivery, in seconds: from sub-millisecond to a minute.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0
)  # fmt: skip
STATES = ("scheduled", "ready", "in_flight", "acked", "dead")


#: What a scraper sends in `Accept` when it takes OpenMetrics (and so exemplars).
OPENMETRICS_MEDIA_TYPE = "application/openmetrics-text"


class BrokerMetrics:
    """The metrics, in a registry of their own.

    Args:
        exemplars: Whether the latency histogram carries exemplars, served in the
            OpenMetrics format to a scraper that accepts it.

    """

    def __init__(self, *, exemplars: bool = False) -> None:
        self.exemplars = exemplars
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
        self.consumers = Gauge(
            "eventbroker_consumers",
            "Consumers connected to the broker (every process of it), by subscription.",
            ["subscription"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.storage_counts = StorageCounts()
        self.registry.register(self.storage_counts)

    def consumer_attached(self, subscription: str) -> None:
        """Count a consumer that connected to this process."""
        self.consumers.labels(subscription).inc()

    def consumer_detached(self, subscription: str) -> None:
        """Count a consumer that left this process."""
        self.consumers.labels(subscription).dec()

    def set_counts(self, counts: Sequence[SubscriptionCounts], events: int, now_us: int) -> None:
        """Refresh the storage gauges (called on scrape, before `exposition()`)."""
        self.storage_counts.counts = list(counts)
        self.storage_counts.events = events
        self.storage_counts.now_us = now_us

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The metrics and their content type: of every broker process, if several.

        The Prometheus text format, or OpenMetrics (with the exemplars) when they
        are on and `accept`, the scraper's `Accept` header, takes it.
        """
        if not os.environ.get(MULTIPROC_DIR_ENV):
            if self.exemplars and OPENMETRICS_MEDIA_TYPE in accept:
                body: bytes = openmetrics.generate_latest(self.registry)  # type: ignore[no-untyped-call]  # untyped upstream
                return body, openmetrics.CONTENT_TYPE_LATEST
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        everyone = CollectorRegistry()
        MultiProcessCollector(everyone)  # type: ignore[no-untyped-call]  # untyped upstream
        everyone.register(self.storage_counts)
        return generate_latest(everyone), CONTENT_TYPE_LATEST


class StorageCounts:
    """Gauges of what storage holds, as last read: per subscription and state, and events."""

    def __init__(self) -> None:
        self.counts: list[SubscriptionCounts] = []
        self.events = 0
        self.now_us = 0

    def collect(self) -> Iterator[Metric]:
        """The gauges, from the counts last set."""
        backlog = GaugeMetricFamily(
            "eventbroker_deliveries_by_state",
            "Deliveries of each subscription in each state, when scraped.",
            labels=["subscription", "state"],
        )
        oldest = GaugeMetricFamily(
            "eventbroker_oldest_waiting_age_seconds",
            "Age of the oldest ready delivery of each subscription, when scraped.",
            labels=["subscription"],
        )
        for row in self.counts:
            for state in STATES:
                backlog.add_metric([row.subscription, state], getattr(row, state))
            if row.oldest_waiting_us is not None:
                age_s = max(0, self.now_us - row.oldest_waiting_us) / 1_000_000
                oldest.add_metric([row.subscription], age_s)
        yield backlog
        yield oldest
        yield GaugeMetricFamily(
            "eventbroker_stored_events", "Events stored, when scraped.", value=self.events
        )
