"""Prometheus metrics, one registry per application (no module-level singletons)."""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["Metrics", "enable_multiprocess_metrics", "observe_many"]


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for every ``a``, with one write per bucket touched.

    The router delivers thousands of events per batch; one ``observe`` each (three shared-memory
    writes in multiprocess mode) was a measurable share of its CPU. This uses the bucket layout
    of prometheus-client's ``Histogram`` (non-cumulative ``_buckets`` beside ``_upper_bounds``,
    and ``_sum``); if a release changes it, this falls back to ``observe`` per amount, and
    ``tests/test_metrics.py`` compares both.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    counts: dict[int, int] = {}
    for amount in amounts:
        index = bisect.bisect_left(bounds, amount)
        counts[index] = counts.get(index, 0) + 1
    total.inc(sum(amounts))
    for index, count in counts.items():
        buckets[index].inc(count)


def enable_multiprocess_metrics(directory: Path) -> None:
    """Keep this process's metric values in ``directory`` so one scrape sums every process.

    Call it in each process of ``eventgate serve`` before any :class:`Metrics` is created.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class Metrics:
    """Every metric eventgate exports; ``registry`` is what ``/metrics`` renders.

    With ``multiprocess_dir`` (see :func:`enable_multiprocess_metrics`), ``registry`` renders the
    sum over every process writing to that directory.
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        r = CollectorRegistry(auto_describe=True)
        if multiprocess_dir is None:
            self.registry = r
        else:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
        self.events_received = Counter(
            "eventgate_events_received",
            "Events accepted and stored, by source",
            ["source"],
            registry=r,
        )
        self.events_rejected = Counter(
            "eventgate_events_rejected",
            "Events refused at ingress, by source and reason code",
            ["source", "reason"],
            registry=r,
        )
        self.deduplicated = Counter(
            "eventgate_events_deduplicated",
            "Events acknowledged but not stored again: their messageId was already accepted",
            ["source"],
            registry=r,
        )
        self.requests_rejected = Counter(
            "eventgate_requests_rejected",
            "Whole ingress requests refused, by reason code",
            ["code"],
            registry=r,
        )
        self.requests_limited = Counter(
            "eventgate_requests_limited",
            "Requests answered 429 because their source is over a limit, by source and limit "
            "(requests_per_minute, events_per_month)",
            ["source", "limit"],
            registry=r,
        )
        self.delivered = Counter(
            "eventgate_events_delivered",
            "Events delivered, by destination",
            ["destination"],
            registry=r,
        )
        self.filtered = Counter(
            "eventgate_events_filtered",
            "Events left out or changed by a routing rule, by source, destination (empty: at "
            "the source, before storing), rule and action",
            ["source", "destination", "rule", "action"],
            registry=r,
        )
        self.delivery_failures = Counter(
            "eventgate_delivery_failures",
            "Failed delivery attempts, by destination and whether they will be retried",
            ["destination", "retryable"],
            registry=r,
        )
        self.retried = Counter(
            "eventgate_events_retried",
            "Delivery attempts of events that failed before, by destination",
            ["destination"],
            registry=r,
        )
        self.replayed = Counter(
            "eventgate_dead_letters_replayed",
            "Dead letters replayed (eventgate dlq replay), by destination",
            ["destination"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "eventgate_events_dead_lettered",
            "Events given up on, by destination",
            ["destination"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "eventgate_queue_depth",
            "Events in the log not yet handled by the destination",
            ["destination"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.circuit_open = Gauge(
            "eventgate_circuit_open",
            "1 while the destination's circuit breaker pauses deliveries to it",
            ["destination"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.in_flight = Gauge(
            "eventgate_in_flight",
            "Events being delivered right now, by destination",
            ["destination"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.oldest_pending_age = Gauge(
            "eventgate_oldest_pending_age_seconds",
            "Age (since receivedAt) of the oldest event the destination has not reached yet",
            ["destination"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.attempt_duration = Histogram(
            "eventgate_delivery_attempt_seconds",
            "How long one delivery attempt (a batch, or one event) took",
            ["destination"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "eventgate_end_to_end_latency_seconds",
            "Time from receivedAt to delivered",
            ["destination"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.destination_counts = Counter(
            "eventgate_destination_counts",
            "What a destination plugin counted itself, by destination and what (e.g. a "
            "warehouse's unmapped_values)",
            ["destination", "what"],
            registry=r,
        )
        self.log_bytes = Gauge(
            "eventgate_log_bytes",
            "Bytes the durable log occupies on disk",
            registry=r,
            multiprocess_mode="livemax",
        )
