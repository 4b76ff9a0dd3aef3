"""Flow control per destination: a limit on batches in flight and a rate limit in events/s."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from gateway.config import FlowConfig

__all__ = ["FlowControl", "TokenBucket"]


class TokenBucket:
    """At most ``rate_per_s`` events per second on average, bursts up to one second's worth.

    A batch larger than the burst waits until the bucket is full and then takes it all, so a
    batch is never split and never starves.
    """

    def __init__(self, rate_per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = max(rate_per_s, 1.0)
        self._tokens = self.capacity
        self._clock = clock
        self._updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now

    def wait_s(self, events: int) -> float:
        """How long until ``events`` may go (0 if they may go now)."""
        self._refill()
        needed = min(events, self.capacity)
        return max((needed - self._tokens) / self.rate_per_s, 0.0)

    async def take(self, events: int) -> None:
        """Wait until ``events`` may be sent, then spend them (the balance may go negative for
        a batch above the burst, which later batches pay back)."""
        async with self._lock:
            wait = self.wait_s(events)
            if wait > 0:
                await asyncio.sleep(wait)
                self._refill()
            self._tokens -= events


class FlowControl:
    """A destination's shared limits; ``slot(events)`` wraps one delivery attempt."""

    def __init__(self, config: FlowConfig, shards: int) -> None:
        self.in_flight = asyncio.Semaphore(config.max_in_flight or max(shards, 1))
        self.bucket = TokenBucket(config.rate_limit_per_s) if config.rate_limit_per_s else None

    @contextlib.asynccontextmanager
    async def slot(self, events: int) -> AsyncIterator[None]:
        """Hold one of the in-flight slots (after the rate limit allows ``events``)."""
        if self.bucket is not None:
            await self.bucket.take(events)
        async with self.in_flight:
            yield
