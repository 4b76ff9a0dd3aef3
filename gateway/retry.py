"""The retry policy: when a failed delivery is tried again, and when the router gives up."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import backoff

from gateway.config import RetryConfig
from gateway.errors import DeliveryError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped per attempt, with give-up limits.

    The defaults follow Segment (keep trying for 4 hours) with attempts capped so a fast-failing
    destination does not retry thousands of times; see ``RetryConfig`` for each field.
    """

    max_attempts: int = 30
    max_age_s: float = 4 * 3600.0
    base_delay_s: float = 1.0
    max_delay_s: float = 300.0
    max_retry_after_s: float = 3600.0

    @classmethod
    def from_config(cls, config: RetryConfig) -> RetryPolicy:
        """The policy a destination's ``retry`` settings describe."""
        return cls(
            max_attempts=config.max_attempts,
            max_age_s=config.max_age_s,
            base_delay_s=config.base_delay_s,
            max_delay_s=config.max_delay_s,
            max_retry_after_s=config.max_retry_after_s,
        )

    def delay_s(self, attempts: int, error: DeliveryError) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt.

        The destination's own hint (``Retry-After``) wins, bounded by ``max_retry_after_s``;
        otherwise the ``backoff`` library's exponential schedule with full jitter, capped at
        ``max_delay_s``.
        """
        hint = getattr(error, "retry_after_s", None)
        if hint is not None:
            return float(min(max(hint, 0.0), self.max_retry_after_s))
        wait = backoff.expo(factor=self.base_delay_s, max_value=self.max_delay_s)
        wait.send(None)
        ceiling = next(itertools.islice(wait, max(attempts - 1, 0), None))
        return float(backoff.full_jitter(ceiling))

    def give_up_reason(self, attempts: int, first_attempt_at: float, now: float) -> str | None:
        """Why to stop retrying after ``attempts`` failures, or ``None`` to go on."""
        if attempts >= self.max_attempts:
            return f"gave up after {attempts} attempts (max_attempts)"
        age = now - first_attempt_at
        if age >= self.max_age_s:
            return f"gave up after {age:.0f} s of retrying (max_age_s {self.max_age_s:.0f})"
        return None
