"""A circuit breaker per destination: stop sending to one that keeps failing, probe, resume."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

__all__ = ["CircuitBreaker"]

log = structlog.get_logger("eventgate.router")


class CircuitBreaker:
    """Closed (deliver), open (deliver nothing until ``open_until``), half-open (one probe).

    After ``failure_threshold`` delivery attempts in a row that delivered nothing and failed
    retryably, the circuit opens for ``open_s``; then one worker may send one batch as a probe.
    A probe that delivers anything closes the circuit; one that fails opens it again for twice as
    long, up to ``max_open_s``. While open, the destination's events simply stay in the log: no
    requests hammer the destination and nothing is written to the retry table.
    """

    def __init__(
        self,
        destination: str,
        *,
        failure_threshold: int,
        open_s: float,
        max_open_s: float,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.destination = destination
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.max_open_s = max_open_s
        self._on_change = on_change
        self._clock = clock
        self._failures = 0
        self._open_for = open_s
        self.open_until: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        """Whether deliveries are paused (open or half-open)."""
        return self.open_until is not None

    def allows(self) -> bool:
        """May a worker deliver now? In half-open state, ``True`` once: that call is the probe."""
        if self.open_until is None:
            return True
        if self._probing or self._clock() < self.open_until:
            return False
        self._probing = True
        return True

    def wait_s(self) -> float:
        """How long until a probe may be sent (0 when closed)."""
        if self.open_until is None:
            return 0.0
        return max(self.open_until - self._clock(), 0.0)

    def record(self, *, delivered: int, retryable_failures: int) -> None:
        """Record the outcome of one delivery attempt."""
        if delivered:
            if self.open_until is not None:
                log.info("delivery.circuit_closed", destination=self.destination)
                self._notify(is_open=False)
            self._failures = 0
            self._open_for = self.open_s
            self.open_until = None
            self._probing = False
            return
        if not retryable_failures:
            return  # permanent failures say nothing about the destination's health
        self._failures += 1
        if self._probing:
            self._open_for = min(self._open_for * 2, self.max_open_s)
            self._trip()
        elif self.open_until is None and self._failures >= self.failure_threshold:
            self._trip()

    def _trip(self) -> None:
        was_open = self.open_until is not None
        self.open_until = self._clock() + self._open_for
        self._probing = False
        log.warning(
            "delivery.circuit_opened",
            destination=self.destination,
            consecutive_failures=self._failures,
            open_s=round(self._open_for, 3),
        )
        if not was_open:
            self._notify(is_open=True)

    def _notify(self, *, is_open: bool) -> None:
        if self._on_change is not None:
            self._on_change(is_open)
