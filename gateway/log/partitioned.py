"""Ingress's view of a partitioned log: each event goes to the partition of its user.

A user's events land in one partition whichever node accepted them, and a partition is
delivered by one node at a time, so per-user order holds across nodes (``ordering: per_user``).
Events without a user are spread by messageId.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Sequence
from typing import Any

import orjson
import structlog

from gateway import failpoints
from gateway.errors import StorageUnavailableError
from gateway.events import NormalizedEvent
from gateway.log.jetstream import JetStreamEventLog, JetStreamStorage

__all__ = ["PartitionedLog", "partition_of"]

log = structlog.get_logger("eventgate.log")

_RECONNECT_S = 1.0
_MEASURE_EVERY_S = 5.0


def partition_of(event: NormalizedEvent, partitions: int) -> int:
    """The partition ``event`` belongs to: a stable hash of its user (or its messageId)."""
    message: Any = event.message
    if message is None:  # not kept by ingress: one more parse, small beside a publish
        try:
            message = orjson.loads(event.body)
        except orjson.JSONDecodeError:
            message = {}
    user = (
        (message.get("userId") or message.get("anonymousId")) if isinstance(message, dict) else None
    )
    key = event.message_id if user is None else str(user)
    return zlib.crc32(key.encode()) % partitions


class PartitionedLog:
    """Appends to every partition of a :class:`JetStreamStorage` (what an ingress app holds)."""

    def __init__(self, storage: JetStreamStorage) -> None:
        self.storage = storage
        self.partitions: list[JetStreamEventLog] = storage.partitions()
        self._connector: asyncio.Task[None] | None = None
        self._measuring: asyncio.Future[None] | None = None

    async def open(self) -> None:
        """Open every partition (one connection for all), or keep trying in the background.

        While JetStream cannot be reached, :meth:`append` raises ``StorageUnavailableError``
        (ingress answers 503); the connection is retried every ``_RECONNECT_S``.
        """
        try:
            await self._open_all()
        except StorageUnavailableError as exc:
            log.error("log.jetstream_unreachable", error=str(exc), retry_s=_RECONNECT_S)
            self._connector = asyncio.create_task(self._connect_forever())

    async def _open_all(self) -> None:
        for partition in self.partitions:
            await partition.open()

    async def _connect_forever(self) -> None:
        while True:
            await asyncio.sleep(_RECONNECT_S)
            try:
                await self._open_all()
            except StorageUnavailableError:
                continue
            log.info("log.jetstream_connected")
            return

    async def close(self) -> None:
        """Stop trying to connect, then close every partition (which closes the connection)."""
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        for partition in self.partitions:
            await partition.close()

    async def append(self, events: Sequence[NormalizedEvent]) -> int:
        """Append each event to its user's partition; return how many were duplicates.

        Raises:
            StorageFullError: the stream is at its limits.
            StorageUnavailableError: JetStream cannot be written (some events may be stored;
                the client's retry is deduplicated by messageId).
        """
        count = len(self.partitions)
        groups: dict[int, list[NormalizedEvent]] = {}
        for event in events:
            groups.setdefault(partition_of(event, count), []).append(event)
        results = await asyncio.gather(
            *(self.partitions[n].append(group) for n, group in groups.items()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        failpoints.hit("log.append")
        return sum(r for r in results if isinstance(r, int))

    def last_seq(self) -> int:
        """The newest sequence number this process has appended or seen."""
        return max((p.last_seq() for p in self.partitions), default=0)

    def used_bytes(self) -> int:
        """The events stream's size at its last measurement (a new one starts when it is old)."""
        if self._measuring is None or self._measuring.done():
            self._measuring = asyncio.ensure_future(self._measure())
        return self.storage.used_bytes()

    async def _measure(self) -> None:
        with contextlib.suppress(StorageUnavailableError):
            await self.storage.refresh_usage(max_age_s=_MEASURE_EVERY_S)
