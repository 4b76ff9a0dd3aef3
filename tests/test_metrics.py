"""Tests for gateway/metrics.py."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.metrics import observe_many

# On, below and above each bound, and past the last one.
AMOUNTS = [0.0, 0.001, 0.01, 0.02, 0.5, 0.5, 1.0, 59.0, 61.0, 10_000.0]


def render(bulk: bool) -> list[bytes]:
    """The histogram's exposition after observing AMOUNTS, without its creation time."""
    registry = CollectorRegistry()
    histogram = Histogram("h", "test", ["d"], buckets=(0.01, 0.1, 1, 60), registry=registry)
    child = histogram.labels("x")
    if bulk:
        observe_many(child, AMOUNTS)
    else:
        for amount in AMOUNTS:
            child.observe(amount)
    return [line for line in generate_latest(registry).splitlines() if b"_created" not in line]


def test_observe_many_equals_observing_one_by_one() -> None:
    """Bulk observation renders exactly what one observe per amount renders (bounds included)."""
    bulk = render(bulk=True)
    assert bulk == render(bulk=False)
    assert b'h_bucket{d="x",le="0.01"} 3.0' in bulk
    assert b'h_bucket{d="x",le="1.0"} 7.0' in bulk
    assert b'h_count{d="x"} 10.0' in bulk
