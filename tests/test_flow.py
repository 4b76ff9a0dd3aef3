"""Tests for gateway/flow.py: the token bucket and the in-flight limit."""

from __future__ import annotations

import asyncio

from gateway.config import FlowConfig
from gateway.flow import FlowControl, TokenBucket


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_the_rate() -> None:
    """A full bucket lets one second's worth go at once; then events wait at the rate."""
    clock = Clock()
    bucket = TokenBucket(100, clock=clock)
    assert bucket.wait_s(100) == 0
    bucket._tokens -= 100
    assert bucket.wait_s(50) == 0.5
    clock.now += 0.25
    assert bucket.wait_s(50) == 0.25
    clock.now += 10
    assert bucket.wait_s(100) == 0  # refills to the burst, never beyond


def test_bucket_never_starves_a_batch_above_the_burst() -> None:
    """A batch larger than one second's worth waits for a full bucket, not forever."""
    clock = Clock()
    bucket = TokenBucket(10, clock=clock)
    bucket._tokens = 0
    assert bucket.wait_s(1000) == 1.0


async def test_in_flight_limit_is_shared() -> None:
    """max_in_flight bounds concurrent deliveries across a destination's workers."""
    flow = FlowControl(FlowConfig(max_in_flight=2), shards=4)
    running = peak = 0

    async def attempt() -> None:
        nonlocal running, peak
        async with flow.slot(1):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.gather(*(attempt() for _ in range(8)))
    assert peak == 2


async def test_default_in_flight_is_one_per_shard() -> None:
    """Without max_in_flight each shard's worker may deliver at once."""
    flow = FlowControl(FlowConfig(), shards=3)
    assert flow.in_flight._value == 3
    assert flow.bucket is None
