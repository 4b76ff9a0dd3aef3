"""Per-source rate limits and monthly event quotas, shared by every ingress process.

Each limited source has a 32-byte counter file under ``<data_dir>/quotas/``, mapped into every
ingress process and updated under an ``fcntl`` lock: the limits hold for the gateway as a whole,
whichever process a client's connection lands on. The counters live in the page cache, so they
survive a crash of any gateway process (only a crash of the machine can lose the last seconds).

Windows are calendar windows in UTC, so ``Retry-After`` is exact: a request over the per-minute
limit may retry at the next minute, an event over the monthly quota at the next month.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["PLANS", "QuotaBook", "QuotaExceeded", "SourceQuota"]

PLANS: Mapping[str, tuple[int | None, int | None]] = {
    "free": (60, 500_000),
    "starter": (300, 5_000_000),
    "business": (1_000, 50_000_000),
    "enterprise": (None, None),
}
"""SegOps plans (WIRE.md section 8): API calls per minute and events per month."""

# minute window, requests in it, month window, events in it
_LAYOUT = struct.Struct("<qqqq")


@dataclass(frozen=True, slots=True)
class SourceQuota:
    """A source's limits; ``None`` means unlimited."""

    requests_per_minute: int | None
    events_per_month: int | None


@dataclass(frozen=True, slots=True)
class QuotaExceeded:
    """Why a request was refused and when the limit resets."""

    limit: str
    """``requests_per_minute`` or ``events_per_month``."""
    retry_after_s: int
    message: str


class _Counter:
    """One source's counters in its mapped file."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self.fd).st_size < _LAYOUT.size:
            os.ftruncate(self.fd, _LAYOUT.size)
        self.map = mmap.mmap(self.fd, _LAYOUT.size)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class QuotaBook:
    """The counters of every source that has a limit."""

    def __init__(self, directory: Path, quotas: Mapping[str, SourceQuota]) -> None:
        self.quotas = {name: q for name, q in quotas.items() if _limited(q)}
        self._counters: dict[str, _Counter] = {}
        if self.quotas:
            directory.mkdir(parents=True, exist_ok=True)
            for name in self.quotas:
                self._counters[name] = _Counter(directory / f"{name}.quota")

    def charge(self, source: str, events: int, now: float) -> QuotaExceeded | None:
        """Count one request carrying ``events`` events, or say why it is over a limit.

        A refused request counts for nothing, so a client that backs off is not locked out.
        """
        quota = self.quotas.get(source)
        if quota is None:
            return None
        counter = self._counters[source]
        minute = int(now // 60)
        month = _month_of(now)
        fcntl.lockf(counter.fd, fcntl.LOCK_EX)
        try:
            seen_minute, requests, seen_month, used = _LAYOUT.unpack(counter.map)
            requests = requests if seen_minute == minute else 0
            used = used if seen_month == month else 0
            limit = quota.requests_per_minute
            if limit is not None and requests + 1 > limit:
                return QuotaExceeded(
                    "requests_per_minute",
                    max(math.ceil((minute + 1) * 60 - now), 1),
                    f"source {source!r} is limited to {limit} requests per minute",
                )
            limit = quota.events_per_month
            if limit is not None and events and used + events > limit:
                return QuotaExceeded(
                    "events_per_month",
                    max(math.ceil(_next_month_start(now) - now), 1),
                    f"source {source!r} is limited to {limit} events per month; "
                    f"{max(limit - used, 0)} remain this month",
                )
            counter.map[:] = _LAYOUT.pack(minute, requests + 1, month, used + events)
            return None
        finally:
            fcntl.lockf(counter.fd, fcntl.LOCK_UN)

    def usage(self, source: str, now: float) -> tuple[int, int]:
        """Requests this minute and events this month for ``source`` (0, 0 if unlimited)."""
        counter = self._counters.get(source)
        if counter is None:
            return 0, 0
        seen_minute, requests, seen_month, used = _LAYOUT.unpack(counter.map)
        return (
            requests if seen_minute == int(now // 60) else 0,
            used if seen_month == _month_of(now) else 0,
        )

    def close(self) -> None:
        """Unmap every counter file."""
        for counter in self._counters.values():
            counter.close()
        self._counters.clear()


def _limited(quota: SourceQuota) -> bool:
    return quota.requests_per_minute is not None or quota.events_per_month is not None


def _month_of(now: float) -> int:
    moment = datetime.fromtimestamp(now, UTC)
    return moment.year * 12 + moment.month - 1


def _next_month_start(now: float) -> float:
    month = _month_of(now) + 1
    return datetime(month // 12, month % 12 + 1, 1, tzinfo=UTC).timestamp()
