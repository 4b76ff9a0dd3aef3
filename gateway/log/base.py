"""The storage protocol every backend implements (embedded SQLite today, JetStream later)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.destination import Event
from gateway.events import NormalizedEvent

__all__ = ["DeadLetter", "EventLog", "IngressLog", "PendingRetry", "ReadResult"]


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Events a destination should deliver next, and how far the scan got.

    ``scanned_to`` may be past the last event returned when the rows in between belong to sources
    that do not feed the destination; the caller may advance its cursor to it. ``newest`` is the
    newest sequence number in the log at the time of the read.
    """

    events: list[Event]
    scanned_to: int
    newest: int
    skipped: int = 0
    """Rows scanned but left out because their source does not feed the destination."""
    backlog: int | None = None
    """How many events are left from ``after`` on, when the backend counts them exactly
    (``None``: ``newest - after`` is exact, as with the embedded log's dense numbering)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a destination gave up on, with the reason and the last exchange."""

    destination: str
    event: Event
    reason: str
    attempts: int
    first_attempt_at: float
    last_attempt_at: float
    request: str | None
    response: str | None


@dataclass(frozen=True, slots=True)
class PendingRetry:
    """An event waiting on disk for its next delivery attempt to one destination.

    It carries the event itself, so compaction of the log never has to wait for it.
    """

    destination: str
    event: Event
    attempts: int
    first_attempt_at: float
    next_attempt_at: float
    reason: str
    request: str | None = None
    response: str | None = None
    user_key: str | None = None
    """The event's user (``ordering: per_user``): its later events wait behind it."""


class EventLog(Protocol):
    """Append durably, read per destination, remember each destination's position."""

    async def open(self) -> None:
        """Create or recover the storage; must be called before anything else."""

    async def close(self) -> None:
        """Finish pending writes and release the storage."""

    async def append(self, events: Sequence[NormalizedEvent]) -> int:
        """Store ``events`` durably; return only once they survive a crash.

        Returns how many were not stored because their messageId was already (deduplication).

        Raises:
            StorageFullError: the disk quota is reached; nothing was stored.
            StorageUnavailableError: the storage cannot be written; nothing was stored.
        """

    def last_seq(self) -> int:
        """The sequence number of the newest durable event (0 when empty)."""

    async def refresh(self) -> int:
        """Learn the newest durable sequence number, including other processes' commits."""

    async def wait_beyond(self, seq: int, timeout_s: float) -> None:
        """Return once an event newer than ``seq`` is durable, or after ``timeout_s``."""

    async def read(self, after: int, limit: int, sources: Collection[str] | None) -> ReadResult:
        """Up to ``limit`` events after sequence ``after`` from ``sources`` (``None``: all)."""

    async def get_cursor(self, destination: str) -> int | None:
        """The destination's saved position, or ``None`` if it has none yet."""

    async def set_cursor(self, destination: str, seq: int) -> None:
        """Durably save the destination's position: everything up to ``seq`` is handled."""

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Durably keep events a destination gave up on (and drop their pending retries)."""

    async def schedule_retries(self, retries: Sequence[PendingRetry]) -> None:
        """Durably record (or update) events to try again at their ``next_attempt_at``."""

    async def due_retries(self, destination: str, now: float, limit: int) -> list[PendingRetry]:
        """Up to ``limit`` of the destination's retries due at ``now``, oldest due first."""

    async def first_pending_of(
        self, destination: str, user_keys: Sequence[str]
    ) -> dict[str, tuple[int, float]]:
        """Per user: the sequence number and next attempt time of their earliest pending
        retry for the destination (users without one are absent)."""

    async def next_retry_at(self, destination: str) -> float | None:
        """When the destination's next retry is due, or ``None`` if none is pending."""

    async def retries_done(self, destination: str, seqs: Sequence[int]) -> None:
        """Forget the destination's retries of these events (they were delivered)."""

    async def compact(self, active_destinations: Collection[str]) -> int:
        """Delete events every active destination has passed; return how many were deleted."""


class IngressLog(Protocol):
    """What ingress needs of the log: append durably, and a few figures for health and metrics."""

    async def open(self) -> None:
        """Create, recover or connect to the storage."""

    async def close(self) -> None:
        """Finish pending writes and release the storage."""

    async def append(self, events: Sequence[NormalizedEvent]) -> int:
        """Store ``events`` durably (see :meth:`EventLog.append`); return the duplicates."""

    def last_seq(self) -> int:
        """The newest sequence number this process knows of."""

    def used_bytes(self) -> int:
        """How much storage the log uses, as last measured."""
